"""The ingress FastAPI app around a GenServeService, without Ray (an 'ingress replica' in-process)."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from serve.config import AppArgs
from serve.ingress import create_fastapi_app
from serve.service import GenServeService


def make_replica(args: AppArgs, backends: Any, run_jobs: bool = True) -> tuple[TestClient, GenServeService]:
    """A TestClient over a fresh app; with ``run_jobs`` its job runner starts with the client."""
    service = GenServeService(args, backends)
    app = create_fastapi_app()
    app.state.service = service
    if run_jobs:
        async def start() -> None:
            service.runner.start()

        async def stop() -> None:
            await service.runner.stop()

        app.router.on_startup.append(start)
        app.router.on_shutdown.append(stop)
    return TestClient(app), service


def wait_finished(client: TestClient, prompt_id: str, timeout: float = 120) -> dict:
    """Poll ``/v1/jobs/{id}`` until the prompt reaches a final status; returns the job."""
    import time

    deadline = time.monotonic() + timeout
    job: dict = {}
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{prompt_id}").json()
        if job.get("status") in ("success", "error", "interrupted"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"prompt {prompt_id} did not finish: {job}")
