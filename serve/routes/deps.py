"""Route dependencies (``Annotated`` aliases)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request, WebSocket

from serve.service import GenServeService

# NOTE: Serve hands each replica its own unpickled copy of the FastAPI app, and the replica's
# constructor runs before that copy is attached; so the ingress registers its service here
# (one ingress replica per process) and routes fall back to it when app.state has none.
_process_service: GenServeService | None = None
_process_state: dict[str, Any] = {}


def set_process_service(service: GenServeService) -> None:
    set_process_state(service=service)


def set_process_state(*, service: GenServeService, agent_service: Any = None, chat_backend: Any = None) -> None:
    global _process_service
    _process_service = service
    _process_state.update(service=service, agent_service=agent_service, chat_backend=chat_backend)


def attach_process_state(app: Any) -> None:
    """Copy the process's services onto the app actually serving requests (once)."""
    if not _process_state or getattr(app.state, "_genserve_attached", False):
        return
    app.state.service = _process_state["service"]
    if _process_state.get("agent_service") is not None:
        app.state.agent_service = _process_state["agent_service"]
    if _process_state.get("chat_backend") is not None:
        from deployments.llm.openai_routes import get_chat_backend

        backend = _process_state["chat_backend"]
        app.dependency_overrides[get_chat_backend] = lambda: backend
    app.state._genserve_attached = True


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
