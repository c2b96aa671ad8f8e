"""Artifacts, lineage, verification and versioned workflows (``/v1``)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, File, HTTPException, Query, Request, UploadFile
from fastapi.responses import JSONResponse

from graphs.workflow import workflow_hash
from serve.routes.deps import ServiceDep
from serve.schemas import WorkflowRegisterRequest, WorkflowVersionPublic

router = APIRouter(prefix="/v1", tags=["artifacts"])


@router.get("/artifacts")
def list_artifacts(service: ServiceDep, workflow_hash: str | None = None, prompt_id: str | None = None,
                   kind: str | None = None, limit: int = Query(100, ge=1, le=1000), offset: int = Query(0, ge=0)) -> dict[str, Any]:
    items, total = service.records.list(workflow_hash=workflow_hash, prompt_id=prompt_id, kind=kind, limit=limit, offset=offset)
    return {"data": [a.public() for a in items], "count": total}


@router.get("/artifacts/{artifact_id}")
def get_artifact(artifact_id: str, service: ServiceDep) -> dict[str, Any]:
    art = service.records.get(artifact_id)
    if art is None:
        raise HTTPException(status_code=404, detail=f"unknown artifact {artifact_id}")
    return art.public()


@router.get("/artifacts/{artifact_id}/manifest")
def get_manifest(artifact_id: str, service: ServiceDep) -> dict[str, Any]:
    art = service.records.get(artifact_id)
    if art is None:
        raise HTTPException(status_code=404, detail=f"unknown artifact {artifact_id}")
    if art.manifest is None:
        raise HTTPException(status_code=404, detail=f"artifact {artifact_id} has no C2PA manifest ({art.kind} artifact"
                            f"{', provenance was disabled' if art.kind != 'input' else ''})")
    return art.manifest


@router.get("/artifacts/{artifact_id}/lineage")
def get_lineage(artifact_id: str, service: ServiceDep) -> dict[str, Any]:
    graph = service.artifacts.lineage(artifact_id)
    if graph is None:
        raise HTTPException(status_code=404, detail=f"unknown artifact {artifact_id}")
    return graph


@router.post("/verify")
async def verify(service: ServiceDep, image: UploadFile = File(...)) -> Any:
    """Check an image's C2PA manifest, watermark and integrity (multipart field ``image``)."""
    from serve.provenance import InvalidImageError

    limit = service.inputs.max_bytes
    data = await image.read(limit + 1)
    if len(data) > limit:
        raise HTTPException(status_code=413, detail=f"upload exceeds the limit of {limit} bytes")
    if service.provenance is None:
        raise HTTPException(status_code=503, detail="provenance is disabled on this deployment")
    try:
        report = await asyncio.to_thread(service.provenance.verify, data)
    except InvalidImageError as exc:
        raise HTTPException(status_code=400, detail=f"not a readable PNG or JPEG: {exc}")
    return JSONResponse(content=report.model_dump(mode="json"))


@router.post("/workflows", response_model=WorkflowVersionPublic, status_code=201)
async def register_workflow(body: WorkflowRegisterRequest, request: Request, service: ServiceDep) -> Any:
    """Register a named workflow version (identical content returns the existing version, 200)."""
    _wf, result = await asyncio.to_thread(service.validate, body.workflow)
    if not result.ok:
        return JSONResponse(status_code=400, content=result.response_body())
    version, created = await asyncio.to_thread(
        service.records.register_workflow, name=body.name, workflow=body.workflow, content_hash=workflow_hash(body.workflow),
        description=body.description, created_by=request.headers.get("x-genserve-user"))
    payload = WorkflowVersionPublic(name=version.name, version=version.version, ref=version.ref,
                                    content_hash=version.content_hash, description=version.description, created_at=version.created_at)
    return JSONResponse(status_code=201 if created else 200, content=payload.model_dump())


@router.get("/workflows")
def list_workflows(service: ServiceDep, name: str | None = None) -> dict[str, Any]:
    items = service.records.list_workflows(name)
    return {"data": [WorkflowVersionPublic(name=v.name, version=v.version, ref=v.ref, content_hash=v.content_hash,
                                           description=v.description, created_at=v.created_at).model_dump() for v in items],
            "count": len(items)}


@router.get("/workflows/{ref}")
def get_workflow(ref: str, service: ServiceDep) -> dict[str, Any]:
    version = service.resolve_workflow_ref(ref)
    return {"name": version.name, "version": version.version, "ref": version.ref, "content_hash": version.content_hash,
            "description": version.description, "workflow": version.workflow}
