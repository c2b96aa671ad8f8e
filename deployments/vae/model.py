"""VAE decode (latents -> images) and encode (images -> latents) for SD1.x.

:class:`VaeModel` is the plain model class behind the VAE deployment: no Ray import, and
the caller sets torch's thread count. Array conventions follow :mod:`graphs.types`:

* IMAGE: float32 ``(B, H, W, 3)`` in ``[0, 1]``;
* latents: float32 ``(B, 4, H/8, W/8)``, **already multiplied by the VAE's
  scaling factor** (0.18215 for SD1.x), i.e. the space the UNet works in. Decoding divides
  by it first; encoding multiplies by it last.

Encoding is deterministic: it uses the mean of the posterior (ComfyUI takes the mode of
the diagonal Gaussian, which is its mean). Images whose sides are not multiples of 8 are
center-cropped down to one, as ComfyUI's ``VAEEncode`` does; a fourth (alpha) channel is
dropped.

Usage::

    vae = VaeModel(VaeConfig(models_dir="models"))
    images = vae.decode_latents(VaeRef(checkpoint="genserve-demo-sd15"), latents)
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from deployments.checkpoints.layout import ModelsDir, default_models_dir
from graphs.types import VaeRef

if TYPE_CHECKING:  # NOTE: the loader imports torch; keep this module cheap to import.
    from deployments.checkpoints.loader import ModelLoader

logger = logging.getLogger(__name__)

#: Pixels per latent cell (SD1.x VAEs downsample three times).
DOWNSCALE = 8
#: SD1.x's latent scaling factor, used when a VAE's config does not say.
DEFAULT_SCALING_FACTOR = 0.18215


class VaeConfig(BaseModel):
    """Configuration of the VAE stage."""

    model_config = ConfigDict(extra="forbid")

    models_dir: Path = Field(
        default_factory=default_models_dir,
        description="Models root in ComfyUI's layout (checkpoints/ and vae/ hold VAEs).",
    )
    model_cache_size: int = Field(default=2, ge=1, description="VAEs kept loaded.")
    max_batch_size: int = Field(
        default=8, ge=1, description="Most images decoded or encoded in one forward pass (bounds memory)."
    )
    device: str = Field(default="cpu", description="Torch device of the VAE.")


def center_crop_to_multiple(images: np.ndarray, multiple: int = DOWNSCALE) -> np.ndarray:
    """Center-crops ``(B, H, W, C)`` images so that H and W are multiples of ``multiple``.

    Same offsets as ComfyUI's ``VAEEncode.vae_encode_crop_pixels``.

    Args:
        images (`np.ndarray`): ``(B, H, W, C)``.
        multiple (`int`, *optional*, defaults to 8): The required divisor.

    Returns:
        The cropped view (the input itself when nothing is cropped).
    """
    h = (images.shape[1] // multiple) * multiple
    w = (images.shape[2] // multiple) * multiple
    if (h, w) == images.shape[1:3]:
        return images
    y0 = (images.shape[1] % multiple) // 2
    x0 = (images.shape[2] % multiple) // 2
    return images[:, y0 : y0 + h, x0 : x0 + w, :]


def _scaling(vae: Any) -> tuple[float, float]:
    config = vae.config
    scale = getattr(config, "scaling_factor", None) or DEFAULT_SCALING_FACTOR
    shift = getattr(config, "shift_factor", None) or 0.0
    return float(scale), float(shift)


class VaeModel:
    """Decodes latents to images and encodes images to latents.

    Construct with a :class:`VaeConfig`; pass ``loader`` to share a
    :class:`~deployments.checkpoints.loader.ModelLoader` (tests pass one over the demo
    bundle).

    Args:
        config (`VaeConfig`): The stage config.
        loader (`ModelLoader`, *optional*): Model loader; built from ``config`` if omitted.
    """

    def __init__(self, config: VaeConfig | None = None, loader: ModelLoader | None = None) -> None:
        self.config = config or VaeConfig()
        if loader is None:
            from deployments.checkpoints.loader import ModelLoader

            loader = ModelLoader(
                ModelsDir(self.config.models_dir), device=self.config.device, cache_size=self.config.model_cache_size
            )
        self.loader = loader

    def decode_latents(self, vae: VaeRef, latents: np.ndarray) -> np.ndarray:
        """Decodes scaled latents into images.

        Args:
            vae (`VaeRef`): Which VAE.
            latents (`np.ndarray`): ``(B, C, h, w)`` latents in UNet space (scaled).

        Returns:
            float32 ``(B, 8h, 8w, 3)`` images in ``[0, 1]``.

        Raises:
            ValueError: wrong rank or channel count.
            ModelNotFoundError: the VAE does not exist.
        """
        import torch

        # 1. Check inputs
        latents = np.asarray(latents)
        if latents.ndim != 4:
            raise ValueError(f"latents must be (B, C, h, w), got shape {latents.shape}.")
        model = self.loader.vae(vae)
        channels = int(model.config.latent_channels)
        if latents.shape[1] != channels:
            raise ValueError(
                f"This VAE expects {channels} latent channels, got {latents.shape[1]} (shape {latents.shape})."
            )
        scale, shift = _scaling(model)
        param = next(model.parameters())

        # 2. Decode in slices of max_batch_size
        outputs = []
        with torch.inference_mode():
            for start in range(0, latents.shape[0], self.config.max_batch_size):
                z = torch.from_numpy(
                    np.ascontiguousarray(latents[start : start + self.config.max_batch_size], dtype=np.float32)
                )
                z = (z / scale + shift).to(device=param.device, dtype=param.dtype)
                x = model.decode(z).sample.float()
                x = ((x + 1.0) / 2.0).clamp(0.0, 1.0)
                outputs.append(x.permute(0, 2, 3, 1).cpu().numpy())
        return np.concatenate(outputs).astype(np.float32, copy=False)

    def encode_images(self, vae: VaeRef, images: np.ndarray) -> np.ndarray:
        """Encodes images into scaled latents (posterior mean, deterministic).

        Args:
            vae (`VaeRef`): Which VAE.
            images (`np.ndarray`): ``(B, H, W, 3)`` (or 4 channels; alpha is dropped) in
                ``[0, 1]``. Sides that are not multiples of 8 are center-cropped.

        Returns:
            float32 ``(B, 4, H//8, W//8)`` latents multiplied by the scaling factor.

        Raises:
            ValueError: wrong rank, channel count, or sides under 8 pixels.
            ModelNotFoundError: the VAE does not exist.
        """
        import torch

        # 1. Check inputs
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] not in (3, 4):
            raise ValueError(f"images must be (B, H, W, 3), got shape {images.shape}.")
        if images.shape[1] < DOWNSCALE or images.shape[2] < DOWNSCALE:
            raise ValueError(f"images must be at least {DOWNSCALE}x{DOWNSCALE} pixels, got {images.shape[1:3]}.")
        # 2. Crop like ComfyUI, drop alpha
        pixels = center_crop_to_multiple(images)[..., :3]
        model = self.loader.vae(vae)
        scale, shift = _scaling(model)
        param = next(model.parameters())

        # 3. Encode in slices of max_batch_size
        outputs = []
        with torch.inference_mode():
            for start in range(0, pixels.shape[0], self.config.max_batch_size):
                x = torch.from_numpy(
                    np.ascontiguousarray(pixels[start : start + self.config.max_batch_size], dtype=np.float32)
                )
                x = (x.permute(0, 3, 1, 2) * 2.0 - 1.0).to(device=param.device, dtype=param.dtype)
                mean = model.encode(x).latent_dist.mean.float()
                outputs.append(((mean - shift) * scale).cpu().numpy())
        return np.concatenate(outputs).astype(np.float32, copy=False)
