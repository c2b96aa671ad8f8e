"""Locust scenarios against a running genserve app (not collected by pytest).

User classes (pick them by name on the command line; with none named, all run by weight):

- ``ComfyUser``: the ComfyUI client flow: websocket ``/ws?clientId=``, ``POST /prompt`` with a
  small txt2img (``graphs/examples/txt2img.json``, random seed), wait for ``executing`` with
  ``node: null`` on the websocket (``/history/{id}`` polling as a fallback), then ``GET /view``
  of every image. The whole flow is also reported as ``WORKFLOW comfy txt2img``.
- ``NativeUser``: ``POST /v1/workflows/run`` (waits server-side).
- ``AgentUser``: ``POST /v1/agent/runs?wait=true``; if the agent routes are not mounted (404)
  it reports that once and idles instead of failing.
- ``MixedUser``: all of the above in one user (3 : 2 : 1) plus cheap reads (``/queue``).

``StepLoadShape`` reads ``-u`` (peak users), ``-r`` and ``-t`` and adds
``LOADTEST_STEP_USERS`` users every ``LOADTEST_STEP_S`` seconds (default: all at once).

Workflow size: ``LOADTEST_STEPS`` (default 4) sampler steps, ``LOADTEST_SIZE`` (default 64) px.

    locust -f load_tests/locustfile.py --headless -u 4 -r 1 -t 60s --host http://127.0.0.1:8188 ComfyUser
    genserve loadtest -u 4 -t 60s                      # the same, with a summary table
"""

from __future__ import annotations

import copy
import json
import os
import random
import time
import uuid
from pathlib import Path
from typing import Any

from locust import HttpUser, LoadTestShape, between, task

EXAMPLES = Path(__file__).resolve().parents[1] / "graphs" / "examples"
STEPS = int(os.environ.get("LOADTEST_STEPS", "4"))
SIZE = int(os.environ.get("LOADTEST_SIZE", "64"))
WORKFLOW_TIMEOUT_S = float(os.environ.get("LOADTEST_WORKFLOW_TIMEOUT_S", "300"))
AGENT_INPUT = {"profile": "default", "input": "What is 17*23?"}

_TXT2IMG = json.loads((EXAMPLES / "txt2img.json").read_text())


def txt2img() -> dict[str, Any]:
    """The example txt2img with a random seed and the load-test size/steps."""
    wf = copy.deepcopy(_TXT2IMG)
    wf["3"]["inputs"].update(seed=random.randrange(0, 2**32), steps=STEPS)
    wf["5"]["inputs"].update(width=SIZE, height=SIZE, batch_size=1)
    return wf


class _Flows:
    """The request flows, shared by the user classes (``self`` is an ``HttpUser``)."""

    client: Any
    environment: Any
    host: str
    ws: Any = None
    client_id: str = ""
    agent_missing: bool = False

    # -- helpers ------------------------------------------------------------------------------
    def _fire(self, name: str, started: float, exc: BaseException | None = None) -> None:
        self.environment.events.request.fire(
            request_type="WORKFLOW", name=name, response_time=(time.perf_counter() - started) * 1000,
            response_length=0, exception=exc, context={})

    def _connect_ws(self) -> None:
        import websocket  # websocket-client; cooperative under locust's gevent patching

        self.client_id = uuid.uuid4().hex
        url = self.host.replace("https://", "wss://").replace("http://", "ws://").rstrip("/")
        started = time.perf_counter()
        try:
            self.ws = websocket.create_connection(f"{url}/ws?clientId={self.client_id}", timeout=WORKFLOW_TIMEOUT_S)
            self._fire("/ws connect", started)
        except Exception as exc:  # the flow falls back to /history polling
            self.ws = None
            self._fire("/ws connect", started, exc)

    def _wait_ws(self, prompt_id: str, deadline: float) -> bool:
        """Read websocket messages until ``executing`` with node None for ``prompt_id``."""
        while self.ws is not None and time.monotonic() < deadline:
            try:
                self.ws.settimeout(max(0.1, deadline - time.monotonic()))
                raw = self.ws.recv()
            except Exception:
                self.ws = None  # reconnect on the next task; poll for this one
                return False
            if not isinstance(raw, str):
                continue  # binary preview frames
            msg = json.loads(raw)
            data = msg.get("data") or {}
            if msg.get("type") == "executing" and data.get("node") is None and data.get("prompt_id") == prompt_id:
                return True
        return False

    def _history(self, prompt_id: str, deadline: float) -> dict[str, Any] | None:
        while time.monotonic() < deadline:
            with self.client.get(f"/history/{prompt_id}", name="/history/[prompt_id]", catch_response=True, timeout=30) as r:
                if r.status_code != 200:
                    r.failure(f"HTTP {r.status_code}")
                    return None
                body = r.json().get(prompt_id)
                r.success()
            if body and body.get("status", {}).get("completed") is not None:
                return body
            time.sleep(0.5)
        return None

    # -- flows --------------------------------------------------------------------------------
    def comfy_txt2img(self) -> None:
        if self.ws is None:
            self._connect_ws()
        started = time.perf_counter()
        deadline = time.monotonic() + WORKFLOW_TIMEOUT_S
        with self.client.post("/prompt", json={"prompt": txt2img(), "client_id": self.client_id}, catch_response=True,
                              timeout=60) as r:
            if r.status_code != 200:
                r.failure(f"HTTP {r.status_code}: {r.text[:200]}")
                return
            prompt_id = r.json()["prompt_id"]
        self._wait_ws(prompt_id, deadline)
        hist = self._history(prompt_id, deadline)
        if hist is None:
            self._fire("comfy txt2img", started, TimeoutError(f"prompt {prompt_id} not finished in {WORKFLOW_TIMEOUT_S}s"))
            return
        if hist["status"].get("status_str") != "success":
            self._fire("comfy txt2img", started, RuntimeError(f"prompt {prompt_id} ended {hist['status'].get('status_str')}"))
            return
        for node_out in hist.get("outputs", {}).values():
            for img in node_out.get("images", []):
                with self.client.get("/view", params={"filename": img["filename"], "subfolder": img.get("subfolder", ""),
                                                      "type": img.get("type", "output")}, name="/view", catch_response=True,
                                     timeout=60) as v:
                    if v.status_code != 200 or not v.content.startswith(b"\x89PNG"):
                        v.failure(f"HTTP {v.status_code}, {len(v.content)} bytes")
        self._fire("comfy txt2img", started)

    def native_run(self) -> None:
        body = {"workflow": txt2img(), "include_data": False, "timeout_s": WORKFLOW_TIMEOUT_S}
        with self.client.post("/v1/workflows/run", json=body, catch_response=True, timeout=WORKFLOW_TIMEOUT_S + 30) as r:
            if r.status_code != 200:
                r.failure(f"HTTP {r.status_code}: {r.text[:200]}")
            elif r.json().get("status") != "success" or not r.json().get("images"):
                r.failure(f"status {r.json().get('status')}: {r.json().get('error')}")

    def agent_run(self) -> None:
        if type(self).agent_missing:
            time.sleep(1.0)
            return
        with self.client.post("/v1/agent/runs?wait=true", json=AGENT_INPUT, catch_response=True,
                              timeout=WORKFLOW_TIMEOUT_S) as r:
            if r.status_code == 404:
                # The agent routes are not mounted in this app: note it once, do not count a failure.
                type(self).agent_missing = True
                r.success()
                self.environment.events.request.fire(
                    request_type="SKIP", name="agent routes not mounted", response_time=0, response_length=0,
                    exception=None, context={})
            elif r.status_code != 200:
                r.failure(f"HTTP {r.status_code}: {r.text[:200]}")
            elif r.json().get("status") not in ("succeeded", "success", "completed", "finished"):
                r.failure(f"agent run ended {r.json().get('status')}")

    def on_stop(self) -> None:
        if self.ws is not None:
            try:
                self.ws.close()
            except Exception:
                pass


