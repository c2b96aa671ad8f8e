"""Route dependencies (``Annotated`` aliases)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request, WebSocket

from serve.service import GenServeService

# NOTE: Serve hands each replica its own unpickled copy of the FastAPI app, and the replica's
# constructor runs before that copy is attached; so the ingress registers its service here
# (one ingress replica per process) and routes fall back to it when app.state has none.
_process_service: GenServeService | None = None


def set_process_service(service: GenServeService) -> None:
    global _process_service
    _process_service = service


def _lookup(app: Any) -> GenServeService:
    service = getattr(app.state, "service", None) or _process_service
    if service is None:
        raise RuntimeError("genserve service not initialised in this process")
    return service


def get_service(request: Request) -> GenServeService:
    return _lookup(request.app)


def get_ws_service(websocket: WebSocket) -> GenServeService:
    return _lookup(websocket.app)


ServiceDep = Annotated[GenServeService, Depends(get_service)]
WsServiceDep = Annotated[GenServeService, Depends(get_ws_service)]
