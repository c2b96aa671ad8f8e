"""Text encoding and ControlNet conditioning nodes."""

from __future__ import annotations

from typing import Any

import numpy as np

from graphs.prompt_weights import parse_weighted
from graphs.spec import Float, Link, Node, NodeSpec, OutputSpec, String
from graphs.types import ClipRef, Conditioning, ControlHint, ControlNetRef


class CLIPTextEncode(Node):
    SPEC = NodeSpec(
        node_id="CLIPTextEncode",
        display_name="CLIP Text Encode (Prompt)",
        category="conditioning",
        required={"text": String(multiline=True), "clip": Link("CLIP")},
        outputs=(OutputSpec("CONDITIONING"),),
    )

    def validate(self, ctx: Any, inputs: dict[str, Any]) -> str | None:
        text = inputs.get("text")
        if isinstance(text, str):
            try:
                parse_weighted(text)  # the emphasis syntax; a bad weight fails here, before anything runs
            except ValueError as exc:
                return str(exc)
        return None

    async def run(self, ctx: Any, text: str, clip: ClipRef) -> tuple:
        entry = await ctx.backends.text_encoder.encode(clip, text)
        return ([entry],)


def _attach(cond: Conditioning, hint: ControlHint) -> Conditioning:
    return [entry.with_control(hint) for entry in cond]


def _as_image(image: np.ndarray) -> np.ndarray:
    arr = np.asarray(image, dtype=np.float32)
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"control image must be an IMAGE of shape (B, H, W, 3), got {arr.shape}")
    return arr


class ControlNetApply(Node):
    SPEC = NodeSpec(
        node_id="ControlNetApply",
        display_name="Apply ControlNet (OLD)",
        category="conditioning/controlnet",
        required={
            "conditioning": Link("CONDITIONING"),
            "control_net": Link("CONTROL_NET"),
            "image": Link("IMAGE"),
            "strength": Float(1.0, min=0.0, max=10.0, step=0.01),
        },
        outputs=(OutputSpec("CONDITIONING"),),
    )

    async def run(self, ctx: Any, conditioning: Conditioning, control_net: ControlNetRef, image: np.ndarray, strength: float) -> tuple:
        if strength == 0:
            return (conditioning,)
        return (_attach(conditioning, ControlHint(control_net, _as_image(image), strength)),)


class ControlNetApplyAdvanced(Node):
    SPEC = NodeSpec(
        node_id="ControlNetApplyAdvanced",
        display_name="Apply ControlNet",
        category="conditioning/controlnet",
        required={
            "positive": Link("CONDITIONING"),
            "negative": Link("CONDITIONING"),
            "control_net": Link("CONTROL_NET"),
            "image": Link("IMAGE"),
            "strength": Float(1.0, min=0.0, max=10.0, step=0.01),
            "start_percent": Float(0.0, min=0.0, max=1.0, step=0.001),
            "end_percent": Float(1.0, min=0.0, max=1.0, step=0.001),
        },
        optional={"vae": Link("VAE")},
        outputs=(OutputSpec("CONDITIONING", "positive"), OutputSpec("CONDITIONING", "negative")),
    )

    def validate(self, ctx: Any, inputs: dict[str, Any]) -> str | None:
        start, end = inputs.get("start_percent", 0.0), inputs.get("end_percent", 1.0)
        if start > end:
            return f"start_percent ({start}) must not be greater than end_percent ({end})"
        return None

    async def run(self, ctx: Any, positive: Conditioning, negative: Conditioning, control_net: ControlNetRef,
                  image: np.ndarray, strength: float, start_percent: float, end_percent: float, vae: Any = None) -> tuple:
        if strength == 0:
            return positive, negative
        hint = ControlHint(control_net, _as_image(image), strength, start_percent, end_percent)
        return _attach(positive, hint), _attach(negative, hint)
