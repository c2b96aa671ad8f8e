"""Two Ray nodes on one machine: the sampler runs on the "GPU" worker node, the rest on the head,
and killing the sampler replica mid-load loses no accepted prompt.

The worker node advertises a custom ``gpu_like`` resource (a logical stand-in for a GPU) that only
the sampler asks for; the other deployments ask for ``head_only``. Every process of this cluster
is started with its own ``--temp-dir`` and torn down by pid (never ``ray stop``, which would also
stop other Ray instances on the machine).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from serve.health import wait_healthy

from tests.utils.workflows import txt2img

REPO = Path(__file__).resolve().parents[2]
APP = "genserve-mn"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    ray_bin = Path(sys.executable).with_name("ray")
    proc = subprocess.run([str(ray_bin), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, f"ray {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _cluster_pids(temp_dir: str) -> set[int]:
    """Processes of the cluster under ``temp_dir``: those naming it on their command line (GCS,
    raylets, agents, dashboard) and all their descendants (the workers rename themselves)."""
    import psutil

    roots = set()
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(temp_dir in part for part in (p.info["cmdline"] or [])):
                roots.add(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    pids = set()
    for p in roots:
        pids.add(p.pid)
        try:
            pids |= {c.pid for c in p.children(recursive=True)}
        except psutil.NoSuchProcess:
            pass
    pids.discard(os.getpid())
    return pids


def _kill_cluster(temp_dir: str) -> None:
    import psutil

    pids = _cluster_pids(temp_dir)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    _, alive = psutil.wait_procs([psutil.Process(p) for p in pids if psutil.pid_exists(p)], timeout=10)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


def _actor_nodes() -> list[dict[str, Any]]:
    """Alive actors with their node ids (state API; GCS actor table as a fallback)."""
    try:
        from ray.util.state import list_actors

        return [{"name": a.name, "node_id": a.node_id, "class_name": a.class_name}
                for a in list_actors(filters=[("state", "=", "ALIVE")], limit=1000)]
    except Exception:
        import ray

        return [{"name": a.get("Name", ""), "node_id": a["Address"]["NodeID"], "class_name": a.get("ActorClassName", "")}
                for a in ray._private.state.actors().values() if a.get("State") == "ALIVE"]


def _replicas_by_deployment() -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for a in _actor_nodes():
        # Serve replica actors are named SERVE_REPLICA::<app>#<deployment>#<replica id>
        if a["name"].startswith(f"SERVE_REPLICA::{APP}#"):
            out.setdefault(a["name"].split("#")[1], []).append(a)
    return out


def _terminal(client: httpx.Client, pid: str) -> tuple[str, str] | None:
    hist = client.get(f"/history/{pid}").json().get(pid)
    if not hist or hist["status"]["completed"] is None:
        return None
    status = hist["status"]["status_str"]
    reason = ""
    for kind, data in hist["status"].get("messages", []):
        if kind == "execution_error":
            reason = f"{data.get('exception_type')}: {data.get('exception_message')}"
    if status == "error" and not reason:
        error = client.get(f"/v1/jobs/{pid}").json().get("error") or {}
        reason = f"{error.get('type', '')}: {error.get('message', '')}".strip(": ")
    return status, reason


@pytest.mark.own_cluster
def test_sampler_on_worker_node_survives_losing_its_replica(demo_models_dir, tmp_path):
    import ray
    from ray import serve

    if ray.is_initialized():  # free the session's shared cluster first
        serve.shutdown()
        ray.shutdown()

    # NOTE: short temp dir: Ray's unix socket paths must stay under ~107 characters.
    temp_dir = tempfile.mkdtemp(prefix=f"gsmn{uuid.uuid4().hex[:4]}", dir="/tmp")
    gcs, http_port = _free_port(), _free_port()
    # NOTE: token auth off for this throwaway local cluster: `ray start --head` turns it on by
    # default, but a joining `ray start --address` and this driver default to off.
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "disabled"}
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=2", f"--temp-dir={temp_dir}", "--object-store-memory=300000000",
              "--disable-usage-stats"]
    try:
        _ray("start", "--head", f"--port={gcs}", "--resources={\"head_only\": 1}", "--include-dashboard=true",
             "--dashboard-host=127.0.0.1", f"--dashboard-port={_free_port()}", f"--ray-client-server-port={_free_port()}",
             f"--dashboard-agent-listen-port={_free_port()}", *common, env=env)
        _ray("start", f"--address=127.0.0.1:{gcs}", "--resources={\"gpu_like\": 1}",
             f"--dashboard-agent-listen-port={_free_port()}", *common, env=env)
        ray.init(address=f"127.0.0.1:{gcs}", namespace="genserve-mn", log_to_driver=False)
        nodes = [n for n in ray.nodes() if n["Alive"]]
        assert len(nodes) == 2, nodes
        (worker_node,) = [n["NodeID"] for n in nodes if n["Resources"].get("gpu_like")]
        (head_node,) = [n["NodeID"] for n in nodes if n["Resources"].get("head_only")]

        # 1. Deploy: the sampler needs gpu_like (worker node only), every other stage head_only.
        from serve.app import build_app
        from serve.demo_inputs import write_example_inputs

        data_dir = tmp_path / "data"
        write_example_inputs(data_dir / "input")
        on_head = {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.25, "resources": {"head_only": 0.1}}}
        args = {"models_dir": str(demo_models_dir), "data_dir": str(data_dir), "lease_s": 10.0, "agents": False,
                "max_concurrent_jobs": 16, "ingress": on_head, "text_encoder": on_head, "vae": on_head,
                "sampler": {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.25, "resources": {"gpu_like": 0.5}}}}
        serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": http_port})
        serve.run(build_app(args), name=APP, route_prefix="/", blocking=False)
        base = f"http://127.0.0.1:{http_port}"
        if not wait_healthy(base, 300, interval_s=1):
            pytest.fail(f"app not healthy: {serve.status()}")

        # 2. Placement: sampler on the worker node, everything else on the head.
        replicas = _replicas_by_deployment()
        assert {r["node_id"] for r in replicas["Sampler"]} == {worker_node}, replicas
        for dep in ("Ingress", "TextEncoder", "VAE"):
            assert {r["node_id"] for r in replicas[dep]} == {head_node}, (dep, replicas)

        # 3. A workflow runs across both nodes.
        with httpx.Client(base_url=base, timeout=600) as c:
            r = c.post("/v1/workflows/run", json={"workflow": txt2img(seed=7, steps=2), "include_data": False})
            assert r.status_code == 200 and r.json()["status"] == "success", r.text

            # 4. Load, then kill the sampler replica while prompts are sampling.
            accepted = []
            for i in range(8):
                # NOTE: long enough that the kill always lands mid-sampling, however fast the machine
                wf = txt2img(seed=random.randrange(1, 2**31), steps=300, size=64)
                r = c.post("/prompt", json={"prompt": wf, "client_id": "multinode"})
                assert r.status_code == 200, r.text
                accepted.append(r.json()["prompt_id"])
            deadline = time.monotonic() + 120  # until the sampler is in its denoising loop
            while time.monotonic() < deadline and not any(
                e["type"] == "progress" for pid in accepted for e in c.get(f"/v1/jobs/{pid}/events").json()
            ):
                time.sleep(0.2)
            (victim,) = replicas["Sampler"]
            killed_at = time.monotonic()
            ray.kill(ray.get_actor(victim["name"], namespace="serve"), no_restart=True)

            # 5. Every accepted prompt ends success or error-with-reason; none stays queued/running.
            outcomes: dict[str, tuple[str, str]] = {}
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and len(outcomes) < len(accepted):
                for pid in accepted:
                    if pid not in outcomes:
                        done = _terminal(c, pid)
                        if done:
                            outcomes[pid] = done
                time.sleep(1)
            recovered_s = time.monotonic() - killed_at
            stuck = [pid for pid in accepted if pid not in outcomes]
            queue = c.get("/queue").json()
            statuses = {s: sum(1 for o in outcomes.values() if o[0] == s) for s in ("success", "error", "interrupted")}
            # The kill hit work in flight: the ingress retried stage calls (serve/backends.py), per its JSON log.
            retried = set()
            for log in (Path(temp_dir) / "session_latest" / "logs" / "serve").glob(f"replica_{APP}_Ingress_*.log"):
                for line in log.read_text(errors="replace").splitlines():
                    if "retrying once" in line and line.startswith("{"):
                        retried.add(json.loads(line).get("prompt_id"))
            print(f"\nmultinode: killed sampler replica {victim['name']} on the worker node; {len(accepted)} accepted "
                  f"prompts -> {statuses}; {len(retried & set(accepted))} retried a stage call; all terminal "
                  f"{recovered_s:.1f}s after the kill; stuck: {stuck}; "
                  f"reasons: {sorted({o[1] for o in outcomes.values() if o[1]})}")
            assert retried & set(accepted), "the kill hit no prompt in flight (no stage call was retried)"
            assert not stuck, f"prompts never finished: {stuck}; queue: {json.dumps(queue)[:500]}"
            assert not queue["queue_running"] and not queue["queue_pending"], queue
            for pid, (status, reason) in outcomes.items():
                assert status in ("success", "error"), (pid, status)
                if status == "error":
                    assert reason, f"prompt {pid} failed without a reason"
            for pid in accepted:  # and the native job view agrees
                job = c.get(f"/v1/jobs/{pid}")
                assert job.status_code == 200 and job.json()["status"] in ("success", "error"), job.text

            # 6. Serve replaced the replica on the worker node, and new work succeeds.
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                sampler = _replicas_by_deployment().get("Sampler", [])
                if sampler and sampler[0]["name"] != victim["name"]:
                    break
                time.sleep(1)
            assert sampler and sampler[0]["name"] != victim["name"], sampler
            assert {r["node_id"] for r in sampler} == {worker_node}
            r = c.post("/v1/workflows/run", json={"workflow": txt2img(seed=8, steps=2), "include_data": False})
            assert r.status_code == 200 and r.json()["status"] == "success", r.text
    finally:
        try:
            if ray.is_initialized():
                try:
                    serve.shutdown()
                finally:
                    ray.shutdown()
        finally:
            _kill_cluster(temp_dir)
            shutil.rmtree(temp_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-v", "-s"]))
