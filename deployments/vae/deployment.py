"""Serve wrapper of the VAE: decode and encode, batched across requests of the same shape."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from typing import Any

import numpy as np
from ray import serve

from deployments.common.observability import install_serve_logging, observe_queue_wait
from deployments.common.runtime import configure_torch_threads, resolve_device
from graphs.types import VaeRef

logger = logging.getLogger("ray.serve")


async def _grouped(fn, refs: list[VaeRef], arrays: list[np.ndarray]) -> list[np.ndarray]:
    """Concatenate arrays of the same VAE and shape along the batch axis, run once, split back."""
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, (ref, arr) in enumerate(zip(refs, arrays)):
        groups[(ref.key(), tuple(arr.shape[1:]))].append(i)
    out: list[np.ndarray | None] = [None] * len(arrays)
    for idxs in groups.values():
        stacked = np.concatenate([arrays[i] for i in idxs], axis=0)
        result = await asyncio.to_thread(fn, refs[idxs[0]], stacked)
        offset = 0
        for i in idxs:
            n = arrays[i].shape[0]
            out[i] = result[offset : offset + n]
            offset += n
    return out  # type: ignore[return-value]


@serve.deployment(name="VAE")
class VaeDeployment:
    def __init__(self, config: dict[str, Any]):
        from deployments.checkpoints.layout import ModelsDir
        from deployments.checkpoints.loader import ModelLoader
        from deployments.vae.model import VaeConfig, VaeModel
        from ray.serve.metrics import Histogram

        self.config = VaeConfig(**{**config, "device": resolve_device(config.get("device"))})
        install_serve_logging()
        configure_torch_threads(None, 1)
        self.model = VaeModel(self.config, loader=ModelLoader(ModelsDir(self.config.models_dir), device=self.config.device))
        self._m_batch = Histogram("genserve_vae_batch_size", description="Requests per VAE batch", boundaries=[1, 2, 4, 8, 16])

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        for method in (self._decode_batched, self._encode_batched):
            if "max_batch_size" in user_config:
                method.set_max_batch_size(int(user_config["max_batch_size"]))
            if "batch_wait_timeout_s" in user_config:
                method.set_batch_wait_timeout_s(float(user_config["batch_wait_timeout_s"]))
        configure_torch_threads(user_config.get("torch_threads"), 1)

    async def decode(self, vae: VaeRef, latents: np.ndarray) -> np.ndarray:
        """Decode one latent batch (batched with concurrent callers); the handle's entry point."""
        # Arrival time: the batch method observes arrival -> batch start as the queue wait.
        return await self._decode_batched(vae, latents, time.perf_counter())

    async def encode(self, vae: VaeRef, images: np.ndarray) -> np.ndarray:
        """Encode one image batch (batched with concurrent callers); the handle's entry point."""
        return await self._encode_batched(vae, images, time.perf_counter())

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _decode_batched(self, vaes: list[VaeRef], latents: list[np.ndarray], arrivals: list[float]) -> list[np.ndarray]:
        observe_queue_wait("vae_decode", arrivals, time.perf_counter())
        self._m_batch.observe(len(latents))
        return await _grouped(self.model.decode_latents, vaes, latents)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _encode_batched(self, vaes: list[VaeRef], images: list[np.ndarray], arrivals: list[float]) -> list[np.ndarray]:
        observe_queue_wait("vae_encode", arrivals, time.perf_counter())
        self._m_batch.observe(len(images))
        return await _grouped(self.model.encode_images, vaes, images)

    def check_health(self) -> None:
        if self.model is None:
            raise RuntimeError("VAE not loaded")