class ComfyUser(_Flows, HttpUser):
    """A ComfyUI client: websocket + /prompt + /history + /view."""

    weight = 3
    wait_time = between(0.5, 1.5)

    @task
    def prompt(self) -> None:
        self.comfy_txt2img()


class NativeUser(_Flows, HttpUser):
    """A native API client: one blocking ``POST /v1/workflows/run`` per task."""

    weight = 2
    wait_time = between(0.5, 1.5)

    @task
    def workflow(self) -> None:
        self.native_run()


class AgentUser(_Flows, HttpUser):
    """An agent client: ``POST /v1/agent/runs?wait=true`` (skips quietly when not mounted)."""

    weight = 1
    wait_time = between(1, 3)

    @task
    def agent(self) -> None:
        self.agent_run()


class MixedUser(_Flows, HttpUser):
    """Every flow in one user, weighted 3 comfy : 2 native : 1 agent : 1 queue read."""

    weight = 1
    wait_time = between(0.5, 1.5)

    @task(3)
    def comfy(self) -> None:
        self.comfy_txt2img()

    @task(2)
    def native(self) -> None:
        self.native_run()

    @task(1)
    def agent(self) -> None:
        self.agent_run()

    @task(1)
    def queue(self) -> None:
        self.client.get("/queue", name="/queue", timeout=30)


class StepLoadShape(LoadTestShape):
    """Step load: ``LOADTEST_STEP_USERS`` more users every ``LOADTEST_STEP_S`` s, up to ``-u``.

    Reads the common options (``use_common_options``): ``-u`` is the peak, ``-r`` the spawn
    rate, ``-t`` the total run time. Without ``LOADTEST_STEP_USERS`` the first step is the peak,
    which is plain ``-u N -t T`` behaviour.
    """

    use_common_options = True

    def tick(self) -> tuple[int, float] | None:
        opts = self.runner.environment.parsed_options
        peak = int(getattr(opts, "num_users", None) or 10)
        rate = float(getattr(opts, "spawn_rate", None) or 1)
        limit = getattr(opts, "run_time", None)
        if isinstance(limit, str):
            from locust.util.timespan import parse_timespan

            limit = parse_timespan(limit)
        run_time = self.get_run_time()
        if limit and run_time >= float(limit):
            return None
        step_users = int(os.environ.get("LOADTEST_STEP_USERS", "0")) or peak
        step_s = float(os.environ.get("LOADTEST_STEP_S", "30"))
        users = min(peak, step_users * (int(run_time // step_s) + 1))
        return users, rate


__all__ = ["AgentUser", "ComfyUser", "MixedUser", "NativeUser", "StepLoadShape"]
