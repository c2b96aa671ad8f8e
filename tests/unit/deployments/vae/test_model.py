"""VaeModel: decode/encode shapes, value range, scaling, ComfyUI cropping."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from deployments import constants
from deployments.vae.model import VaeConfig, VaeModel, center_crop_to_multiple
from graphs.types import VaeRef

VAE = VaeRef(checkpoint=constants.DEMO_CHECKPOINT)


@pytest.fixture()
def model(demo_models_dir: Path, demo_loader) -> VaeModel:
    return VaeModel(VaeConfig(models_dir=demo_models_dir, max_batch_size=2), loader=demo_loader)


def test_decode_shape_and_range(model: VaeModel) -> None:
    latents = np.random.default_rng(0).standard_normal((3, 4, 8, 12)).astype(np.float32)
    images = model.decode_latents(VAE, latents)
    assert images.shape == (3, 64, 96, 3) and images.dtype == np.float32
    assert images.min() >= 0.0 and images.max() <= 1.0 and images.std() > 0
    # batching (max_batch_size=2) does not change results
    np.testing.assert_allclose(model.decode_latents(VAE, latents[2:]), images[2:], atol=1e-5)


def test_decode_divides_by_scaling_factor(model: VaeModel, demo_loader) -> None:
    import torch

    latents = np.random.default_rng(1).standard_normal((1, 4, 8, 8)).astype(np.float32)
    vae = demo_loader.vae(VAE)
    with torch.inference_mode():
        raw = vae.decode(torch.from_numpy(latents) / 0.18215).sample
    expected = ((raw + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(model.decode_latents(VAE, latents), expected, atol=1e-6)


def test_encode_shape_scaling_and_determinism(model: VaeModel, demo_loader) -> None:
    import torch

    images = np.random.default_rng(2).random((2, 64, 80, 3), dtype=np.float32)
    latents = model.encode_images(VAE, images)
    assert latents.shape == (2, 4, 8, 10) and latents.dtype == np.float32
    np.testing.assert_array_equal(latents, model.encode_images(VAE, images))  # posterior mean
    vae = demo_loader.vae(VAE)
    with torch.inference_mode():
        mean = vae.encode(torch.from_numpy(images).permute(0, 3, 1, 2) * 2 - 1).latent_dist.mean
    np.testing.assert_allclose(latents, mean.numpy() * 0.18215, atol=1e-5)


def test_encode_center_crops_to_multiple_of_8(model: VaeModel) -> None:
    images = np.random.default_rng(3).random((1, 70, 61, 4), dtype=np.float32)  # RGBA, odd sizes
    latents = model.encode_images(VAE, images)
    assert latents.shape == (1, 4, 8, 7)
    cropped = center_crop_to_multiple(images)
    assert cropped.shape == (1, 64, 56, 4)
    np.testing.assert_array_equal(cropped, images[:, 3:67, 2:58])  # ComfyUI's offsets
    np.testing.assert_allclose(latents, model.encode_images(VAE, images[:, 3:67, 2:58, :3]), atol=1e-6)


def test_bad_shapes(model: VaeModel) -> None:
    with pytest.raises(ValueError, match="latent channels"):
        model.decode_latents(VAE, np.zeros((1, 3, 8, 8), np.float32))
    with pytest.raises(ValueError, match=r"\(B, C, h, w\)"):
        model.decode_latents(VAE, np.zeros((4, 8, 8), np.float32))
    with pytest.raises(ValueError, match="at least 8x8"):
        model.encode_images(VAE, np.zeros((1, 4, 4, 3), np.float32))


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__]))
