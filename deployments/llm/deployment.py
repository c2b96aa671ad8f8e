"""Serve wrapper of the LLM: batching across users, streaming, metrics, health.

For the transformers engine, requests that arrive together are decoded in one batch:
``chat`` goes through a ``@serve.batch`` method that runs the batch to completion, and
``stream_chat`` through a ``@serve.batch`` *generator* that yields one list of text deltas
per decode step, so each caller streams its own answer. Batch size and wait come from
``user_config`` (``max_batch_size``, ``batch_wait_timeout_s``); ``max_batch_size: 1``
turns batching off. Engines that batch on their own (vLLM, remote endpoints) are called
per request.

The deployment is also an HTTP ingress serving the OpenAI-compatible routes
(:mod:`deployments.llm.openai_routes`) over itself, so ``build_llm_deployment(...)`` run
on its own is an OpenAI-compatible server; inside the genserve app it is reached through
DeploymentHandles (:class:`~deployments.llm.handle_client.LLMHandleClient`).

Metrics (``ray.serve.metrics``, exported to Prometheus):

* ``genserve_llm_tokens_total{direction=in|out}``: rate() of it is tokens/s;
* ``genserve_llm_ttft_seconds``: time to first token, queueing included;
* ``genserve_llm_decode_tokens_per_second``: per-request decode speed;
* ``genserve_llm_batch_size``: requests per engine batch;
* ``genserve_llm_requests_total{finish_reason}``.
"""

from __future__ import annotations

import logging
from typing import Any, AsyncIterator

from ray import serve

from deployments.common.runtime import configure_torch_threads
from deployments.llm.engines import ChatRequest, ChatResult, TextDelta
from deployments.llm.openai_routes import create_openai_app

logger = logging.getLogger("ray.serve")


