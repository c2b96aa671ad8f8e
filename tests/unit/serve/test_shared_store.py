"""Two ingress 'replicas' over one store: events cross replicas, history outlives a replica, leases."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from serve.config import AppArgs
from serve.service import GenServeService
from serve.stores.jobs import JobStore
from tests.fakes.backends import fake_backends
from tests.utils import local_app
from tests.utils.workflows import txt2img


def make_replica(args: AppArgs, run_jobs: bool, **sampler_kw) -> tuple[TestClient, GenServeService]:
    return local_app.make_replica(args, fake_backends(**sampler_kw), run_jobs=run_jobs)


@pytest.fixture
def args(tmp_path, monkeypatch):
    models = tmp_path / "models" / "checkpoints"
    models.mkdir(parents=True)
    (models / "genserve-demo-sd15.safetensors").write_bytes(b"placeholder: fake backends never read it")
    return AppArgs(data_dir=str(tmp_path / "data"), models_dir=str(tmp_path / "models"), lease_s=2.0)


def wait_status(client: TestClient, pid: str, timeout: float = 20) -> dict:
    return local_app.wait_finished(client, pid, timeout)


def test_websocket_on_one_replica_sees_prompt_run_by_another(args):
    runner_client, _ = make_replica(args, run_jobs=True)
    ws_client, _ = make_replica(args, run_jobs=False)
    with runner_client, ws_client:
        with ws_client.websocket_connect("/ws?clientId=alice") as ws:
            assert ws.receive_json()["type"] == "status"
            pid = ws_client.post("/prompt", json={"prompt": txt2img(steps=3), "client_id": "alice"}).json()["prompt_id"]
            seen = []
            while True:
                msg = ws.receive_json()
                seen.append(msg["type"])
                if msg["type"] == "executing" and msg["data"]["node"] is None and msg["data"]["prompt_id"] == pid:
                    break
        assert "progress" in seen and "executed" in seen and "execution_success" in seen
        assert wait_status(runner_client, pid)["status"] == "success"


def test_history_survives_replica_restart(args):
    client, service = make_replica(args, run_jobs=True)
    with client:
        pid = client.post("/prompt", json={"prompt": txt2img(steps=2)}).json()["prompt_id"]
        wait_status(client, pid)
    fresh, _ = make_replica(args, run_jobs=False)  # a new replica process, same database
    with fresh:
        hist = fresh.get(f"/history/{pid}").json()
        assert hist[pid]["status"]["completed"] is True
        assert hist[pid]["outputs"]["9"]["images"][0]["filename"].startswith("txt2img_")


def test_accepted_prompt_survives_a_dead_runner_and_is_retried(args):
    store = JobStore(args.resolved_database_url)
    job = store.create_job(prompt=txt2img(steps=2), output_ids=["9"])
    claimed = store.claim_next(owner="replica-that-will-die", lease_s=0.5)
    assert claimed.prompt_id == job.prompt_id
    time.sleep(0.6)  # the owner never heartbeats: its lease expires
    client, _ = make_replica(args, run_jobs=True)
    with client:
        done = wait_status(client, job.prompt_id)
    assert done["status"] == "success" and done["attempts"] == 2


def test_job_failed_with_reason_after_max_attempts(args):
    store = JobStore(args.resolved_database_url)
    job = store.create_job(prompt=txt2img(steps=2), output_ids=["9"])
    for owner in ("a", "b"):
        store.claim_next(owner=owner, lease_s=0.01)
        time.sleep(0.02)
        store.reap_expired(max_attempts=2)
    got = store.get(job.prompt_id)
    assert got.status == "error" and "stopped responding" in got.error["message"]


def test_queue_delete_and_clear(args):
    client, service = make_replica(args, run_jobs=False)
    with client:
        ids = [client.post("/prompt", json={"prompt": txt2img(seed=i)}).json()["prompt_id"] for i in range(3)]
        assert [item[1] for item in client.get("/queue").json()["queue_pending"]] == ids
        client.post("/queue", json={"delete": [ids[0]]})
        assert [item[1] for item in client.get("/queue").json()["queue_pending"]] == ids[1:]
        client.post("/queue", json={"clear": True})
        assert client.get("/queue").json()["queue_pending"] == []
        assert service.store.get(ids[1]).status == "interrupted"  # kept, marked, never silently dropped


def test_front_of_queue(args):
    client, _ = make_replica(args, run_jobs=False)
    with client:
        a = client.post("/prompt", json={"prompt": txt2img(seed=1)}).json()
        b = client.post("/prompt", json={"prompt": txt2img(seed=2), "front": True}).json()
        pending = [item[1] for item in client.get("/queue").json()["queue_pending"]]
        assert pending == [b["prompt_id"], a["prompt_id"]]


def test_node_failure_is_recorded_in_history(args):
    client, _ = make_replica(args, run_jobs=True, fail_on_seed=666)
    with client:
        pid = client.post("/prompt", json={"prompt": txt2img(seed=666)}).json()["prompt_id"]
        job = wait_status(client, pid)
        assert job["status"] == "error" and job["error"]["node_id"] == "3"
        hist = client.get(f"/history/{pid}").json()[pid]
        assert hist["status"]["status_str"] == "error"
        assert any(m[0] == "execution_error" for m in hist["status"]["messages"])


def test_interrupt_running_prompt(args):
    client, _ = make_replica(args, run_jobs=True, step_delay=0.05)
    with client:
        pid = client.post("/prompt", json={"prompt": txt2img(steps=200)}).json()["prompt_id"]
        deadline = time.monotonic() + 10
        while client.get(f"/v1/jobs/{pid}").json()["status"] != "running" and time.monotonic() < deadline:
            time.sleep(0.02)
        client.post("/interrupt", json={})
        assert wait_status(client, pid)["status"] == "interrupted"


def test_resubmitting_with_same_prompt_id_is_idempotent(args):
    client, _ = make_replica(args, run_jobs=False)
    with client:
        a = client.post("/prompt", json={"prompt": txt2img(), "prompt_id": "fixed-id-1"}).json()
        b = client.post("/prompt", json={"prompt": txt2img(), "prompt_id": "fixed-id-1"}).json()
        assert a == b
        assert len(client.get("/queue").json()["queue_pending"]) == 1


def test_concurrent_first_submissions_on_a_fresh_database_all_succeed(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    stores = [JobStore(url) for _ in range(4)]  # several replicas opening the same new database
    with ThreadPoolExecutor(8) as pool:
        jobs = list(pool.map(lambda i: stores[i % 4].create_job(prompt={"i": i}, output_ids=["9"]), range(16)))
    assert sorted(j.number for j in jobs) == list(range(1, 17))


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__]))
