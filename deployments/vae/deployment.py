"""Serve wrapper of the VAE: decode and encode, batched across requests of the same shape."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from typing import Any

import numpy as np
from ray import serve

from deployments.common.runtime import configure_torch_threads
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

        self.config = VaeConfig(**config)
        configure_torch_threads(None, 1)
        self.model = VaeModel(self.config, loader=ModelLoader(ModelsDir(self.config.models_dir)))
        self._m_batch = Histogram("genserve_vae_batch_size", description="Requests per VAE batch", boundaries=[1, 2, 4, 8, 16])

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        for method in (self.decode, self.encode):
            if "max_batch_size" in user_config:
                method.set_max_batch_size(int(user_config["max_batch_size"]))
            if "batch_wait_timeout_s" in user_config:
                method.set_batch_wait_timeout_s(float(user_config["batch_wait_timeout_s"]))
        configure_torch_threads(user_config.get("torch_threads"), 1)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def decode(self, vaes: list[VaeRef], latents: list[np.ndarray]) -> list[np.ndarray]:
        self._m_batch.observe(len(latents))
        return await _grouped(self.model.decode_latents, vaes, latents)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def encode(self, vaes: list[VaeRef], images: list[np.ndarray]) -> list[np.ndarray]:
        self._m_batch.observe(len(images))
        return await _grouped(self.model.encode_images, vaes, images)

    def check_health(self) -> None:
        if self.model is None:
            raise RuntimeError("VAE not loaded")