class LLMServer:
    """Serves one :class:`~deployments.llm.model.LLMModel` (the undecorated class; see the two deployments below).

    Args:
        config (`LLMConfig` or `dict`): The stage config (see :func:`deployments.llm.builder.build_llm_deployment`).
    """

    def __init__(self, config: Any) -> None:
        self._init(config)

    def _init(self, config: Any) -> None:
        from ray.serve.metrics import Counter, Histogram

        from deployments.llm.model import LLMConfig, LLMModel

        self.config = LLMConfig.model_validate(config)
        configure_torch_threads(self.config.torch_threads, 1)
        self.model = LLMModel(self.config)
        self.model_id = self.model.model_id
        self._stats = {"batches": 0, "batched_requests": 0, "largest_batch": 0}
        self._m_tokens = Counter("genserve_llm_tokens_total", description="LLM tokens processed", tag_keys=("direction", "model"))
        self._m_requests = Counter("genserve_llm_requests_total", description="LLM answers", tag_keys=("finish_reason", "model"))
        self._m_ttft = Histogram(
            "genserve_llm_ttft_seconds",
            description="LLM time to first token (queueing included)",
            boundaries=[0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30],
            tag_keys=("model",),
        )
        self._m_tps = Histogram(
            "genserve_llm_decode_tokens_per_second",
            description="LLM decode speed of one request",
            boundaries=[1, 2, 5, 10, 20, 50, 100, 200, 500],
            tag_keys=("model",),
        )
        self._m_batch = Histogram(
            "genserve_llm_batch_size", description="Requests per LLM engine batch", boundaries=[1, 2, 4, 8, 16, 32]
        )
        logger.info("LLM %s ready (engine=%s)", self.model_id, self.config.engine)

    def __serve_build_asgi_app__(self) -> Any:
        # NOTE: built per replica, after __init__, so the routes' backend is this replica
        # (an app passed to @serve.ingress(app) is frozen at import and could not see it).
        return create_openai_app(self)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Applies ``user_config``: ``max_batch_size``, ``batch_wait_timeout_s``, ``torch_threads``."""
        if "max_batch_size" in user_config:
            size = int(user_config["max_batch_size"])
            for method in (self._chat_batched, self._stream_batched):
                method.set_max_batch_size(size)
            if hasattr(self.model.engine, "max_batch_size"):
                self.model.engine.max_batch_size = size
        if "batch_wait_timeout_s" in user_config:
            for method in (self._chat_batched, self._stream_batched):
                method.set_batch_wait_timeout_s(float(user_config["batch_wait_timeout_s"]))
        if user_config.get("torch_threads"):
            configure_torch_threads(int(user_config["torch_threads"]), 1)

    # --- public methods (handles and the OpenAI routes call these) --------------------------

    async def chat(self, messages: list[dict[str, Any]], **params: Any) -> ChatResult:
        """One answer; batched with concurrent callers for the transformers engine.

        Args:
            messages (`list[dict]`): OpenAI-style messages.
            **params: ``max_tokens``, ``temperature``, ``seed``, ``json_schema``, ``stop``, ``top_p``.

        Returns:
            The priced :class:`~deployments.llm.engines.ChatResult`.

        Raises:
            ValueError: invalid messages or parameters.
        """
        request = self.model.make_request(messages, **params)
        if self.model.batches_locally:
            result = await self._chat_batched(request)
        else:
            result = (await self.model.chat_batch([request]))[0]
        self._record(result)
        return result

    async def stream_chat(self, messages: list[dict[str, Any]], **params: Any) -> AsyncIterator[TextDelta]:
        """Streams one answer as text deltas; the last delta carries the result.

        Call through ``handle.options(stream=True).stream_chat.remote(...)``.
        """
        request = self.model.make_request(messages, **params)
        stream = self._stream_batched(request) if self.model.batches_locally else self.model.stream_request(request)
        async for delta in stream:
            if delta.result is not None:
                self._record(delta.result)
                yield delta
            elif delta:
                yield delta

    def model_info(self) -> dict[str, Any]:
        """Model id and engine (for ``GET /v1/models`` behind a handle)."""
        return self.model.info()

    def stats(self) -> dict[str, int]:
        """Batching counters of this replica: engine batches run, requests in them, the largest batch."""
        return dict(self._stats)

    def check_health(self) -> None:
        """Serve's health check: the model is loaded."""
        if self.model is None:
            raise RuntimeError("LLM not loaded")

    # --- batching --------------------------------------------------------------------------

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.02)
    async def _chat_batched(self, requests: list[ChatRequest]) -> list[ChatResult]:
        self._observe_batch(len(requests))
        return await self.model.chat_batch(requests)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.02)
    async def _stream_batched(self, requests: list[ChatRequest]) -> AsyncIterator[list[Any]]:
        self._observe_batch(len(requests))
        async for step in self.model.stream_batch(requests):
            # NOTE: StopIteration in a slot ends that caller's stream (Serve's batch-generator protocol).
            yield [StopIteration if delta is None else delta for delta in step]

    def _observe_batch(self, size: int) -> None:
        self._m_batch.observe(size)
        self._stats["batches"] += 1
        self._stats["batched_requests"] += size
        self._stats["largest_batch"] = max(self._stats["largest_batch"], size)

    def _record(self, result: ChatResult) -> None:
        tags = {"model": self.model_id}
        # NOTE: Ray counters reject increments of 0 (e.g. tokens unknown from a remote endpoint).
        if result.tokens_in > 0:
            self._m_tokens.inc(result.tokens_in, tags={"direction": "in", **tags})
        if result.tokens_out > 0:
            self._m_tokens.inc(result.tokens_out, tags={"direction": "out", **tags})
        self._m_requests.inc(1, tags={"finish_reason": result.finish_reason, **tags})
        self._m_ttft.observe(result.ttft_s, tags=tags)
        if result.tokens_per_s > 0:
            self._m_tps.observe(result.tokens_per_s, tags=tags)


#: Composed behind another ingress (the genserve app): reached through DeploymentHandles only.
LLMDeployment = serve.deployment(name="LLM")(LLMServer)


@serve.deployment(name="LLM")
@serve.ingress()
class LLMIngressDeployment(LLMServer):
    """The LLM as its own OpenAI-compatible HTTP app (``/v1/chat/completions``, ``/v1/models``)."""

    async def __init__(self, config: Any) -> None:
        self._init(config)
