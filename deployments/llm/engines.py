"""LLM engines behind one interface: chat (whole answer) and stream_chat (text deltas).

Three implementations share :class:`LLMEngine`:

* :class:`~deployments.llm.transformers_engine.TransformersEngine`: the CPU engine (HF
  folders or GGUF files through transformers), batched step-wise decoding, JSON-schema
  constrained decoding with xgrammar. The embedded default.
* :class:`OpenAICompatEngine`: any OpenAI-compatible endpoint by URL (vLLM's server,
  llama.cpp's server, a hosted API), over httpx.
* :class:`VLLMEngine`: vLLM in-process on GPUs (the optional ``[gpu]`` extra); vllm is
  imported only when this engine is built.

All engines take OpenAI-style messages (``[{"role": "user", "content": "..."}]``) and the
same generation arguments (``max_tokens``, ``temperature``, ``seed``, ``json_schema``,
``stop``), and return a :class:`ChatResult` with token counts and timings, so the agent
runner can account tokens, cost and latency the same way for every engine.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any, AsyncIterator, Protocol, runtime_checkable

from deployments.llm import constants

logger = logging.getLogger(__name__)

#: Roles accepted in messages (OpenAI's, plus ``tool``).
ROLES: tuple[str, ...] = ("system", "user", "assistant", "tool", "developer")


# --- errors ----------------------------------------------------------------------------


class LLMEngineError(RuntimeError):
    """Base class of the engines' errors."""


class EngineUnavailableError(LLMEngineError):
    """The engine cannot run here: a missing optional package, or an unreachable endpoint."""


class EngineTimeoutError(LLMEngineError):
    """A remote engine did not answer in time."""


class RemoteEngineError(LLMEngineError):
    """A remote engine answered with an error status.

    Attributes:
        status_code: The HTTP status the endpoint returned.
    """

    def __init__(self, message: str, status_code: int) -> None:
        super().__init__(message)
        self.status_code = status_code


# --- requests and results ----------------------------------------------------------------


@dataclass
class ChatRequest:
    """One chat completion to run; the unit the engines batch.

    Attributes:
        messages: OpenAI-style messages, each ``{"role": ..., "content": ...}``.
        max_tokens: Most new tokens.
        temperature: 0 means greedy; otherwise sampled with ``seed``.
        top_p: Nucleus sampling mass (sampling only).
        seed: Seed of this request's own random generator (sampling only); ``None`` draws one.
        json_schema: A JSON schema the answer must follow (constrained decoding), or ``None``.
        stop: Strings that end the answer (not included in it).
        arrival_s: ``time.perf_counter()`` when the request arrived; latency and time to
            first token are measured from it (the engine's own start when ``None``).
    """

    messages: list[dict[str, Any]]
    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    json_schema: dict[str, Any] | None = None
    stop: list[str] | None = None
    arrival_s: float | None = None

    def check(self) -> "ChatRequest":
        """Validates the request (fail early, before any model work).

        Returns:
            ``self``, with ``stop`` normalised to a list.

        Raises:
            ValueError: empty or malformed messages, or out-of-range parameters.
        """
        check_messages(self.messages)
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens}.")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}.")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}.")
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        if self.stop is not None:
            if not all(isinstance(s, str) for s in self.stop):
                raise ValueError("stop must be a string or a list of strings.")
            self.stop = [s for s in self.stop if s]
        if self.json_schema is not None and not isinstance(self.json_schema, dict):
            raise ValueError(f"json_schema must be a dict (a JSON schema), got {type(self.json_schema).__name__}.")
        return self


