"""The ``/v1/agent`` router: submit, read, stream, cancel and view agent runs.

Mount it on any FastAPI app whose ``app.state.agent_service`` is an `AgentService`::

    app.include_router(deployments.agent.routes.router)
    app.state.agent_service = build_agent_service(config, llm)

=======================================  ==========================================================
``POST /v1/agent/runs``                  start a run (202, async) or ``?wait=true`` (200, when done)
``GET  /v1/agent/runs``                  recent runs, newest first
``GET  /v1/agent/runs/{id}``             the run (status, totals, final answer, error)
``GET  /v1/agent/runs/{id}/trajectory``  ``{"run": ..., "steps": [...]}``
``GET  /v1/agent/runs/{id}/events``      Server-Sent Events: ``step`` per step, then ``end``
``POST /v1/agent/runs/{id}/cancel``      request cancellation (202; 409 when already finished)
``GET  /v1/agent/runs/{id}/view``        the trajectory viewer page
``GET  /v1/agent/profiles``              the profiles and their limits
=======================================  ==========================================================
"""

from __future__ import annotations

import json
from typing import Annotated, Any, AsyncIterator

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request, Response
from fastapi.responses import HTMLResponse, StreamingResponse

from deployments.agent.constants import TRAJECTORY_VIEWER_HTML
from deployments.agent.profiles import UnknownProfileError
from deployments.agent.schemas import (
    AgentProfilePublic,
    AgentRunCreate,
    AgentRunPublic,
    AgentRunsPublic,
    AgentStepPublic,
    AgentTrajectoryPublic,
)
from deployments.agent.service import AgentService, RunNotActiveError

router = APIRouter(prefix="/v1/agent", tags=["agent"])


def get_agent_service(request: Request) -> AgentService:
    service = getattr(request.app.state, "agent_service", None)
    if service is None:
        raise HTTPException(status_code=503, detail="the agent runner is not enabled on this server")
    return service


AgentServiceDep = Annotated[AgentService, Depends(get_agent_service)]


def _run_or_404(service: AgentService, run_id: str) -> Any:
    run = service.get_run(run_id)
    if run is None:
        raise HTTPException(status_code=404, detail=f"no agent run {run_id!r}")
    return run


@router.post("/runs", response_model=AgentRunPublic, status_code=202,
             responses={200: {"description": "finished run (?wait=true)"}, 400: {"description": "unknown profile"}})
async def create_run(body: AgentRunCreate, service: AgentServiceDep, response: Response,
                     wait: bool = Query(False, description="Answer when the run has finished.")) -> AgentRunPublic:
    """Start a run. Answers at once with its ``id`` and ``status`` unless ``wait=true``."""
    try:
        run = await service.submit(profile=body.profile, input=body.input, wait=wait)
    except UnknownProfileError as exc:
        raise HTTPException(status_code=400, detail=str(exc))
    if wait:
        response.status_code = 200
    return AgentRunPublic.from_run(run)


@router.get("/runs", response_model=AgentRunsPublic)
def list_runs(service: AgentServiceDep, limit: int = Query(50, ge=1, le=500), offset: int = Query(0, ge=0),
              status: str | None = Query(None, max_length=24)) -> AgentRunsPublic:
    runs = service.list_runs(limit=limit, offset=offset, status=status)
    return AgentRunsPublic(data=[AgentRunPublic.from_run(r) for r in runs], count=len(runs))


@router.get("/runs/{run_id}", response_model=AgentRunPublic, responses={404: {"description": "unknown run"}})
def get_run(run_id: str, service: AgentServiceDep) -> AgentRunPublic:
    return AgentRunPublic.from_run(_run_or_404(service, run_id))


@router.get("/runs/{run_id}/trajectory", response_model=AgentTrajectoryPublic,
            responses={404: {"description": "unknown run"}})
def get_trajectory(run_id: str, service: AgentServiceDep) -> AgentTrajectoryPublic:
    run = _run_or_404(service, run_id)
    steps = service.steps(run_id)
    return AgentTrajectoryPublic(run=AgentRunPublic.from_run(run), steps=[AgentStepPublic.from_step(s) for s in steps])


def _sse(event: str, data: Any, event_id: int | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, default=str)}\n\n"


@router.get("/runs/{run_id}/events", response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}}}, 404: {"description": "unknown run"}})
async def stream_events(run_id: str, service: AgentServiceDep,
                        after: int = Query(-1, ge=-1, description="Only steps with a larger index."),
                        last_event_id: Annotated[str | None, Header()] = None) -> StreamingResponse:
    """Server-Sent Events: ``event: step`` (id = step index) for each step, then ``event: end`` with the run.

    Reconnecting clients resume after ``Last-Event-ID``.
    """
    _run_or_404(service, run_id)
    if last_event_id and last_event_id.strip().lstrip("-").isdigit():
        after = max(after, int(last_event_id))

    async def gen() -> AsyncIterator[str]:
        yield "retry: 2000\n\n"
        async for kind, item in service.events(run_id, after_index=after):
            if kind == "step":
                yield _sse("step", AgentStepPublic.from_step(item).model_dump(mode="json"), item.index)
            elif kind == "end":
                yield _sse("end", AgentRunPublic.from_run(item).model_dump(mode="json"))
            else:
                yield ": keep-alive\n\n"

    return StreamingResponse(gen(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.post("/runs/{run_id}/cancel", response_model=AgentRunPublic, status_code=202,
             responses={404: {"description": "unknown run"}, 409: {"description": "run already finished"}})
def cancel_run(run_id: str, service: AgentServiceDep) -> AgentRunPublic:
    """Request cancellation; the run ends as ``cancelled`` at once if a step is in flight, with its steps kept."""
    try:
        run = service.cancel(run_id)
    except RunNotActiveError as exc:
        raise HTTPException(status_code=409, detail=str(exc))
    if run is None:
        raise HTTPException(status_code=404, detail=f"no agent run {run_id!r}")
    return AgentRunPublic.from_run(run)


@router.get("/runs/{run_id}/view", response_class=HTMLResponse, responses={404: {"description": "unknown run"}})
def view_run(run_id: str, service: AgentServiceDep) -> HTMLResponse:
    """The trajectory viewer (a self-contained page that reads ``./trajectory`` and ``./events``)."""
    _run_or_404(service, run_id)
    return HTMLResponse(TRAJECTORY_VIEWER_HTML.read_text(encoding="utf-8"), headers={"Cache-Control": "no-cache"})


@router.get("/profiles", response_model=list[AgentProfilePublic])
def list_profiles(service: AgentServiceDep) -> list[AgentProfilePublic]:
    return [AgentProfilePublic(name=p.name, description=p.description, model=p.model,
                               allowed_tools=list(p.allowed_tools), max_steps=p.max_steps, max_tokens=p.max_tokens,
                               max_cost_usd=p.max_cost_usd, timeout_s=p.timeout_s)
            for p in sorted(service.profiles.values(), key=lambda p: p.name)]
