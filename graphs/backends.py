"""The one small protocol between the graph executor and the model stages.

Two implementations exist: in-process (plain model classes, ``deployments.inprocess``) and
Serve (DeploymentHandles, ``serve.backends``). Nodes only ever see these interfaces.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Protocol

import numpy as np

from graphs.types import ClipRef, ConditioningEntry, SampleRequest, SamplerOutput, VaeRef

ProgressFn = Callable[[int, int], Awaitable[None] | None]


async def report_progress(progress: ProgressFn | None, value: int, maximum: int) -> None:
    """Call a sync or async progress callback."""
    if progress is None:
        return
    maybe = progress(value, maximum)
    if asyncio.iscoroutine(maybe):
        await maybe


class CancelToken:
    """Set once when a prompt is interrupted; stages poll it between steps."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self.reason: str | None = None

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def cancel(self, reason: str = "interrupted") -> None:
        self.reason = reason
        self._event.set()

    async def wait(self) -> None:
        await self._event.wait()


class TextEncoderBackend(Protocol):
    async def encode(self, clip: ClipRef, text: str) -> ConditioningEntry: ...


class SamplerBackend(Protocol):
    async def sample(
        self, request: SampleRequest, progress: ProgressFn | None = None, cancel: CancelToken | None = None
    ) -> SamplerOutput: ...


class VaeBackend(Protocol):
    async def decode(self, vae: VaeRef, latents: np.ndarray) -> np.ndarray: ...

    async def encode(self, vae: VaeRef, images: np.ndarray) -> np.ndarray: ...


class OutputSink(Protocol):
    """Where output nodes put images (``SaveImage`` -> ``output``, ``PreviewImage`` -> ``temp``)."""

    async def save_images(
        self, images: np.ndarray, *, filename_prefix: str, kind: str, node_id: str, ctx: Any
    ) -> list[dict[str, Any]]: ...


class InputImages(Protocol):
    """Uploaded input images (``LoadImage``)."""

    def list(self) -> list[str]: ...

    def load(self, name: str) -> tuple[np.ndarray, np.ndarray]: ...

    def content_hash(self, name: str) -> str: ...


@dataclass
class Backends:
    text_encoder: TextEncoderBackend
    sampler: SamplerBackend
    vae: VaeBackend
