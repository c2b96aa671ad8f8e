"""The demo bundle: layout, configs, determinism."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from deployments import constants
from deployments.checkpoints.demo import DEMO_TEXT_CONFIG, DEMO_UNET_CONFIG, init_demo, seeded_init_
from deployments.checkpoints.layout import ModelsDir


def _hashes(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_bundle_layout(demo_models_dir: Path) -> None:
    models = ModelsDir(demo_models_dir)
    assert models.list("checkpoints") == [constants.DEMO_CHECKPOINT, constants.DEMO_CHECKPOINT_FILE]
    assert models.list("controlnet") == [constants.DEMO_CONTROLNET]
    assert models.list("loras") == [constants.DEMO_LORA]
    folder = models.folder("checkpoints") / constants.DEMO_CHECKPOINT
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (folder / part).is_dir(), part
    assert (folder / "tokenizer" / "vocab.json").is_file() and (folder / "tokenizer" / "merges.txt").is_file()
    assert "SEEDED RANDOM" in (folder / constants.DEMO_MARKER).read_text()
    sched = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    assert (sched["beta_schedule"], sched["beta_start"], sched["beta_end"]) == ("scaled_linear", 0.00085, 0.012)
    assert (sched["num_train_timesteps"], sched["prediction_type"]) == (1000, "epsilon")
    unet_cfg = json.loads((folder / "unet" / "config.json").read_text())
    assert unet_cfg["cross_attention_dim"] == DEMO_TEXT_CONFIG["hidden_size"]
    assert unet_cfg["block_out_channels"] == DEMO_UNET_CONFIG["block_out_channels"]


def test_same_seed_same_bytes(demo_models_dir: Path, tmp_path: Path) -> None:
    written = init_demo(tmp_path, seed=0)
    assert [p.name for p in written] == [
        constants.DEMO_CHECKPOINT,
        constants.DEMO_CHECKPOINT_FILE,
        constants.DEMO_CONTROLNET,
        constants.DEMO_LORA,
    ]
    assert _hashes(tmp_path) == _hashes(demo_models_dir)


def test_existing_bundle_is_kept_and_other_seed_refused(demo_models_dir: Path) -> None:
    before = (demo_models_dir / "checkpoints" / constants.DEMO_CHECKPOINT_FILE).stat().st_mtime_ns
    assert init_demo(demo_models_dir, seed=0) == []  # no-op
    assert (demo_models_dir / "checkpoints" / constants.DEMO_CHECKPOINT_FILE).stat().st_mtime_ns == before
    with pytest.raises(FileExistsError, match="force"):
        init_demo(demo_models_dir, seed=1)


def test_seeded_init_depends_on_seed_only() -> None:
    def make(seed: int) -> torch.nn.Module:
        torch.manual_seed(seed + 123)  # the global RNG must not matter
        return seeded_init_(torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8)), seed, "t")

    a, b, c = make(0), make(0), make(1)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a[0].weight, c[0].weight)
    assert torch.equal(a[1].weight, torch.ones(8))


def test_plain_diffusers_pipeline_loads_the_folder(demo_models_dir: Path) -> None:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(
        demo_models_dir / "checkpoints" / constants.DEMO_CHECKPOINT, safety_checker=None, local_files_only=True
    )
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a cat", height=64, width=64, num_inference_steps=2, output_type="np").images
    assert image.shape == (1, 64, 64, 3)


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__]))