@dataclass
class ChatResult:
    """What one chat completion produced.

    Attributes:
        text: The answer (without stop strings or special tokens).
        tokens_in: Prompt tokens (after the chat template).
        tokens_out: Generated tokens (the stop token included).
        finish_reason: ``"stop"`` (stop token, stop string, or complete JSON value) or
            ``"length"`` (hit ``max_tokens``).
        latency_s: Seconds from arrival to the last token.
        ttft_s: Seconds from arrival to the first token.
        model: The model id that answered.
        cost_usd: Cost from the config's price table (filled by :class:`~deployments.llm.model.LLMModel`).
    """

    text: str
    tokens_in: int
    tokens_out: int
    finish_reason: str
    latency_s: float
    ttft_s: float
    model: str = ""
    cost_usd: float = 0.0

    @property
    def tokens_per_s(self) -> float:
        """Decode throughput of this request (tokens after the first, per second)."""
        decode_s = self.latency_s - self.ttft_s
        return (self.tokens_out - 1) / decode_s if self.tokens_out > 1 and decode_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class TextDelta(str):
    """A piece of streamed text; the last one of a stream also carries the final result.

    It *is* a ``str`` (so consumers may just concatenate), with two attributes that are
    ``None`` on every delta but the last: ``finish_reason`` and ``result``
    (the :class:`ChatResult` of the whole answer). The last delta's text may be empty.
    """

    finish_reason: str | None
    result: ChatResult | None

    def __new__(cls, text: str, result: ChatResult | None = None) -> "TextDelta":
        obj = super().__new__(cls, text)
        obj.result = result
        obj.finish_reason = result.finish_reason if result is not None else None
        return obj

    def __reduce__(self) -> tuple:
        # Keep the attributes across pickling (Ray ships deltas between processes).
        return (TextDelta, (str(self), self.result))


def check_messages(messages: Any) -> list[dict[str, Any]]:
    """Validates OpenAI-style chat messages.

    Args:
        messages: A non-empty list of ``{"role": str, "content": str | list[parts]}``.

    Returns:
        ``messages`` unchanged.

    Raises:
        ValueError: not a list, empty, an unknown role, or content that is not text.
    """
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts.")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message:
            raise ValueError(f"messages[{i}] must be a dict with 'role' and 'content', got {message!r:.80}.")
        if message["role"] not in ROLES:
            raise ValueError(f"messages[{i}] has role {message['role']!r}; expected one of {', '.join(ROLES)}.")
        content = message.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise ValueError(f"messages[{i}].content must be a string or a list of text parts.")
    return messages


def message_text(content: Any) -> str:
    """Flattens OpenAI message content (a string or a list of ``{"type": "text"}`` parts).

    Raises:
        ValueError: a part is not text (images are not supported by these models).
    """
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for part in content:
        if isinstance(part, dict) and part.get("type") == "text":
            texts.append(str(part.get("text", "")))
        else:
            raise ValueError(f"Only text message parts are supported, got {part!r:.80}.")
    return "".join(texts)


# --- the interface -------------------------------------------------------------------------


@runtime_checkable
class LLMEngine(Protocol):
    """What every engine offers. Construct engines through :func:`deployments.llm.model.build_engine`.

    Attributes:
        model_id: The id of the served model (``GET /v1/models``).
    """

    model_id: str

    async def chat(
        self,
        messages: list[dict[str, Any]],
        *,
        max_tokens: int = 256,
        temperature: float = 0.0,
        seed: int | None = None,
        json_schema: dict[str, Any] | None = None,
        stop: list[str] | None = None,
        top_p: float = 1.0,
    ) -> ChatResult:
        """Runs one chat completion to the end."""
        ...

    def stream_chat(
        self,
        messages: list[dict[str, Any]],
        *,
        max_tokens: int = 256,
        temperature: float = 0.0,
        seed: int | None = None,
        json_schema: dict[str, Any] | None = None,
        stop: list[str] | None = None,
        top_p: float = 1.0,
    ) -> AsyncIterator[TextDelta]:
        """Streams one chat completion as text deltas (the last one carries the result)."""
        ...

    async def chat_batch(self, requests: list[ChatRequest]) -> list[ChatResult]:
        """Runs several chat completions (together where the engine can)."""
        ...

    async def aclose(self) -> None:
        """Releases clients and models."""
        ...


# --- OpenAI-compatible endpoint -------------------------------------------------------------


