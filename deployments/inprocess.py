"""In-process backends: the plain model classes called directly (no Ray).

Used by unit tests, ``genserve run`` (offline batch runs) and the benchmarks' in-process
baseline. The Serve backends (``serve.backends``) give the same pixels for the same workflow.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np

from deployments.common.aio import iterate_in_thread
from graphs.backends import Backends, CancelToken, ProgressFn, report_progress
from graphs.errors import ExecutionInterrupted
from graphs.types import ClipRef, ConditioningEntry, SampleRequest, SamplerOutput, SamplerProgress, VaeRef


class InProcessTextEncoder:
    def __init__(self, model):
        self.model = model

    async def encode(self, clip: ClipRef, text: str) -> ConditioningEntry:
        return (await asyncio.to_thread(self.model.encode_prompt, clip, [text]))[0]


class InProcessSampler:
    def __init__(self, model):
        self.model = model

    async def sample(self, request: SampleRequest, progress: ProgressFn | None = None, cancel: CancelToken | None = None) -> SamplerOutput:
        is_cancelled = (lambda i: cancel.cancelled) if cancel is not None else None
        result: SamplerOutput | None = None
        async for events in iterate_in_thread(lambda: self.model.iter_batch([request], is_cancelled=is_cancelled)):
            event = events[0]
            if isinstance(event, SamplerProgress):
                await report_progress(progress, event.step, event.total)
            elif isinstance(event, SamplerOutput):
                result = event
                # The sampler reports its last step as the output itself; ComfyUI clients expect value == max.
                if event.steps_run:
                    await report_progress(progress, event.steps_run, event.steps_run)
            elif event is not None and type(event).__name__ == "SamplerCancelled":
                raise ExecutionInterrupted()
        if result is None:
            raise ExecutionInterrupted()
        return result


class InProcessVae:
    def __init__(self, model):
        self.model = model

    async def decode(self, vae: VaeRef, latents: np.ndarray) -> np.ndarray:
        return await asyncio.to_thread(self.model.decode_latents, vae, latents)

    async def encode(self, vae: VaeRef, images: np.ndarray) -> np.ndarray:
        return await asyncio.to_thread(self.model.encode_images, vae, images)


def build_inprocess_backends(models_dir: str | Path, loader=None) -> Backends:
    """Plain model classes sharing one :class:`ModelLoader` (weights loaded once per process)."""
    from deployments.checkpoints.layout import ModelsDir
    from deployments.checkpoints.loader import ModelLoader
    from deployments.clip_text.model import ClipTextConfig, ClipTextModel
    from deployments.sampler.model import SamplerConfig, SamplerModel
    from deployments.vae.model import VaeConfig, VaeModel

    loader = loader or ModelLoader(ModelsDir(Path(models_dir)))
    return Backends(
        text_encoder=InProcessTextEncoder(ClipTextModel(ClipTextConfig(models_dir=str(models_dir)), loader=loader)),
        sampler=InProcessSampler(SamplerModel(SamplerConfig(models_dir=str(models_dir)), loader)),
        vae=InProcessVae(VaeModel(VaeConfig(models_dir=str(models_dir)), loader=loader)),
    )
