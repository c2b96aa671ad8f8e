"""`AgentStore`: runs and steps in the shared SQLite database (next to the job store's tables)."""

from __future__ import annotations

import time

import pytest

from serve.stores.agents import AgentStore
from serve.stores.jobs import JobStore


def test_run_lifecycle_and_totals(tmp_path):
    store = AgentStore(f"sqlite:///{tmp_path}/g.db")
    run = store.create_run(profile="default", input="hi", run_id="r1")
    assert run.status == "queued" and store.get_run("missing") is None
    assert store.start_run(run_id="r1", model="m", profile_snapshot={"max_steps": 3}, tools={"calculator": "1.0.0"},
                           deadline_at=time.time() + 60)
    store.add_step(run_id="r1", index=0, kind="tool", thought="t", tool="calculator", tool_version="1.0.0",
                   arguments={"expression": "1+1"}, observation={"ok": True, "data": {"result": 2}},
                   tokens_in=10, tokens_out=5, cost_usd=0.01, latency_ms=12.5)
    store.add_step(run_id="r1", index=1, kind="final_answer", tool="final_answer", arguments={"answer": "2"},
                   tokens_in=20, tokens_out=3, cost_usd=0.02)
    with pytest.raises(ValueError, match="already has a step 1"):
        store.add_step(run_id="r1", index=1, kind="tool")
    run = store.get_run("r1")
    assert (run.steps, run.tokens_in, run.tokens_out) == (2, 30, 8) and run.cost_usd == pytest.approx(0.03)
    assert run.status == "running" and run.tools == {"calculator": "1.0.0"}
    assert store.finish_run(run_id="r1", status="succeeded", final_answer="2")
    assert not store.finish_run(run_id="r1", status="error")  # a final status is recorded once
    steps = store.steps("r1")
    assert [s.index for s in steps] == [0, 1] and steps[0].observation["data"]["result"] == 2
    assert [s.index for s in store.steps("r1", after_index=0)] == [1]
    assert store.get_run("r1").final_answer == "2"


def test_list_cancel_and_orphans(tmp_path):
    store = AgentStore(f"sqlite:///{tmp_path}/g.db")
    for i in range(3):
        store.create_run(profile="p", input=str(i), run_id=f"r{i}")
    assert [r.id for r in store.list_runs()] == ["r2", "r1", "r0"]
    assert store.request_cancel(run_id="r0").cancel_requested and store.cancel_requested(run_id="r0")
    assert store.request_cancel(run_id="nope") is None
    store.start_run(run_id="r1", model="m", profile_snapshot={}, tools={}, deadline_at=time.time() - 100)
    assert store.fail_orphaned_runs(grace_s=10) == ["r1"]
    orphan = store.get_run("r1")
    assert orphan.status == "error" and orphan.error["type"] == "runner_lost"
    assert store.count_runs(status="queued") == 2


def test_shares_the_database_with_the_job_store(tmp_path):
    url = f"sqlite:///{tmp_path}/shared.db"
    jobs, agents = JobStore(url), AgentStore(url)
    jobs.create_job(prompt={"1": {"class_type": "X", "inputs": {}}}, output_ids=["1"])
    agents.create_run(profile="p", input="x", run_id="a")
    assert jobs.count_queued() == 1 and agents.get_run("a") is not None
    with agents.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        names = {r[0] for r in conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"jobs", "agent_runs", "agent_steps"} <= names


def test_non_json_observations_are_stored_as_text(tmp_path):
    store = AgentStore(f"sqlite:///{tmp_path}/g.db")
    store.create_run(profile="p", input="x", run_id="r")
    store.add_step(run_id="r", index=0, kind="tool", observation={"when": object()})
    assert isinstance(store.steps("r")[0].observation["when"], str)


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__]))
