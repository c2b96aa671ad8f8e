"""The FastAPI app and the one ``@serve.ingress`` class."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve

from serve import __version__
from serve.config import AppArgs
from serve.routes import artifacts, comfy, native

logger = logging.getLogger(__name__)


def create_fastapi_app() -> FastAPI:
    app = FastAPI(title="genserve", version=__version__,
                  description="ComfyUI-compatible workflow serving on Ray Serve (see README).")
    app.include_router(comfy.router)
    app.include_router(comfy.router, prefix="/api")
    app.include_router(native.router)
    app.include_router(artifacts.router)
    from deployments.agent.routes import router as agent_router
    from deployments.llm.openai_routes import router as openai_router

    app.include_router(agent_router)
    app.include_router(openai_router)

    @app.middleware("http")
    async def request_id_and_size(request: Request, call_next: Any) -> Any:
        rid = request.headers.get("x-request-id") or uuid.uuid4().hex
        from serve.routes.deps import attach_process_state

        attach_process_state(request.app)
        service = getattr(request.app.state, "service", None)
        length = request.headers.get("content-length")
        if service is not None and length and length.isdigit():
            # Refuse oversized bodies before reading them (uploads are checked again while reading).
            if int(length) > service.inputs.max_bytes + 64 * 1024:
                return JSONResponse(status_code=413, content={"detail": f"request body exceeds {service.inputs.max_bytes} bytes"},
                                    headers={"x-request-id": rid})
        response = await call_next(request)
        response.headers["x-request-id"] = rid
        return response

    @app.exception_handler(Exception)
    async def unhandled(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(status_code=500, content={"detail": f"internal error: {type(exc).__name__}"})

    return app


fastapi_app = create_fastapi_app()


@serve.deployment(name="Ingress")
@serve.ingress(fastapi_app)
class IngressDeployment:
    """HTTP ingress; each replica also runs a job runner over the shared store."""

    async def __init__(self, args: dict[str, Any], text_encoder: Any, sampler: Any, vae: Any,
                       llm: Any = None, agent: Any = None):
        from deployments.common.observability import install_serve_logging
        from serve.backends import build_serve_backends
        from serve.service import GenServeService

        # Routes serve.* / graphs.* loggers (the runner, the executor) into this replica's
        # Serve log file, with prompt_id on every line of a job.
        install_serve_logging()
        app_args = AppArgs.model_validate(args)
        backends = build_serve_backends(text_encoder, sampler, vae)
        self.service = GenServeService(app_args, backends)
        from serve.routes.deps import set_process_state

        agent_service = llm_client = None
        if agent is not None and llm is not None:
            agent_service, llm_client = self._agent_wiring(app_args, llm, agent)
        set_process_state(service=self.service, agent_service=agent_service, chat_backend=llm_client)
        self.service.runner.start()

    def _agent_wiring(self, app_args: AppArgs, llm: Any, agent: Any) -> tuple[Any, Any]:
        import asyncio

        from deployments.agent.constants import DEFAULT_PROFILES_DIR
        from deployments.agent.profiles import load_profiles
        from deployments.agent.service import RemoteAgentService
        from deployments.agent.tools import default_registry
        from deployments.llm.handle_client import LLMHandleClient
        from serve.stores.agents import AgentStore

        from deployments.agent.image_client import HttpImageEngineClient

        # The ingress only validates and lists profiles; the AgentRunner deployment runs the tools.
        profiles = load_profiles(DEFAULT_PROFILES_DIR, default_registry(HttpImageEngineClient(app_args.image_service_url)))
        agent_service = RemoteAgentService(AgentStore(app_args.resolved_database_url), agent, profiles)
        llm_client = LLMHandleClient(llm, model_id=app_args.llm.get("model_id") or "default")

        async def resolve_model_id() -> None:
            # NOTE: in the background: a slow or broken LLM must not keep image serving down.
            try:
                llm_client.model_id = (await llm.model_info.remote())["id"]
            except Exception:  # the LLM routes report the failure per request
                logger.exception("LLM deployment did not answer model_info")

        self._llm_probe = asyncio.get_running_loop().create_task(resolve_model_id())
        return agent_service, llm_client

    def check_health(self) -> None:
        if not self.service.runner._tasks or any(t.done() for t in self.service.runner._tasks):
            raise RuntimeError("job runner is not running")
