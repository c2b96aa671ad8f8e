"""The ``/v1/agent`` routes through FastAPI's TestClient (runs execute on the app's event loop)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from deployments.agent import constants as C
from deployments.agent.routes import router
from deployments.agent.runner import AgentRunner
from deployments.agent.service import AgentService
from tests.fakes.scripted_policy import ScriptedPolicyDouble
from tests.unit.agent.conftest import MODEL, PRICES, calc, final, make_profile

SCRIPTS: dict[str, list[Any]] = {
    "default": [calc("6 * 7"), final("42")],
    "hang": [calc("1+1"), {"thought": "wait", "action": "hanger", "action_input": {"text": "x"}}],
    "slow": [calc("1+1"), calc("2+2"), final("4")],
}


def make_app(registry, store) -> FastAPI:
    profiles = {"default": make_profile(name="default"), "hang": make_profile(name="hang", tool_timeout_s=60),
                "slow": make_profile(name="slow")}

    def factory(profile):
        return ScriptedPolicyDouble(SCRIPTS[profile.name], model_name=MODEL, delay_s=0.05 if profile.name == "slow" else 0)

    runner = AgentRunner(registry, factory, store, profiles, PRICES)
    app = FastAPI()
    app.include_router(router)
    app.state.agent_service = AgentService(store, runner, poll_interval_s=0.05)
    return app


@pytest.fixture
def client(registry, store):
    with TestClient(make_app(registry, store)) as c:
        yield c


def wait_for(client: TestClient, run_id: str, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = client.get(f"/v1/agent/runs/{run_id}").json()
        if run["status"] not in ("queued", "running"):
            return run
        time.sleep(0.02)
    raise AssertionError(f"run {run_id} did not finish")


def test_async_run_then_poll_and_trajectory(client):
    resp = client.post("/v1/agent/runs", json={"profile": "default", "input": "What is 6 * 7?"})
    assert resp.status_code == 202
    body = resp.json()
    assert body["id"] and body["status"] in ("queued", "running", "succeeded")
    run = wait_for(client, body["id"])
    assert run["status"] == C.SUCCEEDED and run["final_answer"] == "42"
    assert (run["tokens_in"], run["tokens_out"], run["steps"]) == (20, 10, 2)
    assert run["tools"]["calculator"] == "1.1.0"

    traj = client.get(f"/v1/agent/runs/{body['id']}/trajectory").json()
    assert traj["run"]["id"] == body["id"]
    first, last = traj["steps"]
    assert first["tool_call"] == {"name": "calculator", "version": "1.1.0", "arguments": {"expression": "6 * 7"}}
    assert first["observation"]["data"]["result"] == 42
    assert (first["tokens_in"], first["tokens_out"]) == (10, 5) and first["latency_ms"] >= 0
    assert first["cost_usd"] == pytest.approx(0.02) and first["kind"] == "tool"
    assert last["kind"] == "final_answer" and last["tool_call"]["arguments"] == {"answer": "42"}
    listed = client.get("/v1/agent/runs").json()
    assert listed["count"] == 1 and listed["data"][0]["id"] == body["id"]


def test_wait_true_answers_when_finished(client):
    resp = client.post("/v1/agent/runs?wait=true", json={"profile": "default", "input": "6*7"})
    assert resp.status_code == 200
    assert resp.json()["status"] == C.SUCCEEDED and resp.json()["final_answer"] == "42"


def test_bad_requests(client):
    assert client.post("/v1/agent/runs", json={"profile": "nope", "input": "x"}).status_code == 400
    assert client.post("/v1/agent/runs", json={"profile": "default"}).status_code == 422
    assert client.post("/v1/agent/runs", json={"input": ""}).status_code == 422
    for path in ("", "/trajectory", "/events", "/view"):
        assert client.get(f"/v1/agent/runs/missing{path}").status_code == 404
    assert client.post("/v1/agent/runs/missing/cancel").status_code == 404


def parse_sse(text: str) -> list[tuple[str, dict]]:
    events = []
    for block in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line and not line.startswith(":"))
        if "event" in fields:
            events.append((fields["event"], json.loads(fields["data"])))
    return events


def test_sse_streams_steps_then_end(client):
    run_id = client.post("/v1/agent/runs", json={"profile": "slow", "input": "go"}).json()["id"]
    with client.stream("GET", f"/v1/agent/runs/{run_id}/events") as resp:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        text = "".join(resp.iter_text())
    events = parse_sse(text)
    assert [e for e, _ in events] == ["step", "step", "step", "end"]
    assert [d["index"] for e, d in events if e == "step"] == [0, 1, 2]
    assert events[0][1]["tool_call"]["name"] == "calculator" and "tokens_in" in events[0][1]
    assert events[-1][1]["status"] == C.SUCCEEDED
    # Resuming after step 1 (Last-Event-ID) replays only what came later.
    resumed = parse_sse(client.get(f"/v1/agent/runs/{run_id}/events", headers={"Last-Event-ID": "1"}).text)
    assert [(e, d.get("index")) for e, d in resumed] == [("step", 2), ("end", None)]


def test_cancel_mid_step_keeps_steps(client, tools):
    run_id = client.post("/v1/agent/runs", json={"profile": "hang", "input": "go"}).json()["id"]
    deadline = time.monotonic() + 10
    while not tools["hanger"].started.is_set():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    resp = client.post(f"/v1/agent/runs/{run_id}/cancel")
    assert resp.status_code == 202 and resp.json()["cancel_requested"] is True
    run = wait_for(client, run_id)
    assert run["status"] == C.CANCELLED
    steps = client.get(f"/v1/agent/runs/{run_id}/trajectory").json()["steps"]
    assert [s["tool_call"]["name"] for s in steps] == ["calculator", "hanger"]
    assert steps[1]["observation"]["error"]["type"] == "cancelled"
    assert client.post(f"/v1/agent/runs/{run_id}/cancel").status_code == 409


def test_viewer_page_and_profiles(client):
    run_id = client.post("/v1/agent/runs?wait=true", json={"profile": "default", "input": "6*7"}).json()["id"]
    page = client.get(f"/v1/agent/runs/{run_id}/view")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'fetch("trajectory"' in page.text and "<script src" not in page.text
    assert "http://" not in page.text and "https://" not in page.text  # self-contained: nothing external
    profiles = client.get("/v1/agent/profiles").json()
    assert [p["name"] for p in profiles] == ["default", "hang", "slow"]


def test_router_without_service_answers_503():
    app = FastAPI()
    app.include_router(router)
    with TestClient(app) as c:
        assert c.get("/v1/agent/runs/x").status_code == 503


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__]))
