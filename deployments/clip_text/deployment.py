"""Serve wrapper of the CLIP text encoder: batched across requests, embeddings cached by (model, text)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from typing import Any

from ray import serve

from deployments.common.observability import install_serve_logging, observe_queue_wait
from deployments.common.runtime import configure_torch_threads, resolve_device
from graphs.types import ClipRef, ConditioningEntry

logger = logging.getLogger("ray.serve")


@serve.deployment(name="TextEncoder")
class ClipTextDeployment:
    def __init__(self, config: dict[str, Any]):
        from deployments.checkpoints.layout import ModelsDir
        from deployments.checkpoints.loader import ModelLoader
        from deployments.clip_text.model import ClipTextConfig, ClipTextModel
        from ray.serve.metrics import Counter, Histogram

        self.config = ClipTextConfig(**{**config, "device": resolve_device(config.get("device"))})
        install_serve_logging()
        configure_torch_threads(None, 1)
        self.model = ClipTextModel(self.config, loader=ModelLoader(ModelsDir(self.config.models_dir), device=self.config.device))
        self._m_batch = Histogram("genserve_text_encoder_batch_size", description="Prompts per text-encoder batch",
                                  boundaries=[1, 2, 4, 8, 16, 32])
        self._m_cache = Counter("genserve_text_encoder_cache_total", description="Text embedding cache lookups",
                                tag_keys=("result",))
        self._last_stats = {"hits": 0, "misses": 0}

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        if "max_batch_size" in user_config:
            self._encode_batched.set_max_batch_size(int(user_config["max_batch_size"]))
        if "batch_wait_timeout_s" in user_config:
            self._encode_batched.set_batch_wait_timeout_s(float(user_config["batch_wait_timeout_s"]))
        configure_torch_threads(user_config.get("torch_threads"), 1)

    async def encode(self, clip: ClipRef, text: str) -> ConditioningEntry:
        """Encode one prompt (batched with concurrent callers); the handle's entry point."""
        # Arrival time: the batch method observes arrival -> batch start as the queue wait.
        return await self._encode_batched(clip, text, time.perf_counter())

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def _encode_batched(self, clips: list[ClipRef], texts: list[str], arrivals: list[float]) -> list[ConditioningEntry]:
        observe_queue_wait("text_encoder", arrivals, time.perf_counter())
        self._m_batch.observe(len(texts))
        groups: dict[str, list[int]] = defaultdict(list)
        for i, clip in enumerate(clips):
            groups[clip.key()].append(i)
        results: list[ConditioningEntry | None] = [None] * len(texts)
        for idxs in groups.values():
            entries = await asyncio.to_thread(self.model.encode_prompt, clips[idxs[0]], [texts[i] for i in idxs])
            for i, entry in zip(idxs, entries):
                results[i] = entry
        self._export_cache_stats()
        return results  # type: ignore[return-value]

    def _export_cache_stats(self) -> None:
        stats = self.model.cache_stats()
        for key, tag in (("hits", "hit"), ("misses", "miss")):
            delta = int(stats.get(key, 0)) - self._last_stats.get(key, 0)
            if delta > 0:
                self._m_cache.inc(delta, tags={"result": tag})
        self._last_stats = {"hits": int(stats.get("hits", 0)), "misses": int(stats.get("misses", 0))}

    def stats(self) -> dict[str, Any]:
        return dict(self.model.cache_stats())

    def check_health(self) -> None:
        if self.model is None:
            raise RuntimeError("text encoder not loaded")
