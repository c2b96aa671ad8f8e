"""Serve backends: the graph executor's stage protocol over DeploymentHandles."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import numpy as np

from graphs.backends import Backends, CancelToken, ProgressFn, report_progress
from graphs.errors import ExecutionInterrupted
from graphs.types import ClipRef, ConditioningEntry, SampleRequest, SamplerOutput, SamplerProgress, VaeRef

logger = logging.getLogger(__name__)

# Errors after which a stage call is retried once: the replica died (crash, node lost) and
# Serve has or will put another in its place. Stage calls are idempotent (seeded), so safe.
_RETRYABLE = ("ActorDiedError", "ActorUnavailableError", "RayActorError", "WorkerCrashedError", "NodeDiedError")


def _retryable(exc: BaseException) -> bool:
    names = {type(exc).__name__} | {c.__name__ for c in type(exc).__mro__}
    cause = exc.__cause__
    if cause is not None:
        names |= {type(cause).__name__}
    return bool(names & set(_RETRYABLE))


def _remote_cause(exc: BaseException) -> BaseException | None:
    """The stage's own exception inside Ray's ``RayTaskError`` wrapper (whose text is a remote traceback)."""
    cause = getattr(exc, "cause", None)
    if type(exc).__name__.startswith("RayTaskError") and isinstance(cause, Exception):
        return cause
    return None


async def _call_with_retry(make_call, what: str, attempts: int = 2) -> Any:
    for attempt in range(attempts):
        try:
            return await make_call()
        except Exception as exc:
            if attempt + 1 < attempts and _retryable(exc):
                logger.warning("%s failed on a lost replica (%s); retrying once", what, type(exc).__name__)
                await asyncio.sleep(0.5)
                continue
            cause = _remote_cause(exc)
            if cause is not None:
                # NOTE: users see the stage's error ("ValueError: ..."), not Ray's wrapper; the
                # remote traceback stays in the chain for the logs.
                raise cause from exc
            raise


class ServeTextEncoder:
    def __init__(self, handle: Any):
        self.handle = handle

    async def encode(self, clip: ClipRef, text: str) -> ConditioningEntry:
        return await _call_with_retry(lambda: self.handle.encode.remote(clip, text), "text encode")


class ServeVae:
    def __init__(self, handle: Any):
        self.handle = handle

    async def decode(self, vae: VaeRef, latents: np.ndarray) -> np.ndarray:
        return await _call_with_retry(lambda: self.handle.decode.remote(vae, latents), "VAE decode")

    async def encode(self, vae: VaeRef, images: np.ndarray) -> np.ndarray:
        return await _call_with_retry(lambda: self.handle.encode.remote(vae, images), "VAE encode")


class ServeSampler:
    def __init__(self, handle: Any):
        self.handle = handle.options(stream=True)

    async def _once(self, request: SampleRequest, progress: ProgressFn | None, cancel: CancelToken | None) -> SamplerOutput:
        gen = self.handle.sample_stream.remote(request)
        watcher: asyncio.Task | None = None
        if cancel is not None:
            async def watch() -> None:
                await cancel.wait()
                gen.cancel()

            watcher = asyncio.create_task(watch())
        result: SamplerOutput | None = None
        try:
            async for event in gen:
                if isinstance(event, SamplerProgress):
                    await report_progress(progress, event.step, event.total)
                elif isinstance(event, SamplerOutput):
                    result = event
                    # The sampler reports its last step as the output itself; ComfyUI clients expect value == max.
                    if event.steps_run:
                        await report_progress(progress, event.steps_run, event.steps_run)
        except Exception as exc:
            if cancel is not None and cancel.cancelled:
                raise ExecutionInterrupted() from exc
            if type(exc).__name__ in ("RequestCancelledError", "TaskCancelledError"):
                raise ExecutionInterrupted() from exc
            raise
        finally:
            if watcher is not None:
                watcher.cancel()
        if result is None:
            if cancel is not None and cancel.cancelled:
                raise ExecutionInterrupted()
            raise RuntimeError("sampler stream ended without a result")
        return result

    async def sample(self, request: SampleRequest, progress: ProgressFn | None = None, cancel: CancelToken | None = None) -> SamplerOutput:
        return await _call_with_retry(lambda: self._once(request, progress, cancel), "sampling")


def build_serve_backends(text_encoder: Any, sampler: Any, vae: Any) -> Backends:
    return Backends(text_encoder=ServeTextEncoder(text_encoder), sampler=ServeSampler(sampler), vae=ServeVae(vae))
