"""Image nodes: load uploads, scale, save and preview."""

from __future__ import annotations

from typing import Any

import numpy as np

from graphs.constants import CROP_METHODS, IMAGE_UPSCALE_METHODS
from graphs.nodes.resize import resize_nchw
from graphs.spec import MAX_RESOLUTION, Combo, Int, Link, Node, NodeResult, NodeSpec, OutputSpec, String


class LoadImage(Node):
    SPEC = NodeSpec(
        node_id="LoadImage",
        display_name="Load Image",
        category="image",
        required={"image": Combo(source="input_images", image_upload=True)},
        outputs=(OutputSpec("IMAGE"), OutputSpec("MASK")),
    )

    def cache_salt(self, ctx: Any, inputs: dict[str, Any]) -> str | None:
        # Like ComfyUI's IS_CHANGED: a re-upload under the same name must not hit the cache.
        store = getattr(ctx, "inputs", None)
        name = inputs.get("image")
        if store is None or not isinstance(name, str):
            return None
        try:
            return store.content_hash(name)
        except (FileNotFoundError, ValueError):
            return None

    def validate(self, ctx: Any, inputs: dict[str, Any]) -> str | None:
        store = getattr(ctx, "inputs", None)
        if store is None:
            return None
        try:
            store.content_hash(inputs["image"])
        except (FileNotFoundError, ValueError) as exc:
            return f"Invalid image file: {inputs['image']} ({exc})"
        return None

    async def run(self, ctx: Any, image: str) -> tuple:
        pixels, mask = ctx.inputs.load(image)
        return pixels, mask


class ImageScale(Node):
    SPEC = NodeSpec(
        node_id="ImageScale",
        display_name="Upscale Image",
        category="image/upscaling",
        required={
            "image": Link("IMAGE"),
            "upscale_method": Combo(IMAGE_UPSCALE_METHODS),
            "width": Int(512, min=0, max=MAX_RESOLUTION, step=1),
            "height": Int(512, min=0, max=MAX_RESOLUTION, step=1),
            "crop": Combo(CROP_METHODS),
        },
        outputs=(OutputSpec("IMAGE"),),
    )

    async def run(self, ctx: Any, image: np.ndarray, upscale_method: str, width: int, height: int, crop: str) -> tuple:
        if width == 0 and height == 0:
            return (image,)
        h, w = image.shape[1], image.shape[2]
        if width == 0:
            width = max(1, round(w * height / h))
        if height == 0:
            height = max(1, round(h * width / w))
        nchw = np.transpose(image, (0, 3, 1, 2))
        out = resize_nchw(nchw, height, width, upscale_method, crop)
        return (np.clip(np.transpose(out, (0, 2, 3, 1)), 0.0, 1.0).astype(np.float32),)


class SaveImage(Node):
    SPEC = NodeSpec(
        node_id="SaveImage",
        display_name="Save Image",
        category="image",
        required={"images": Link("IMAGE"), "filename_prefix": String("ComfyUI")},
        outputs=(),
        output_node=True,
        description="Saves images to the output store, watermarked and C2PA-signed.",
    )

    def validate(self, ctx: Any, inputs: dict[str, Any]) -> str | None:
        prefix = inputs.get("filename_prefix", "")
        if ".." in prefix.replace("\\", "/").split("/") or prefix.startswith(("/", "\\")):
            return f"filename_prefix {prefix!r} must be a relative path without '..'"
        return None

    async def run(self, ctx: Any, images: np.ndarray, filename_prefix: str) -> NodeResult:
        saved = await ctx.sink.save_images(images, filename_prefix=filename_prefix, kind="output", node_id=ctx.node_id, ctx=ctx)
        return NodeResult(ui={"images": saved})


class PreviewImage(Node):
    SPEC = NodeSpec(
        node_id="PreviewImage",
        display_name="Preview Image",
        category="image",
        required={"images": Link("IMAGE")},
        outputs=(),
        output_node=True,
    )

    async def run(self, ctx: Any, images: np.ndarray) -> NodeResult:
        saved = await ctx.sink.save_images(images, filename_prefix="ComfyUI_temp", kind="temp", node_id=ctx.node_id, ctx=ctx)
        return NodeResult(ui={"images": saved})
