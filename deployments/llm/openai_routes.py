"""OpenAI-compatible routes for the LLM stage: ``POST /v1/chat/completions``, ``GET /v1/models``.

The router is written against one small dependency, :func:`get_chat_backend`, which
returns an object with ``model_id``, ``chat(messages, **params)`` and
``stream_chat(messages, **params)`` (:class:`ChatBackend`): the in-process
:class:`~deployments.llm.model.LLMModel`, or
:class:`~deployments.llm.handle_client.LLMHandleClient` over a Serve DeploymentHandle.
Mount it by overriding the dependency::

    app.include_router(router)
    app.dependency_overrides[get_chat_backend] = lambda: backend

or build a standalone app with :func:`create_openai_app`. What is honoured:

* ``messages`` (text content, or lists of text parts), ``max_tokens`` /
  ``max_completion_tokens``, ``temperature``, ``top_p``, ``seed``, ``stop``;
* ``response_format``: ``{"type": "json_schema", "json_schema": {"schema": ...}}`` is
  enforced by constrained decoding; ``{"type": "json_object"}`` constrains to any object;
* ``stream: true``: server-sent events in OpenAI's ``chat.completion.chunk`` format, ending
  with ``data: [DONE]``; ``stream_options.include_usage`` adds the usage chunk.

Other OpenAI fields (``tools``, ``logprobs``, ``user``, ...) are accepted and ignored; ``n``
must be 1. Errors use OpenAI's body shape ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Annotated, Any, AsyncIterator, Literal, Protocol

from fastapi import APIRouter, Depends, FastAPI, HTTPException
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from deployments.llm.engines import (
    EngineTimeoutError,
    EngineUnavailableError,
    LLMEngineError,
    RemoteEngineError,
)

logger = logging.getLogger(__name__)


# --- the dependency ------------------------------------------------------------------------


class ChatBackend(Protocol):
    """What the routes need: a model id, ``chat`` and ``stream_chat`` (as :class:`~deployments.llm.model.LLMModel`)."""

    model_id: str

    async def chat(self, messages: list[dict[str, Any]], **params: Any) -> Any: ...

    def stream_chat(self, messages: list[dict[str, Any]], **params: Any) -> AsyncIterator[Any]: ...


def get_chat_backend() -> ChatBackend:
    """The chat backend of the routes; apps override this dependency.

    Raises:
        HTTPException: 503, always, unless the dependency is overridden.
    """
    raise HTTPException(
        status_code=503,
        detail="No LLM backend is configured: set app.dependency_overrides[get_chat_backend] "
        "(see deployments.llm.openai_routes).",
    )


ChatBackendDep = Annotated[ChatBackend, Depends(get_chat_backend)]


# --- request and response models --------------------------------------------------------------


class ChatMessageIn(BaseModel):
    """One message of the conversation."""

    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "tool", "developer"] = Field(description="Who speaks.")
    content: str | list[dict[str, Any]] | None = Field(default=None, description="Text, or a list of text parts.")
    name: str | None = Field(default=None, description="Optional speaker name (ignored).")


class JsonSchemaFormat(BaseModel):
    """OpenAI's ``response_format.json_schema`` object."""

    model_config = ConfigDict(populate_by_name=True)

    name: str = Field(default="output", max_length=64, description="Schema name.")
    description: str | None = Field(default=None, description="What the schema is for.")
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema", description="The JSON schema.")
    strict: bool | None = Field(default=None, description="Accepted; output always follows the schema here.")


class ResponseFormat(BaseModel):
    """OpenAI's ``response_format``."""

    type: Literal["text", "json_object", "json_schema"] = Field(default="text", description="Output format.")
    json_schema: JsonSchemaFormat | None = Field(default=None, description="The schema, for type json_schema.")


class StreamOptions(BaseModel):
    include_usage: bool = Field(default=False, description="Send a last chunk with token usage.")


