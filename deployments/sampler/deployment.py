"""Serve wrapper of the sampler: cross-request batching, per-step streaming, cancellation, metrics."""

from __future__ import annotations

import logging
import time
from typing import Any, AsyncIterator

from ray import serve

from deployments.common.aio import iterate_in_thread
from deployments.common.observability import install_serve_logging, observe_queue_wait, prompt_id_of, set_prompt_id
from deployments.common.runtime import configure_torch_threads, resolve_device
from graphs.types import SampleRequest, SamplerOutput, SamplerProgress

logger = logging.getLogger("ray.serve")


@serve.deployment(name="Sampler")
class SamplerDeployment:
    """UNet + ControlNet sampler; requests of compatible shape from different users share UNet calls.

    ``sample_stream`` yields a :class:`SamplerProgress` per finished step and finally a
    :class:`SamplerOutput`. Callers use ``handle.options(stream=True).sample_stream.remote(req)``;
    cancelling that response drops the request from its batch at the next step boundary
    (its batch-mates continue).
    """

    def __init__(self, config: dict[str, Any]):
        from deployments.checkpoints.layout import ModelsDir
        from deployments.checkpoints.loader import ModelLoader
        from deployments.sampler.model import SamplerConfig, SamplerModel

        self.config = SamplerConfig(**{**config, "device": resolve_device(config.get("device"))})
        install_serve_logging()
        self.threads = configure_torch_threads(None, 1)
        self.model = SamplerModel(self.config, ModelLoader(ModelsDir(self.config.models_dir), device=self.config.device))
        self.model.on_unet_call = self._on_unet_call
        self._cancelled: set[str] = set()
        self._unet_calls: list[dict[str, int]] = []
        from ray.serve.metrics import Counter, Histogram

        self._m_rows = Histogram("genserve_sampler_unet_batch_rows", description="Rows per UNet forward (cond+uncond of all requests)",
                                 boundaries=[1, 2, 4, 8, 16, 32, 64])
        self._m_reqs = Histogram("genserve_sampler_batch_requests", description="Requests sharing one UNet forward",
                                 boundaries=[1, 2, 4, 8, 16, 32])
        self._m_step = Histogram("genserve_sampler_step_latency_ms", description="Latency of one sampler tick (all requests)",
                                 boundaries=[5, 10, 25, 50, 100, 250, 500, 1000, 2500])
        self._m_images = Counter("genserve_sampler_images_total", description="Images (latent rows) produced")

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """``user_config``: ``max_batch_size``, ``batch_wait_timeout_s``, ``torch_threads``."""
        if "max_batch_size" in user_config:
            self._sample_batched.set_max_batch_size(int(user_config["max_batch_size"]))
        if "batch_wait_timeout_s" in user_config:
            self._sample_batched.set_batch_wait_timeout_s(float(user_config["batch_wait_timeout_s"]))
        self.threads = configure_torch_threads(user_config.get("torch_threads"), 1)

    def _on_unet_call(self, rows: int, requests: int) -> None:
        self._unet_calls.append({"rows": rows, "requests": requests})
        del self._unet_calls[:-1000]
        self._m_rows.observe(rows)
        self._m_reqs.observe(requests)

    async def sample_stream(self, request: SampleRequest) -> AsyncIterator[Any]:
        # NOTE: validate before joining a batch, so one bad request cannot fail its batch-mates.
        self.model.check_request(request)
        # Arrival time: the batch method observes arrival -> batch start as the queue wait.
        arrived = time.perf_counter()
        set_prompt_id(prompt_id_of(request.request_id))
        logger.info("sample request %s queued (%d steps, %s)", request.request_id, request.steps, request.sampler_name)
        finished = False
        try:
            async for event in self._sample_batched(request, arrived):
                if event is None:
                    continue
                if isinstance(event, SamplerOutput):
                    finished = True
                yield event
        finally:
            if not finished:
                # NOTE: reached when the caller cancelled the stream; the batch loop polls this set.
                self._cancelled.add(request.request_id)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.05)
    async def _sample_batched(self, requests: list[SampleRequest], arrivals: list[float]) -> AsyncIterator[list[Any]]:
        observe_queue_wait("sampler", arrivals, time.perf_counter())
        done = [False] * len(requests)
        ids = [r.request_id for r in requests]
        prompts = sorted({prompt_id_of(i) for i in ids})
        # NOTE: this runs in Serve's long-lived batch task: reset its prompt id every batch
        # (one prompt: that prompt; several: none, and ``prompt_ids`` lists them all).
        set_prompt_id(prompts[0] if len(prompts) == 1 else None)
        logger.info("sampler batch of %d request(s): %s", len(requests), ids, extra={"prompt_ids": prompts})

        def is_cancelled(i: int) -> bool:
            return ids[i] in self._cancelled

        tick = time.perf_counter()
        try:
            async for events in iterate_in_thread(lambda: self.model.iter_batch(requests, is_cancelled=is_cancelled)):
                now = time.perf_counter()
                self._m_step.observe((now - tick) * 1000)
                tick = now
                out: list[Any] = []
                for i, event in enumerate(events):
                    if done[i]:
                        out.append(StopIteration)
                        continue
                    if isinstance(event, SamplerOutput):
                        self._m_images.inc(int(event.latents.shape[0]))
                        done[i] = True
                        out.append(event)
                    elif event is None:
                        out.append(None)
                    elif isinstance(event, SamplerProgress):
                        out.append(event)
                    else:  # cancelled
                        done[i] = True
                        out.append(StopIteration)
                yield out
        finally:
            for rid in ids:
                self._cancelled.discard(rid)

    def stats(self) -> dict[str, Any]:
        """Recent UNet calls (rows, requests): lets tests and operators see cross-request batching."""
        return {"unet_calls": list(self._unet_calls), "threads": self.threads}

    def reset_stats(self) -> None:
        self._unet_calls.clear()

    def check_health(self) -> None:
        if self.model is None:
            raise RuntimeError("sampler model not loaded")
