"""ModelLoader: both checkpoint formats, LoRAs, caching, errors."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pytest
import torch

from deployments import constants
from deployments.checkpoints.layout import ModelNotFoundError, ModelsDir
from deployments.checkpoints.loader import ModelLoader
from deployments.checkpoints.single_file import CheckpointFormatError
from graphs.types import ClipRef, ControlNetRef, LoraRef, ModelRef, VaeRef

CKPT_DIR = constants.DEMO_CHECKPOINT
CKPT_FILE = constants.DEMO_CHECKPOINT_FILE
LORA = constants.DEMO_LORA


def _link(src: Path, dest: Path) -> None:
    # NOTE: a hard link (or copy), not a symlink: symlinks leaving the models root are refused.
    try:
        os.link(src, dest)
    except OSError:
        shutil.copyfile(src, dest)


@pytest.fixture()
def loader(demo_models_dir: Path) -> ModelLoader:
    return ModelLoader(ModelsDir(demo_models_dir), cache_size=2)


def test_components_are_frozen_eval_modules(loader: ModelLoader) -> None:
    unet = loader.unet(ModelRef(CKPT_FILE))
    tokenizer, text_encoder = loader.text_encoder(ClipRef(CKPT_FILE))
    vae = loader.vae(VaeRef(checkpoint=CKPT_DIR))
    cn = loader.controlnet(ControlNetRef(constants.DEMO_CONTROLNET))
    for module in (unet, text_encoder, vae, cn):
        assert not module.training
        assert not any(p.requires_grad for p in module.parameters())
        assert all(p.dtype == torch.float32 for p in module.parameters())
    assert tokenizer("a photo of a cat").input_ids[:3] == [49406, 320, 1125]
    assert vae.config.scaling_factor == pytest.approx(0.18215)


def test_model_sampling(loader: ModelLoader) -> None:
    expected = {
        "num_train_timesteps": 1000,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "prediction_type": "epsilon",
    }
    assert loader.model_sampling(CKPT_DIR) == expected
    assert loader.model_sampling(CKPT_FILE) == expected


def test_caching_and_lru(loader: ModelLoader) -> None:
    a = loader.unet(ModelRef(CKPT_DIR))
    assert loader.unet(ModelRef(CKPT_DIR)) is a
    info = loader.cache_info()["unet"]
    assert (info.hits, info.misses, info.size) == (1, 1, 1)
    with_lora = loader.unet(ModelRef(CKPT_DIR, loras=(LoraRef(LORA, 0.7),)))
    assert with_lora is not a and loader.unet(ModelRef(CKPT_DIR, loras=(LoraRef(LORA, 0.7),))) is with_lora
    loader.unet(ModelRef(CKPT_FILE))  # third model: evicts the least recently used
    assert loader.cache_info()["unet"].size == 2
    assert loader.unet(ModelRef(CKPT_DIR)) is not a  # reloaded


def test_lora_strengths_apply_per_component(loader: ModelLoader) -> None:
    base = loader.unet(ModelRef(CKPT_DIR))
    only_clip = loader.unet(ModelRef(CKPT_DIR, loras=(LoraRef(LORA, strength_model=0.0, strength_clip=1.0),)))
    assert all(torch.equal(x, y) for x, y in zip(base.state_dict().values(), only_clip.state_dict().values()))
    _, te = loader.text_encoder(ClipRef(CKPT_DIR))
    _, te_lora = loader.text_encoder(ClipRef(CKPT_DIR, loras=(LoraRef(LORA, strength_model=0.0, strength_clip=1.0),)))
    assert not torch.equal(
        te.encoder.layers[0].self_attn.q_proj.weight, te_lora.encoder.layers[0].self_attn.q_proj.weight
    )


def test_thread_safe_single_load(loader: ModelLoader) -> None:
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(loader.vae(VaeRef(checkpoint=CKPT_FILE)))) for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(r) for r in results}) == 1
    assert loader.cache_info()["vae"].misses == 1


def test_vae_file_from_models_vae(demo_models_dir: Path, tmp_path: Path) -> None:
    from deployments.checkpoints.single_file import save_vae_file

    models = ModelsDir(tmp_path / "models").ensure()
    _link(demo_models_dir / "checkpoints" / CKPT_FILE, models.folder("checkpoints") / CKPT_FILE)
    loader = ModelLoader(models)
    vae = loader.vae(VaeRef(checkpoint=CKPT_FILE))
    save_vae_file(vae, models.folder("vae") / "my-vae.safetensors")
    other = loader.vae(VaeRef(vae_file="my-vae.safetensors"))
    assert other is not vae
    assert all(torch.equal(x, y) for x, y in zip(vae.state_dict().values(), other.state_dict().values()))


def test_single_file_tokenizer_without_cache_or_network(
    demo_models_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from deployments.checkpoints import tokenizer as tok_mod

    def no_network(dest: Path) -> Path:
        raise AssertionError("must not download")

    monkeypatch.setenv(constants.ENV_CACHE_DIR, str(tmp_path / "empty-cache"))
    monkeypatch.delenv(constants.ENV_CLIP_BPE, raising=False)
    monkeypatch.setattr(tok_mod, "fetch_clip_bpe_from_registry", no_network)
    tokenizer, _ = ModelLoader(ModelsDir(demo_models_dir)).text_encoder(ClipRef(CKPT_FILE))
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]


def test_helpful_errors(loader: ModelLoader, tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match=CKPT_FILE):
        loader.unet(ModelRef("missing.safetensors"))
    with pytest.raises(ModelNotFoundError, match="lora"):
        loader.unet(ModelRef(CKPT_DIR, loras=(LoraRef("nope.safetensors"),)))
    with pytest.raises(ValueError, match="vae_file or checkpoint"):
        loader.vae(VaeRef())
    # a LoRA file put among checkpoints
    models = ModelsDir(tmp_path / "m").ensure()
    _link(loader.models.resolve("loras", LORA), models.folder("checkpoints") / "oops.safetensors")
    with pytest.raises(CheckpointFormatError, match="LoRA"):
        ModelLoader(models).unet(ModelRef("oops.safetensors"))


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__]))
