"""Latent nodes: empty latents, VAE encode/decode, latent upscaling."""

from __future__ import annotations

from typing import Any

import numpy as np

from graphs.constants import CROP_METHODS, LATENT_UPSCALE_METHODS
from graphs.spec import MAX_RESOLUTION, Combo, Int, Link, Node, NodeSpec, OutputSpec
from graphs.types import Latent, VaeRef
from graphs.nodes.resize import resize_nchw


class EmptyLatentImage(Node):
    SPEC = NodeSpec(
        node_id="EmptyLatentImage",
        display_name="Empty Latent Image",
        category="latent",
        required={
            "width": Int(512, min=16, max=MAX_RESOLUTION, step=8),
            "height": Int(512, min=16, max=MAX_RESOLUTION, step=8),
            "batch_size": Int(1, min=1, max=4096),
        },
        outputs=(OutputSpec("LATENT"),),
    )

    async def run(self, ctx: Any, width: int, height: int, batch_size: int) -> tuple:
        return (Latent(np.zeros((batch_size, 4, height // 8, width // 8), dtype=np.float32)),)


class VAEDecode(Node):
    SPEC = NodeSpec(
        node_id="VAEDecode",
        display_name="VAE Decode",
        category="latent",
        required={"samples": Link("LATENT"), "vae": Link("VAE")},
        outputs=(OutputSpec("IMAGE"),),
    )

    async def run(self, ctx: Any, samples: Latent, vae: VaeRef) -> tuple:
        return (await ctx.backends.vae.decode(vae, samples.samples),)


class VAEEncode(Node):
    SPEC = NodeSpec(
        node_id="VAEEncode",
        display_name="VAE Encode",
        category="latent",
        required={"pixels": Link("IMAGE"), "vae": Link("VAE")},
        outputs=(OutputSpec("LATENT"),),
    )

    async def run(self, ctx: Any, pixels: np.ndarray, vae: VaeRef) -> tuple:
        return (Latent(await ctx.backends.vae.encode(vae, pixels)),)


class LatentUpscale(Node):
    SPEC = NodeSpec(
        node_id="LatentUpscale",
        display_name="Upscale Latent",
        category="latent",
        required={
            "samples": Link("LATENT"),
            "upscale_method": Combo(LATENT_UPSCALE_METHODS),
            "width": Int(512, min=0, max=MAX_RESOLUTION, step=8),
            "height": Int(512, min=0, max=MAX_RESOLUTION, step=8),
            "crop": Combo(CROP_METHODS),
        },
        outputs=(OutputSpec("LATENT"),),
    )

    async def run(self, ctx: Any, samples: Latent, upscale_method: str, width: int, height: int, crop: str) -> tuple:
        x = samples.samples
        if width == 0 and height == 0:
            return (samples,)
        h, w = x.shape[2], x.shape[3]
        # ComfyUI: a zero side keeps the aspect ratio.
        if width == 0:
            width = max(64, int(round(w * 8 * height / (h * 8))))
        if height == 0:
            height = max(64, int(round(h * 8 * width / (w * 8))))
        out = resize_nchw(x, height // 8, width // 8, upscale_method, crop)
        return (Latent(out, samples.batch_index),)