class OpenAICompatEngine:
    """Any OpenAI-compatible ``/v1/chat/completions`` endpoint, by URL.

    Construct with the endpoint's base URL (the part before ``/chat/completions``, e.g.
    ``http://127.0.0.1:8000/v1``) and the model name the endpoint serves. Tests point it
    at an in-process FastAPI app through ``transport=httpx.ASGITransport(app)``.

    JSON-schema outputs are requested with OpenAI's
    ``response_format={"type": "json_schema", ...}``; whether the endpoint enforces them
    is up to it (vLLM and OpenAI do).

    Args:
        base_url (`str`): The endpoint's base URL.
        model (`str`): The model name sent in each request.
        api_key (`str`, *optional*): Bearer token; defaults to ``$GENSERVE_LLM_API_KEY``.
        timeout_s (`float`, *optional*, defaults to 60): Read timeout of one request.
        connect_timeout_s (`float`, *optional*, defaults to 5): Connect timeout.
        transport (`httpx.AsyncBaseTransport`, *optional*): Custom transport (tests).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 60.0,
        connect_timeout_s: float = 5.0,
        transport: Any = None,
    ) -> None:
        import httpx

        if not base_url or not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http(s) URL such as http://127.0.0.1:8000/v1, got {base_url!r}.")
        self.base_url = base_url.rstrip("/")
        self.model_id = model
        key = api_key or os.environ.get(constants.ENV_OPENAI_API_KEY)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._timeout = httpx.Timeout(timeout_s, connect=connect_timeout_s)
        self._client = httpx.AsyncClient(
            base_url=self.base_url, headers=headers, timeout=self._timeout, transport=transport
        )

    def _body(self, request: ChatRequest, stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model_id,
            "messages": request.messages,
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "stream": stream,
        }
        if request.seed is not None:
            body["seed"] = request.seed
        if request.stop:
            body["stop"] = request.stop
        if request.json_schema is not None:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "output", "schema": request.json_schema, "strict": True},
            }
        if stream:
            body["stream_options"] = {"include_usage": True}
        return body

    def _wrap_error(self, exc: Exception) -> LLMEngineError:
        import httpx

        url = f"{self.base_url}/chat/completions"
        if isinstance(exc, httpx.TimeoutException):
            return EngineTimeoutError(
                f"The OpenAI-compatible endpoint {url} did not answer in time ({type(exc).__name__}); "
                "raise request_timeout_s or check the server's load."
            )
        return EngineUnavailableError(
            f"Cannot reach the OpenAI-compatible endpoint {url} ({type(exc).__name__}: {exc}). "
            "Check base_url and that the server is running."
        )

    @staticmethod
    def _status_error(status: int, body: str, url: str) -> RemoteEngineError:
        detail = body.strip().replace("\n", " ")[:300]
        return RemoteEngineError(f"The endpoint {url} answered HTTP {status}: {detail}", status)

    async def chat_batch(self, requests: list[ChatRequest]) -> list[ChatResult]:
        """Runs the requests concurrently (the endpoint batches them itself)."""
        import asyncio

        return list(await asyncio.gather(*(self._chat(r) for r in requests)))

    async def chat(self, messages: list[dict[str, Any]], **params: Any) -> ChatResult:
        """Runs one chat completion (see :class:`LLMEngine`)."""
        return await self._chat(ChatRequest(messages=messages, **params))

    async def _chat(self, request: ChatRequest) -> ChatResult:
        import httpx

        request.check()
        start = request.arrival_s or time.perf_counter()
        try:
            response = await self._client.post("/chat/completions", json=self._body(request, stream=False))
        except httpx.HTTPError as exc:
            raise self._wrap_error(exc) from exc
        if response.status_code >= 400:
            raise self._status_error(response.status_code, response.text, str(response.request.url))
        try:
            data = response.json()
            choice = data["choices"][0]
            text = choice["message"].get("content") or ""
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise RemoteEngineError(
                f"The endpoint {response.request.url} answered 200 but not with a chat completion: {response.text[:200]!r}",
                response.status_code,
            ) from exc
        usage = data.get("usage") or {}
        elapsed = time.perf_counter() - start
        return ChatResult(
            text=text,
            tokens_in=int(usage.get("prompt_tokens", 0)),
            tokens_out=int(usage.get("completion_tokens", 0)),
            finish_reason=choice.get("finish_reason") or constants.FINISH_STOP,
            latency_s=elapsed,
            ttft_s=elapsed,  # not observable without streaming
            model=data.get("model") or self.model_id,
        )

    async def stream_chat(self, messages: list[dict[str, Any]], **params: Any) -> AsyncIterator[TextDelta]:
        """Streams one chat completion over server-sent events (see :class:`LLMEngine`)."""
        import httpx

        request = ChatRequest(messages=messages, **params).check()
        start = request.arrival_s or time.perf_counter()
        first: float | None = None
        parts: list[str] = []
        finish_reason = constants.FINISH_STOP
        usage: dict[str, Any] = {}
        model = self.model_id
        try:
            async with self._client.stream("POST", "/chat/completions", json=self._body(request, stream=True)) as response:
                if response.status_code >= 400:
                    body = (await response.aread()).decode("utf-8", "replace")
                    raise self._status_error(response.status_code, body, str(response.request.url))
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    payload = line[len("data:") :].strip()
                    if payload == "[DONE]":
                        break
                    chunk = json.loads(payload)
                    model = chunk.get("model") or model
                    usage = chunk.get("usage") or usage
                    for choice in chunk.get("choices") or []:
                        delta = (choice.get("delta") or {}).get("content") or ""
                        if choice.get("finish_reason"):
                            finish_reason = choice["finish_reason"]
                        if delta:
                            if first is None:
                                first = time.perf_counter()
                            parts.append(delta)
                            yield TextDelta(delta)
        except httpx.HTTPError as exc:
            raise self._wrap_error(exc) from exc
        end = time.perf_counter()
        yield TextDelta(
            "",
            ChatResult(
                text="".join(parts),
                tokens_in=int(usage.get("prompt_tokens", 0)),
                tokens_out=int(usage.get("completion_tokens", len(parts))),
                finish_reason=finish_reason,
                latency_s=end - start,
                ttft_s=(first or end) - start,
                model=model,
            ),
        )

    async def list_models(self) -> list[str]:
        """Asks the endpoint which models it serves (``GET /models``).

        Raises:
            EngineUnavailableError: the endpoint cannot be reached.
            RemoteEngineError: the endpoint answered with an error.
        """
        import httpx

        try:
            response = await self._client.get("/models")
        except httpx.HTTPError as exc:
            raise self._wrap_error(exc) from exc
        if response.status_code >= 400:
            raise self._status_error(response.status_code, response.text, str(response.request.url))
        return [m["id"] for m in response.json().get("data", [])]

    async def aclose(self) -> None:
        await self._client.aclose()


# --- vLLM ----------------------------------------------------------------------------------


class VLLMEngine:
    """vLLM's async engine in-process, on GPUs (continuous batching, paged attention).

    Needs the optional ``[gpu]`` extra (``pip install genserve[gpu]``); ``vllm`` is
    imported here only, so the rest of the package never needs it. Structured outputs go
    through vLLM's own constrained decoding (``StructuredOutputsParams(json=...)``, or
    ``GuidedDecodingParams`` on vLLM < 0.10.2), which also uses xgrammar.

    NOTE: this engine is not exercised by the test suite (no GPU and no vllm here); only
    its "vllm is missing" error is.

    Args:
        model (`str`): A model folder (or a GGUF file, as vLLM accepts).
        model_id (`str`, *optional*): The id to report; defaults to the folder's name.
        engine_kwargs (`dict`, *optional*): Extra ``AsyncEngineArgs`` fields
            (``gpu_memory_utilization``, ``max_model_len``, ``tensor_parallel_size``, ...).

    Raises:
        EngineUnavailableError: vllm is not installed.
    """

    def __init__(self, model: str, *, model_id: str | None = None, engine_kwargs: dict[str, Any] | None = None) -> None:
        try:
            import vllm
        except ImportError as exc:
            raise EngineUnavailableError(
                "The vllm engine needs the `vllm` package, which is not installed. Install the GPU extra "
                "(`pip install 'genserve[gpu]'`) on a CUDA machine, or use engine='transformers' (CPU) or "
                "engine='openai' with a running vLLM server's URL."
            ) from exc
        self._vllm = vllm
        self.model_id = model_id or os.path.basename(model.rstrip("/"))
        args = vllm.AsyncEngineArgs(model=model, **(engine_kwargs or {}))
        self._engine = vllm.AsyncLLMEngine.from_engine_args(args)
        self._tokenizer: Any = None

    def _sampling_params(self, request: ChatRequest) -> Any:
        kwargs: dict[str, Any] = {
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "seed": request.seed,
            "stop": request.stop or None,
        }
        if request.json_schema is not None:
            try:  # vLLM >= 0.10.2
                from vllm.sampling_params import StructuredOutputsParams

                kwargs["structured_outputs"] = StructuredOutputsParams(json=request.json_schema)
            except ImportError:  # older vLLM
                from vllm.sampling_params import GuidedDecodingParams

                kwargs["guided_decoding"] = GuidedDecodingParams(json=request.json_schema)
        return self._vllm.SamplingParams(**kwargs)

    async def _prompt(self, request: ChatRequest) -> str:
        if self._tokenizer is None:
            self._tokenizer = await self._engine.get_tokenizer()
        messages = [{"role": m["role"], "content": message_text(m.get("content"))} for m in request.messages]
        return self._tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    async def _run(self, request: ChatRequest) -> AsyncIterator[tuple[str, Any]]:
        request.check()
        prompt = await self._prompt(request)
        seen = 0
        async for output in self._engine.generate(prompt, self._sampling_params(request), uuid.uuid4().hex):
            text = output.outputs[0].text  # cumulative
            yield text[seen:], output
            seen = len(text)

    async def stream_chat(self, messages: list[dict[str, Any]], **params: Any) -> AsyncIterator[TextDelta]:
        """Streams one chat completion (see :class:`LLMEngine`)."""
        request = ChatRequest(messages=messages, **params)
        start = request.arrival_s or time.perf_counter()
        first: float | None = None
        last: Any = None
        async for delta, output in self._run(request):
            last = output
            if delta:
                first = first or time.perf_counter()
                yield TextDelta(delta)
        end = time.perf_counter()
        completion = last.outputs[0]
        yield TextDelta(
            "",
            ChatResult(
                text=completion.text,
                tokens_in=len(last.prompt_token_ids or []),
                tokens_out=len(completion.token_ids),
                finish_reason=completion.finish_reason or constants.FINISH_STOP,
                latency_s=end - start,
                ttft_s=(first or end) - start,
                model=self.model_id,
            ),
        )

    async def chat(self, messages: list[dict[str, Any]], **params: Any) -> ChatResult:
        """Runs one chat completion (see :class:`LLMEngine`)."""
        result = None
        async for delta in self.stream_chat(messages, **params):
            result = delta.result or result
        if result is None:
            raise LLMEngineError("vLLM ended the stream without a final result.")
        return result

    async def chat_batch(self, requests: list[ChatRequest]) -> list[ChatResult]:
        """Submits every request at once; vLLM batches them continuously."""
        import asyncio

        async def one(r: ChatRequest) -> ChatResult:
            params = {k: v for k, v in asdict(r).items() if k != "messages"}
            return await self.chat(r.messages, **params)

        return list(await asyncio.gather(*(one(r) for r in requests)))

    async def aclose(self) -> None:
        shutdown = getattr(self._engine, "shutdown", None)
        if callable(shutdown):
            shutdown()

