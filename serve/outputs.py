"""The output sink used by SaveImage/PreviewImage: encode, stamp provenance, store.

Provenance (watermark + C2PA) is applied by the ``stamper`` before anything is written, so
no workflow can publish an unstamped image: if stamping fails, the node fails.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import numpy as np
from PIL import PngImagePlugin

from serve.stores.files import OutputImageStore, array_to_pil

logger = logging.getLogger(__name__)


@dataclass
class SaveContext:
    """What the stamper needs to know about one output image."""

    prompt_id: str
    node_id: str
    kind: str
    index: int
    workflow: dict[str, Any]
    upstream: list[Any] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


class Stamper(Protocol):
    def __call__(self, png: bytes, save: SaveContext) -> tuple[bytes, dict[str, Any]]: ...


def encode_png(image: np.ndarray, text: dict[str, str] | None = None) -> bytes:
    pil = array_to_pil(image)
    info = PngImagePlugin.PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)
    buf = io.BytesIO()
    pil.save(buf, format="PNG", pnginfo=info, compress_level=4)
    return buf.getvalue()


class ImageOutputSink:
    """Writes PNGs into the output/temp folders (``/view`` serves them).

    Args:
        store: the output folders.
        stamper: provenance hook ``(png, SaveContext) -> (png, record)``; ``None`` writes plain PNGs.
        on_saved: called with ``(filename, subfolder, kind, record, save_ctx)`` after each write
            (artifact/lineage bookkeeping).
    """

    def __init__(self, store: OutputImageStore, stamper: Stamper | None = None,
                 on_saved: Callable[..., None] | None = None):
        self.store = store
        self.stamper = stamper
        self.on_saved = on_saved

    def _save_one(self, image: np.ndarray, prefix: str, kind: str, save: SaveContext) -> dict[str, Any]:
        png = encode_png(image, {"prompt": json.dumps(save.workflow)})
        record: dict[str, Any] = {}
        if self.stamper is not None:
            png, record = self.stamper(png, save)
        filename, subfolder = self.store.write_new(png, filename_prefix=prefix, kind=kind)
        if self.on_saved is not None:
            self.on_saved(filename, subfolder, kind, record, save, png)
        return {"filename": filename, "subfolder": subfolder, "type": kind}

    async def save_images(self, images: np.ndarray, *, filename_prefix: str, kind: str, node_id: str, ctx: Any) -> list[dict[str, Any]]:
        results = []
        upstream = ctx.upstream(node_id) if hasattr(ctx, "upstream") else []
        for i in range(images.shape[0]):
            save = SaveContext(
                prompt_id=ctx.prompt_id, node_id=node_id, kind=kind, index=i, workflow=ctx.workflow.raw,
                upstream=upstream, extra=dict(getattr(ctx, "extra", {}) or {}),
            )
            results.append(await asyncio.to_thread(self._save_one, images[i], filename_prefix, kind, save))
        return results
