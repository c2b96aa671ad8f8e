"""Resizing shared by ImageScale and LatentUpscale (ComfyUI's ``common_upscale`` semantics)."""

from __future__ import annotations

import numpy as np


def _center_crop(x: np.ndarray, height: int, width: int) -> np.ndarray:
    h, w = x.shape[2], x.shape[3]
    old_aspect, new_aspect = w / h, width / height
    if old_aspect > new_aspect:
        cut = round((w - w * (new_aspect / old_aspect)) / 2)
        return x[:, :, :, cut : w - cut] if cut > 0 else x
    if old_aspect < new_aspect:
        cut = round((h - h * (old_aspect / new_aspect)) / 2)
        return x[:, :, cut : h - cut, :] if cut > 0 else x
    return x


def resize_nchw(x: np.ndarray, height: int, width: int, method: str, crop: str = "disabled") -> np.ndarray:
    """Resize a ``(B, C, H, W)`` float array.

    Args:
        method: ``nearest-exact``, ``bilinear``, ``area``, ``bicubic`` or ``lanczos``.
        crop: ``center`` crops to the target aspect ratio first.

    Raises:
        ValueError: unknown method or a non-positive size.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"target size must be positive, got {width}x{height}")
    if crop == "center":
        x = _center_crop(x, height, width)
    # NOTE: torch is imported here, not at module level, so that importing graphs stays light.
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    if method == "lanczos":
        from PIL import Image

        out = []
        for b in range(t.shape[0]):
            chans = [
                np.asarray(Image.fromarray(t[b, c].numpy(), mode="F").resize((width, height), Image.LANCZOS))
                for c in range(t.shape[1])
            ]
            out.append(np.stack(chans))
        return np.stack(out).astype(np.float32)
    if method in ("bilinear", "bicubic"):
        y = F.interpolate(t, size=(height, width), mode=method, align_corners=False, antialias=False)
    elif method in ("nearest-exact", "area"):
        y = F.interpolate(t, size=(height, width), mode=method)
    else:
        raise ValueError(f"unknown upscale method {method!r}")
    return y.numpy().astype(np.float32)
