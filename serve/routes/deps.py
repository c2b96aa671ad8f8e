"""Route dependencies (``Annotated`` aliases)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request, WebSocket

from serve.service import GenServeService


def get_service(request: Request) -> GenServeService:
    return request.app.state.service


def get_ws_service(websocket: WebSocket) -> GenServeService:
    return websocket.app.state.service


ServiceDep = Annotated[GenServeService, Depends(get_service)]
WsServiceDep = Annotated[GenServeService, Depends(get_ws_service)]
