"""Loader nodes: they resolve names to references; the weights live in the stage deployments."""

from __future__ import annotations

from typing import Any

from graphs.spec import Combo, Float, Link, Node, NodeSpec, OutputSpec
from graphs.types import ClipRef, ControlNetRef, LoraRef, ModelRef, VaeRef


class CheckpointLoaderSimple(Node):
    SPEC = NodeSpec(
        node_id="CheckpointLoaderSimple",
        display_name="Load Checkpoint",
        category="loaders",
        required={"ckpt_name": Combo(source="checkpoints", tooltip="checkpoint in models/checkpoints")},
        outputs=(OutputSpec("MODEL"), OutputSpec("CLIP"), OutputSpec("VAE")),
        description="Names a Stable Diffusion 1.5 checkpoint; the stages load its UNet, CLIP and VAE.",
    )

    async def run(self, ctx: Any, ckpt_name: str) -> tuple:
        return ModelRef(ckpt_name), ClipRef(ckpt_name), VaeRef(checkpoint=ckpt_name)


class ControlNetLoader(Node):
    SPEC = NodeSpec(
        node_id="ControlNetLoader",
        display_name="Load ControlNet Model",
        category="loaders",
        required={"control_net_name": Combo(source="controlnet")},
        outputs=(OutputSpec("CONTROL_NET"),),
    )

    async def run(self, ctx: Any, control_net_name: str) -> tuple:
        return (ControlNetRef(control_net_name),)


class LoraLoader(Node):
    SPEC = NodeSpec(
        node_id="LoraLoader",
        display_name="Load LoRA",
        category="loaders",
        required={
            "model": Link("MODEL"),
            "clip": Link("CLIP"),
            "lora_name": Combo(source="loras"),
            "strength_model": Float(1.0, min=-100.0, max=100.0, step=0.01),
            "strength_clip": Float(1.0, min=-100.0, max=100.0, step=0.01),
        },
        outputs=(OutputSpec("MODEL"), OutputSpec("CLIP")),
    )

    async def run(self, ctx: Any, model: ModelRef, clip: ClipRef, lora_name: str, strength_model: float, strength_clip: float) -> tuple:
        lora = LoraRef(lora_name, strength_model, strength_clip)
        new_model = ModelRef(model.checkpoint, model.loras + (lora,)) if strength_model != 0 else model
        new_clip = ClipRef(clip.checkpoint, clip.loras + (lora,)) if strength_clip != 0 else clip
        return new_model, new_clip


class VAELoader(Node):
    SPEC = NodeSpec(
        node_id="VAELoader",
        display_name="Load VAE",
        category="loaders",
        required={"vae_name": Combo(source="vae")},
        outputs=(OutputSpec("VAE"),),
    )

    async def run(self, ctx: Any, vae_name: str) -> tuple:
        return (VaeRef(vae_file=vae_name),)
