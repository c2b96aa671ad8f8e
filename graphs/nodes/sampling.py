"""KSampler nodes: build a SampleRequest and hand it to the sampler stage."""

from __future__ import annotations

from typing import Any

from graphs.constants import SAMPLER_NAMES, SCHEDULER_NAMES
from graphs.spec import MAX_SEED, Combo, Float, Int, Link, Node, NodeSpec, OutputSpec
from graphs.types import Conditioning, Latent, ModelRef, SampleRequest


def _check_conditioning(name: str, cond: Conditioning) -> None:
    if len(cond) != 1:
        raise ValueError(f"{name} must hold exactly one conditioning entry, got {len(cond)}")


async def _sample(ctx: Any, req: SampleRequest) -> tuple:
    _check_conditioning("positive", req.positive)
    _check_conditioning("negative", req.negative)
    out = await ctx.backends.sampler.sample(req, progress=ctx.progress, cancel=ctx.cancel)
    return (Latent(out.latents, req.batch_index),)


class KSampler(Node):
    SPEC = NodeSpec(
        node_id="KSampler",
        display_name="KSampler",
        category="sampling",
        required={
            "model": Link("MODEL"),
            "seed": Int(0, min=0, max=MAX_SEED, tooltip="seed of the initial noise"),
            "steps": Int(20, min=1, max=10000),
            "cfg": Float(8.0, min=0.0, max=100.0, step=0.1, round=0.01),
            "sampler_name": Combo(SAMPLER_NAMES),
            "scheduler": Combo(SCHEDULER_NAMES),
            "positive": Link("CONDITIONING"),
            "negative": Link("CONDITIONING"),
            "latent_image": Link("LATENT"),
            "denoise": Float(1.0, min=0.0, max=1.0, step=0.01),
        },
        outputs=(OutputSpec("LATENT"),),
    )

    async def run(self, ctx: Any, model: ModelRef, seed: int, steps: int, cfg: float, sampler_name: str, scheduler: str,
                  positive: Conditioning, negative: Conditioning, latent_image: Latent, denoise: float) -> tuple:
        req = SampleRequest(
            model=model, positive=positive, negative=negative, latent=latent_image.samples, seed=seed, steps=steps,
            cfg=cfg, sampler_name=sampler_name, scheduler=scheduler, denoise=denoise,
            request_id=f"{ctx.prompt_id}:{ctx.node_id}", batch_index=latent_image.batch_index,
        )
        return await _sample(ctx, req)


class KSamplerAdvanced(Node):
    SPEC = NodeSpec(
        node_id="KSamplerAdvanced",
        display_name="KSampler (Advanced)",
        category="sampling",
        required={
            "model": Link("MODEL"),
            "add_noise": Combo(("enable", "disable")),
            "noise_seed": Int(0, min=0, max=MAX_SEED),
            "steps": Int(20, min=1, max=10000),
            "cfg": Float(8.0, min=0.0, max=100.0, step=0.1, round=0.01),
            "sampler_name": Combo(SAMPLER_NAMES),
            "scheduler": Combo(SCHEDULER_NAMES),
            "positive": Link("CONDITIONING"),
            "negative": Link("CONDITIONING"),
            "latent_image": Link("LATENT"),
            "start_at_step": Int(0, min=0, max=10000),
            "end_at_step": Int(10000, min=0, max=10000),
            "return_with_leftover_noise": Combo(("disable", "enable")),
        },
        outputs=(OutputSpec("LATENT"),),
    )

    async def run(self, ctx: Any, model: ModelRef, add_noise: str, noise_seed: int, steps: int, cfg: float,
                  sampler_name: str, scheduler: str, positive: Conditioning, negative: Conditioning,
                  latent_image: Latent, start_at_step: int, end_at_step: int, return_with_leftover_noise: str) -> tuple:
        req = SampleRequest(
            model=model, positive=positive, negative=negative, latent=latent_image.samples, seed=noise_seed,
            steps=steps, cfg=cfg, sampler_name=sampler_name, scheduler=scheduler, denoise=1.0,
            add_noise=add_noise == "enable", start_at_step=start_at_step, end_at_step=end_at_step,
            return_with_leftover_noise=return_with_leftover_noise == "enable",
            request_id=f"{ctx.prompt_id}:{ctx.node_id}", batch_index=latent_image.batch_index,
        )
        return await _sample(ctx, req)
