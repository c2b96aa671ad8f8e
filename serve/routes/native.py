"""Native ``/v1`` routes."""

from __future__ import annotations

import asyncio
import base64
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse

from serve.routes.deps import ServiceDep
from serve.schemas import HealthResponse, ImageRef, WorkflowRunRequest, WorkflowRunResponse
from serve.service import SubmitError
from serve.stores.files import UnsafePathError

router = APIRouter(prefix="/v1", tags=["native"])


def apply_overrides(workflow: dict[str, Any], overrides: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Copy of ``workflow`` with ``{node_id: {input: value}}`` applied; unknown nodes are a 400."""
    if not overrides:
        return workflow
    import copy

    out = copy.deepcopy(workflow)
    for node_id, inputs in overrides.items():
        node = out.get(node_id)
        if not isinstance(node, dict):
            raise HTTPException(status_code=400, detail=f"override names node {node_id!r}, which the workflow does not have")
        node.setdefault("inputs", {}).update(inputs)
    return out


def _images(service: Any, outputs: dict[str, Any], include_data: bool) -> list[ImageRef]:
    refs: list[ImageRef] = []
    for node_out in outputs.values():
        for img in node_out.get("images", []):
            query = urlencode({"filename": img["filename"], "subfolder": img.get("subfolder", ""), "type": img.get("type", "output")})
            data = None
            if include_data:
                try:
                    raw, _ = service.artifacts.read(kind=img.get("type", "output"), filename=img["filename"],
                                                    subfolder=img.get("subfolder", ""))
                    data = base64.b64encode(raw).decode()
                except (UnsafePathError, FileNotFoundError):
                    data = None
            art = service.records.by_name(kind=img.get("type", "output"), subfolder=img.get("subfolder", ""), filename=img["filename"])
            refs.append(ImageRef(artifact_id=art.id if art else None, filename=img["filename"], subfolder=img.get("subfolder", ""), type=img.get("type", "output"),
                                 url=f"/view?{query}", data_base64=data))
    return refs


@router.post("/workflows/run", response_model=WorkflowRunResponse,
             responses={400: {"description": "ComfyUI error body"}, 504: {"description": "still running"}})
async def run_workflow(body: WorkflowRunRequest, request: Request, service: ServiceDep) -> Any:
    """Run a workflow synchronously and return its images (the job is queued like any prompt)."""
    workflow, ref = body.workflow, None
    if body.workflow_ref is not None:
        version = service.resolve_workflow_ref(body.workflow_ref)
        workflow, ref = version.workflow, version.ref
    workflow = apply_overrides(workflow, body.overrides)
    try:
        job, _ = await asyncio.to_thread(service.submit, workflow, client_id=body.client_id,
                                         submitted_by=request.headers.get("x-genserve-user"),
                                         extra_data={"workflow_ref": ref} if ref else None)
    except SubmitError as exc:
        return JSONResponse(status_code=400, content=exc.body)
    finished = await service.wait(job.prompt_id, body.timeout_s)
    if finished is None or finished.status not in ("success", "error", "interrupted"):
        return JSONResponse(status_code=504, content={"prompt_id": job.prompt_id, "status": finished.status if finished else "unknown",
                                                      "detail": f"not finished after {body.timeout_s}s; poll GET /history/{job.prompt_id}"})
    cached = next((m[1].get("nodes", []) for m in finished.messages if m[0] == "execution_cached"), [])
    duration = (finished.finished_at - finished.started_at) if finished.finished_at and finished.started_at else None
    resp = WorkflowRunResponse(
        prompt_id=finished.prompt_id, status=finished.status, workflow_ref=ref, outputs=finished.outputs,
        images=await asyncio.to_thread(_images, service, finished.outputs, body.include_data),
        cached_nodes=cached, error=finished.error, duration_s=duration,
    )
    if finished.status == "error":
        return JSONResponse(status_code=500, content=resp.model_dump())
    if finished.status == "interrupted":
        return JSONResponse(status_code=409, content=resp.model_dump())
    return resp


@router.get("/jobs/{prompt_id}")
def get_job(prompt_id: str, service: ServiceDep) -> dict[str, Any]:
    job = service.store.get(prompt_id)
    if job is None:
        raise HTTPException(status_code=404, detail=f"unknown prompt {prompt_id}")
    return {"prompt_id": job.prompt_id, "number": job.number, "status": job.status, "outputs": job.outputs,
            "error": job.error, "attempts": job.attempts, "workflow_hash": job.workflow_hash,
            "created_at": job.created_at, "started_at": job.started_at, "finished_at": job.finished_at}


@router.get("/jobs/{prompt_id}/events")
def get_job_events(prompt_id: str, service: ServiceDep) -> list[dict[str, Any]]:
    return [{"id": e.id, "type": e.type, "data": e.data} for e in service.store.events_for_prompt(prompt_id)]


@router.get("/health", response_model=HealthResponse)
def health(service: ServiceDep) -> HealthResponse:
    return HealthResponse(status="ok", queue_remaining=service.store.count_queued(), runner=service.runner.owner,
                          active=service.runner.active)