class ChatCompletionRequest(BaseModel):
    """``POST /v1/chat/completions`` body (the subset of OpenAI's that is honoured; the rest is ignored)."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = Field(default=None, max_length=256, description="Model id; must match GET /v1/models if set.")
    messages: list[ChatMessageIn] = Field(min_length=1, max_length=512, description="The conversation.")
    max_tokens: int | None = Field(default=None, ge=1, description="Most new tokens.")
    max_completion_tokens: int | None = Field(default=None, ge=1, description="Newer name of max_tokens.")
    temperature: float | None = Field(default=None, ge=0, le=2, description="0 = greedy.")
    top_p: float | None = Field(default=None, gt=0, le=1, description="Nucleus sampling mass.")
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1, description="Sampling seed.")
    stop: str | list[str] | None = Field(default=None, description="Stop strings (up to 4).")
    stream: bool = Field(default=False, description="Answer as server-sent events.")
    stream_options: StreamOptions | None = Field(default=None, description="Streaming options.")
    response_format: ResponseFormat | None = Field(default=None, description="text, json_object or json_schema.")
    n: int = Field(default=1, ge=1, le=1, description="Number of choices; only 1 is supported.")

    def engine_params(self) -> dict[str, Any]:
        """The keyword arguments for ``backend.chat`` (only those the client set)."""
        params: dict[str, Any] = {
            "max_tokens": self.max_completion_tokens or self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": self.seed,
            "stop": [self.stop] if isinstance(self.stop, str) else self.stop,
            "json_schema": self.json_schema(),
        }
        return {k: v for k, v in params.items() if v is not None}

    def json_schema(self) -> dict[str, Any] | None:
        fmt = self.response_format
        if fmt is None or fmt.type == "text":
            return None
        if fmt.type == "json_object":
            return {"type": "object"}
        if fmt.json_schema is None or not fmt.json_schema.schema_:
            raise ValueError("response_format.type is json_schema but response_format.json_schema.schema is missing.")
        return fmt.json_schema.schema_


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: str


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class GenserveStats(BaseModel):
    """Extra per-answer numbers (not in OpenAI's schema; OpenAI clients ignore them)."""

    latency_s: float
    ttft_s: float
    cost_usd: float


class ChatCompletionResponse(BaseModel):
    """``POST /v1/chat/completions`` answer (non-streaming)."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    genserve: GenserveStats | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "genserve"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


# --- routes --------------------------------------------------------------------------------

router = APIRouter(prefix="/v1", tags=["llm"])

_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 404, 502, 503, 504)
}


def _error(status: int, message: str, type_: str, *, param: str | None = None, code: str | None = None) -> JSONResponse:
    body = ErrorResponse(error=ErrorBody(message=message, type=type_, param=param, code=code))
    return JSONResponse(status_code=status, content=body.model_dump())


def _map_exception(exc: BaseException) -> JSONResponse:
    """Maps the engines' exceptions (possibly wrapped by Ray) to OpenAI-shaped HTTP errors."""
    if isinstance(exc, EngineTimeoutError):
        return _error(504, str(exc), "timeout", code="upstream_timeout")
    if isinstance(exc, RemoteEngineError):
        return _error(502, str(exc), "upstream_error", code=f"upstream_{exc.status_code}")
    if isinstance(exc, (EngineUnavailableError, LLMEngineError)):
        return _error(503, str(exc), "service_unavailable", code="engine_unavailable")
    if isinstance(exc, ValueError):
        return _error(400, _cause_message(exc), "invalid_request_error")
    logger.exception("chat completion failed", exc_info=exc)
    return _error(500, f"Internal error ({type(exc).__name__}); see the server logs.", "server_error")


def _cause_message(exc: BaseException) -> str:
    # Ray wraps remote exceptions; the cause's message is the user-facing part.
    cause = getattr(exc, "cause", None)
    return str(cause) if cause is not None else str(exc)


@router.get("/models", response_model=ModelList, summary="List the served models")
async def list_models(backend: ChatBackendDep) -> ModelList:
    """The one model behind this router (OpenAI's ``GET /v1/models``)."""
    return ModelList(data=[ModelCard(id=backend.model_id, created=int(time.time()))])


@router.post(
    "/chat/completions",
    response_model=ChatCompletionResponse,
    responses=_ERROR_RESPONSES,
    summary="Create a chat completion (OpenAI-compatible)",
)
async def create_chat_completion(body: ChatCompletionRequest, backend: ChatBackendDep) -> Any:
    """Answers a conversation; with ``stream: true`` as server-sent events."""
    # 1. Check inputs
    if body.model and body.model != backend.model_id:
        return _error(
            404,
            f"The model {body.model!r} does not exist here; this endpoint serves {backend.model_id!r}.",
            "invalid_request_error",
            param="model",
            code="model_not_found",
        )
    try:
        params = body.engine_params()
    except ValueError as exc:
        return _error(400, str(exc), "invalid_request_error", param="response_format")
    messages = [m.model_dump(exclude_none=True, exclude={"name"}) for m in body.messages]
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())

    # 2. Non-streaming answer
    if not body.stream:
        try:
            result = await backend.chat(messages, **params)
        except Exception as exc:  # mapped to OpenAI-shaped errors
            return _map_exception(exc)
        return ChatCompletionResponse(
            id=completion_id,
            created=created,
            model=result.model or backend.model_id,
            choices=[Choice(index=0, message=AssistantMessage(content=result.text), finish_reason=result.finish_reason)],
            usage=Usage(
                prompt_tokens=result.tokens_in,
                completion_tokens=result.tokens_out,
                total_tokens=result.tokens_in + result.tokens_out,
            ),
            genserve=GenserveStats(latency_s=result.latency_s, ttft_s=result.ttft_s, cost_usd=result.cost_usd),
        )

    # 3. Streaming answer: pull the first delta before answering, so that invalid requests
    #    and unreachable engines still get a proper status code.
    stream = backend.stream_chat(messages, **params)
    try:
        first = await anext(stream)
    except StopAsyncIteration:
        first = None
    except Exception as exc:
        return _map_exception(exc)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return StreamingResponse(
        _sse(stream, first, completion_id, created, backend.model_id, include_usage),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _sse(
    stream: AsyncIterator[Any], first: Any, completion_id: str, created: int, model: str, include_usage: bool
) -> AsyncIterator[str]:
    """Formats deltas as OpenAI ``chat.completion.chunk`` server-sent events."""

    def chunk(delta: dict[str, Any], finish_reason: str | None = None, usage: dict[str, int] | None = None) -> str:
        payload: dict[str, Any] = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        }
        if usage is not None:
            payload["choices"] = []
            payload["usage"] = usage
        return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"

    yield chunk({"role": "assistant", "content": ""})
    result = None
    try:
        pending = first
        while pending is not None:
            if str(pending):
                yield chunk({"content": str(pending)})
            result = getattr(pending, "result", None) or result
            pending = await anext(stream, None)
    except Exception as exc:  # headers are sent: report in-band, as OpenAI does
        logger.warning("stream failed: %s", exc)
        error = json.loads(_map_exception(exc).body)
        yield f"data: {json.dumps(error)}\n\n"
        return
    yield chunk({}, finish_reason=getattr(result, "finish_reason", None) or "stop")
    if include_usage and result is not None:
        yield chunk(
            {},
            usage={
                "prompt_tokens": result.tokens_in,
                "completion_tokens": result.tokens_out,
                "total_tokens": result.tokens_in + result.tokens_out,
            },
        )
    yield "data: [DONE]\n\n"


def create_openai_app(backend: ChatBackend) -> FastAPI:
    """A standalone FastAPI app serving :data:`router` over ``backend``.

    Args:
        backend (`ChatBackend`): The model (or handle client) to answer with.

    Returns:
        The app (run it with uvicorn, or test it with ``TestClient``).
    """
    app = FastAPI(title="genserve LLM (OpenAI-compatible)")
    app.include_router(router)
    app.dependency_overrides[get_chat_backend] = lambda: backend
    return app
