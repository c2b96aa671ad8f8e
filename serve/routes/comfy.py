"""ComfyUI-compatible routes (also mounted under ``/api``), so existing ComfyUI clients work."""

from __future__ import annotations

import asyncio
import json
import logging
import platform
import sys
import uuid
from typing import Any

from fastapi import APIRouter, File, Form, HTTPException, Query, Request, UploadFile, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse, Response

from serve.routes.deps import ServiceDep, WsServiceDep
from serve.schemas import HistoryRequest, InterruptRequest, PromptResponse, QueueRequest, UploadResponse
from serve.service import SubmitError
from serve.stores.files import InvalidUploadError, UnsafePathError

logger = logging.getLogger(__name__)
router = APIRouter(tags=["comfyui"])


def _bad_prompt(type_: str, message: str, details: str = "") -> JSONResponse:
    return JSONResponse(status_code=400, content={
        "error": {"type": type_, "message": message, "details": details, "extra_info": {}}, "node_errors": {}})


@router.post("/prompt", response_model=PromptResponse, responses={400: {"description": "ComfyUI error body"}})
async def post_prompt(request: Request, service: ServiceDep) -> Any:
    raw = await request.body()
    try:
        body = json.loads(raw or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return _bad_prompt("invalid_prompt", f"Request body is not valid JSON: {exc}")
    if not isinstance(body, dict):
        return _bad_prompt("invalid_prompt", "Request body must be a JSON object with a 'prompt' field")
    from pydantic import ValidationError

    from serve.schemas import PromptRequest

    try:
        req = PromptRequest.model_validate(body)
    except ValidationError as exc:
        return _bad_prompt("invalid_prompt", "Invalid request fields", str(exc.errors(include_url=False))[:2000])
    if "prompt" in body and not isinstance(body["prompt"], dict):
        return _bad_prompt("invalid_prompt", "'prompt' must be an object mapping node ids to nodes")
    try:
        job, result = await asyncio.to_thread(
            service.submit, req.prompt, client_id=req.client_id, extra_data=req.extra_data, prompt_id=req.prompt_id,
            front=req.front, partial=req.partial_execution_targets,
            submitted_by=request.headers.get("x-genserve-user") or (request.client.host if request.client else None),
        )
    except SubmitError as exc:
        return JSONResponse(status_code=400, content=exc.body)
    return PromptResponse(prompt_id=job.prompt_id, number=job.number,
                          node_errors={k: v.model_dump() for k, v in result.node_errors.items()})


@router.get("/prompt")
def get_prompt(service: ServiceDep) -> dict[str, Any]:
    return {"exec_info": {"queue_remaining": service.store.count_queued()}}


@router.get("/history")
def get_history(service: ServiceDep, max_items: int | None = Query(None, ge=1), offset: int = Query(0, ge=0)) -> dict[str, Any]:
    return {job.prompt_id: service.history_entry(job) for job in service.store.history(max_items=max_items, offset=offset)}


@router.get("/history/{prompt_id}")
def get_history_item(prompt_id: str, service: ServiceDep) -> dict[str, Any]:
    job = service.store.get(prompt_id)
    if job is None or job.status not in ("success", "error", "interrupted"):
        return {}  # ComfyUI answers {} for unknown or unfinished prompts
    return {job.prompt_id: service.history_entry(job)}


@router.post("/history")
def post_history(body: HistoryRequest, service: ServiceDep) -> dict[str, Any]:
    if body.clear:
        service.store.hide_history()
    elif body.delete:
        service.store.hide_history(prompt_ids=body.delete)
    return {}


@router.get("/queue")
def get_queue(service: ServiceDep) -> dict[str, Any]:
    running, pending = service.store.queue()
    return {"queue_running": [service.queue_item(j) for j in running],
            "queue_pending": [service.queue_item(j) for j in pending]}


@router.post("/queue")
def post_queue(body: QueueRequest, service: ServiceDep) -> dict[str, Any]:
    removed: list[str] = []
    if body.clear:
        removed = service.store.cancel_queued()
    elif body.delete:
        removed = service.store.cancel_queued(prompt_ids=body.delete)
    return {"removed": removed}


@router.post("/interrupt")
async def post_interrupt(request: Request, service: ServiceDep) -> dict[str, Any]:
    raw = await request.body()
    prompt_id = None
    if raw.strip():
        try:
            prompt_id = InterruptRequest.model_validate_json(raw).prompt_id
        except Exception:
            raise HTTPException(status_code=400, detail="body must be empty or {\"prompt_id\": ...}")
    ids = await asyncio.to_thread(service.store.request_interrupt, prompt_id=prompt_id)
    return {"interrupted": ids}


@router.get("/object_info")
def object_info(service: ServiceDep) -> dict[str, Any]:
    return service.registry.object_info(service.choices)


@router.get("/object_info/{node_class}")
def object_info_node(node_class: str, service: ServiceDep) -> dict[str, Any]:
    if node_class not in service.registry:
        return {}
    return service.registry.object_info(service.choices, only=node_class)


@router.get("/embeddings")
def embeddings() -> list[str]:
    return []


@router.get("/extensions")
def extensions() -> list[str]:
    return []


@router.get("/models")
def model_folders() -> list[str]:
    return ["checkpoints", "controlnet", "loras", "vae"]


@router.get("/models/{folder}")
def model_files(folder: str, service: ServiceDep) -> list[str]:
    if folder not in ("checkpoints", "controlnet", "loras", "vae"):
        raise HTTPException(status_code=404, detail=f"unknown model folder {folder!r}")
    return service.choices(folder)


@router.get("/system_stats")
def system_stats() -> dict[str, Any]:
    import torch

    try:
        import psutil

        vm = psutil.virtual_memory()
        ram_total, ram_free = vm.total, vm.available
    except Exception:
        ram_total = ram_free = 0
    devices = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(i)
            devices.append({"name": torch.cuda.get_device_name(i), "type": "cuda", "index": i, "vram_total": total,
                            "vram_free": free, "torch_vram_total": total, "torch_vram_free": free})
    else:
        devices.append({"name": "cpu", "type": "cpu", "index": None, "vram_total": ram_total, "vram_free": ram_free,
                        "torch_vram_total": 0, "torch_vram_free": 0})
    from serve import __version__

    return {"system": {"os": platform.system().lower(), "ram_total": ram_total, "ram_free": ram_free,
                       "comfyui_version": f"genserve-{__version__}", "python_version": sys.version,
                       "pytorch_version": torch.__version__, "embedded_python": False, "argv": []},
            "devices": devices}


@router.post("/upload/image", response_model=UploadResponse)
async def upload_image(
    request: Request,
    service: ServiceDep,
    image: UploadFile = File(...),
    overwrite: str = Form("false"),
    subfolder: str = Form(""),
    type: str = Form("input"),  # noqa: A002 - ComfyUI's field name
) -> Any:
    if type != "input":
        raise HTTPException(status_code=400, detail="only type=input uploads are accepted")
    limit = service.inputs.max_bytes
    data = await image.read(limit + 1)
    if len(data) > limit:
        raise HTTPException(status_code=413, detail=f"upload exceeds the limit of {limit} bytes")
    try:
        name, sub = await asyncio.to_thread(
            service.inputs.save_upload, data, image.filename or "upload.png", subfolder=subfolder,
            overwrite=overwrite.lower() in ("true", "1"),
        )
        await asyncio.to_thread(service.artifacts.record_upload, data, name, sub,
                                request.headers.get("x-genserve-user"))
    except UnsafePathError as exc:
        raise HTTPException(status_code=400, detail=f"unsafe path: {exc}")
    except InvalidUploadError as exc:
        raise HTTPException(status_code=415 if "format" in str(exc) or "not a readable" in str(exc) else 400, detail=str(exc))
    return UploadResponse(name=name, subfolder=sub, type="input")


@router.get("/view")
def view(service: ServiceDep, filename: str = Query(..., min_length=1), subfolder: str = "", type: str = "output",  # noqa: A002
         preview: str | None = None, channel: str | None = None) -> Response:
    if type not in ("output", "temp", "input"):
        raise HTTPException(status_code=400, detail="type must be output, temp or input")
    try:
        data, media = service.artifacts.read(kind=type, filename=filename, subfolder=subfolder)
    except UnsafePathError as exc:
        raise HTTPException(status_code=400, detail=f"unsafe path: {exc}")
    except FileNotFoundError as exc:
        raise HTTPException(status_code=404, detail=str(exc))
    safe_name = filename.replace('"', "").rsplit("/", 1)[-1]
    return Response(content=data, media_type=media, headers={"Content-Disposition": f'filename="{safe_name}"'})


@router.websocket("/ws")
async def websocket(websocket: WebSocket, service: WsServiceDep) -> None:
    client_id = websocket.query_params.get("clientId") or uuid.uuid4().hex
    await websocket.accept()
    store = service.store
    last_id = await asyncio.to_thread(store.last_event_id)
    remaining = await asyncio.to_thread(store.count_queued)
    try:
        await websocket.send_json({"type": "status", "data": {"status": {"exec_info": {"queue_remaining": remaining}}, "sid": client_id}})
        receiver = asyncio.create_task(_drain(websocket))
        try:
            while not receiver.done():
                events = await asyncio.to_thread(store.events_since, after_id=last_id, client_id=client_id)
                for ev in events:
                    last_id = ev.id
                    await websocket.send_json({"type": ev.type, "data": ev.data})
                if not events:
                    await asyncio.sleep(0.05)
        finally:
            receiver.cancel()
    except (WebSocketDisconnect, RuntimeError):
        pass  # the client went away; its prompts keep running and stay in history


async def _drain(websocket: WebSocket) -> None:
    """Read (and ignore) client messages so a disconnect is noticed promptly."""
    try:
        while True:
            msg = await websocket.receive()
            if msg.get("type") == "websocket.disconnect":
                return
    except (WebSocketDisconnect, RuntimeError):
        return
