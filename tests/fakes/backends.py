"""Test doubles of the stage backends (deterministic numpy math, no models).

Named as doubles: they exist so graph-engine tests can check ordering, caching, events and
cancellation without loading weights. Real-model tests use the demo bundle instead.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import numpy as np

from graphs.backends import Backends, CancelToken
from graphs.errors import ExecutionInterrupted
from graphs.types import ClipRef, ConditioningEntry, SampleRequest, SamplerOutput, VaeRef


class FakeTextEncoderDouble:
    def __init__(self) -> None:
        self.calls: list[str] = []

    async def encode(self, clip: ClipRef, text: str) -> ConditioningEntry:
        self.calls.append(text)
        seed = int(hashlib.sha256(f"{clip.key()}|{text}".encode()).hexdigest()[:8], 16)
        return ConditioningEntry(np.random.default_rng(seed).standard_normal((1, 77, 8)).astype(np.float32))


class FakeSamplerDouble:
    def __init__(self, step_delay: float = 0.0, fail_on_seed: int | None = None) -> None:
        self.calls: list[SampleRequest] = []
        self.step_delay = step_delay
        self.fail_on_seed = fail_on_seed

    async def sample(self, request: SampleRequest, progress: Any = None, cancel: CancelToken | None = None) -> SamplerOutput:
        self.calls.append(request)
        if request.seed == self.fail_on_seed:
            raise RuntimeError(f"sampler exploded on seed {request.seed}")
        for step in range(1, request.steps + 1):
            if cancel is not None and cancel.cancelled:
                raise ExecutionInterrupted()
            if self.step_delay:
                await asyncio.sleep(self.step_delay)
            if progress is not None:
                await progress(step, request.steps)
        rng = np.random.default_rng(request.seed)
        out = request.latent + rng.standard_normal(request.latent.shape).astype(np.float32) * 0.1
        return SamplerOutput(out.astype(np.float32), request.seed, request.steps)


class FakeVaeDouble:
    def __init__(self) -> None:
        self.decodes = 0

    async def decode(self, vae: VaeRef, latents: np.ndarray) -> np.ndarray:
        self.decodes += 1
        b, _, h, w = latents.shape
        img = np.repeat(np.repeat(latents[:, :3].transpose(0, 2, 3, 1), 8, axis=1), 8, axis=2)
        return np.clip(0.5 + img, 0, 1).astype(np.float32)

    async def encode(self, vae: VaeRef, images: np.ndarray) -> np.ndarray:
        b, h, w, _ = images.shape
        small = images[:, ::8, ::8, :].transpose(0, 3, 1, 2) - 0.5
        return np.concatenate([small, small[:, :1]], axis=1).astype(np.float32)


def fake_backends(**sampler_kw: Any) -> Backends:
    return Backends(text_encoder=FakeTextEncoderDouble(), sampler=FakeSamplerDouble(**sampler_kw), vae=FakeVaeDouble())


class MemorySinkDouble:
    """Records saved images instead of writing files."""

    def __init__(self) -> None:
        self.saved: list[tuple[str, np.ndarray]] = []

    async def save_images(self, images: np.ndarray, *, filename_prefix: str, kind: str, node_id: str, ctx: Any) -> list[dict]:
        out = []
        for i in range(images.shape[0]):
            name = f"{filename_prefix}_{len(self.saved) + 1:05d}_.png"
            self.saved.append((name, images[i]))
            out.append({"filename": name, "subfolder": "", "type": kind})
        return out


class MemoryInputsDouble:
    def __init__(self, images: dict[str, np.ndarray] | None = None) -> None:
        self.images = images or {}

    def list(self) -> list[str]:
        return sorted(self.images)

    def load(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        if name not in self.images:
            raise FileNotFoundError(name)
        img = self.images[name]
        return img, np.zeros(img.shape[:3], dtype=np.float32)

    def content_hash(self, name: str) -> str:
        if name not in self.images:
            raise FileNotFoundError(name)
        return hashlib.sha256(self.images[name].tobytes()).hexdigest()
