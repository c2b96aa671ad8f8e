"""Operations: JSON logs that follow one prompt through the deployments, and Prometheus metrics
that cover every expression of the Grafana dashboard (cluster/grafana/genserve.json)."""

from __future__ import annotations

import json
import random
import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.utils.workflows import txt2img

DASHBOARD = Path(__file__).resolve().parents[2] / "cluster" / "grafana" / "genserve.json"


# -- helpers -----------------------------------------------------------------------------------
def _node() -> Any:
    import ray

    return ray._private.worker.global_worker.node


def serve_logs_dir() -> Path:
    """``<session>/logs/serve`` of the Ray session this test process is connected to (not
    /tmp/ray/session_latest, which another Ray instance on the machine may have moved)."""
    return Path(_node().get_logs_dir_path()) / "serve"


def metrics_urls() -> list[str]:
    """Prometheus endpoints of this session's nodes (the metrics agent's export port, else the
    service discovery file Ray writes for Prometheus)."""
    node = _node()
    port = getattr(node, "metrics_export_port", None)
    urls = [f"http://{node.node_ip_address}:{port}/metrics"] if port else []
    sd = Path(node.get_session_dir_path()) / "prom_metrics_service_discovery.json"
    if sd.exists():
        for group in json.loads(sd.read_text()):
            urls += [f"http://{t}/metrics" for t in group.get("targets", [])]
    return list(dict.fromkeys(urls))


def scrape_names() -> set[str]:
    """Metric series names in one scrape of every endpoint (``# TYPE`` names and sample names)."""
    names: set[str] = set()
    for url in metrics_urls():
        try:
            text = httpx.get(url, timeout=10).text
        except httpx.HTTPError:
            continue
        for line in text.splitlines():
            if line.startswith("# TYPE "):
                names.add(line.split()[2])
            elif line and not line.startswith("#"):
                names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def dashboard_metric_names() -> set[str]:
    """Every ``ray_*`` metric name used in a panel target expression of the dashboard."""
    dash = json.loads(DASHBOARD.read_text())
    names: set[str] = set()
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            names |= set(re.findall(r"\bray_[A-Za-z0-9_]+", target["expr"]))
    return names


def submit_and_wait(env, wf: dict[str, Any], timeout_s: float = 300) -> tuple[str, dict[str, Any]]:
    with env.client() as c:
        r = c.post("/prompt", json={"prompt": wf, "client_id": "observability-test"})
        assert r.status_code == 200, r.text
        pid = r.json()["prompt_id"]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            hist = c.get(f"/history/{pid}").json()
            if pid in hist and hist[pid]["status"]["completed"] is not None and hist[pid]["status"]["status_str"] in (
                    "success", "error"):
                return pid, hist[pid]
            time.sleep(0.3)
    raise AssertionError(f"prompt {pid} did not finish in {timeout_s}s")


def read_json_lines(paths: list[Path]) -> list[dict[str, Any]]:
    records = []
    for p in paths:
        for line in p.read_text(errors="replace").splitlines():
            line = line.strip()
            if line.startswith("{"):
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    pass
    return records


@pytest.fixture(scope="module")
def finished_prompt(serve_env):
    """One txt2img prompt run to success through POST /prompt (random seed: the sampler must run)."""
    wf = txt2img(seed=random.randrange(1, 2**31), steps=2, size=64)
    pid, hist = submit_and_wait(serve_env, wf)
    assert hist["status"]["status_str"] == "success", hist["status"]
    return pid


# -- logs ---------------------------------------------------------------------------------------
def test_prompt_id_is_followed_from_ingress_to_sampler_in_json_logs(serve_env, finished_prompt):
    pid = finished_prompt
    logs = serve_logs_dir()
    deadline = time.monotonic() + 90  # log files are flushed asynchronously
    while True:
        ingress = read_json_lines(sorted(logs.glob("replica_genserve_Ingress_*.log")))
        sampler = read_json_lines(sorted(logs.glob("replica_genserve_Sampler_*.log")))
        in_ingress = [r for r in ingress if r.get("prompt_id") == pid]
        in_sampler = [r for r in sampler if r.get("prompt_id") == pid or r.get("request_id") == pid]
        if (in_ingress and in_sampler) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert in_ingress, f"no Ingress JSON log line with prompt_id={pid} in {logs}"
    assert in_sampler, f"no Sampler JSON log line with prompt_id/request_id={pid} in {logs}"
    for rec in in_ingress + in_sampler:
        # Serve's JSON encoding: the replica context on every line.
        assert rec.get("deployment") and rec.get("replica"), rec
    # Serve names the component "<app>_<deployment>".
    assert {r["deployment"] for r in in_ingress} == {"genserve_Ingress"}
    assert {r["deployment"] for r in in_sampler} == {"genserve_Sampler"}
    messages = " | ".join(r["message"] for r in in_ingress)
    assert "started" in messages and "finished: success" in messages, messages
    # The stage calls of the job carry the prompt id as their Serve request id.
    assert any(r.get("request_id") == pid for r in in_sampler), in_sampler
    assert any(f"{pid}:3" in r["message"] for r in in_sampler), in_sampler


# -- metrics ------------------------------------------------------------------------------------
def test_every_dashboard_metric_is_exported(serve_env, finished_prompt):
    wanted = dashboard_metric_names()
    assert wanted, "the dashboard uses no ray_* metrics"

    def base(name: str) -> str:
        return re.sub(r"_(bucket|sum|count)$", "", name)

    deadline = time.monotonic() + 120  # metrics are pushed to the agent periodically
    missing = wanted
    seen: set[str] = set()
    while time.monotonic() < deadline:
        seen = scrape_names()
        missing = {m for m in wanted if m not in seen and base(m) not in {base(s) for s in seen}}
        if not missing:
            break
        time.sleep(2)
    genserve = sorted(n for n in seen if "genserve" in n)
    assert not missing, f"dashboard metrics not exported: {sorted(missing)}; genserve series seen: {genserve}"


if __name__ == "__main__":
    import sys

    sys.exit(pytest.main([__file__, "-v"]))
