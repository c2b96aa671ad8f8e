"""Single-file (LDM layout) checkpoints: our diffusers->LDM mapping, diffusers' LDM->diffusers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from deployments import constants
from deployments.checkpoints import single_file as sf


def _assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.fixture(scope="module")
def folder_models(demo_models_dir: Path):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    folder = demo_models_dir / "checkpoints" / constants.DEMO_CHECKPOINT
    return {
        "unet": UNet2DConditionModel.from_pretrained(folder / "unet", local_files_only=True).eval(),
        "vae": AutoencoderKL.from_pretrained(folder / "vae", local_files_only=True).eval(),
        "text_encoder": CLIPTextModel.from_pretrained(folder / "text_encoder", local_files_only=True).eval(),
    }


def test_demo_single_file_equals_diffusers_folder(demo_models_dir: Path, folder_models, demo_loader) -> None:
    path = demo_models_dir / "checkpoints" / constants.DEMO_CHECKPOINT_FILE
    keys = sf.read_keys(path)
    assert any(k.startswith("model.diffusion_model.input_blocks.") for k in keys)
    assert any(k.startswith("first_stage_model.encoder.mid.attn_1.q") for k in keys)
    assert any(k.startswith("cond_stage_model.transformer.text_model.encoder.layers.0.") for k in keys)
    loaded = sf.load_single_file(path)
    for name in ("unet", "vae", "text_encoder"):
        _assert_same_state(folder_models[name], getattr(loaded, name))
    assert loaded.scheduler_config["beta_schedule"] == "scaled_linear"

    # Through the loader (which also aligns tensor memory), both formats give the same bits.
    from graphs.types import ModelRef

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 16, 16, generator=generator)
    ctx = torch.randn(1, 77, 256, generator=generator)
    with torch.inference_mode():
        a = demo_loader.unet(ModelRef(constants.DEMO_CHECKPOINT))(x, 10, ctx).sample
        b = demo_loader.unet(ModelRef(constants.DEMO_CHECKPOINT_FILE))(x, 10, ctx).sample
        c = loaded.unet(x, 10, ctx).sample
    assert torch.equal(a, b) and torch.equal(b, c)


def test_round_trip_again_is_identical(folder_models, tmp_path: Path) -> None:
    path = sf.save_single_file(folder_models, tmp_path / "rt.safetensors")
    meta = sf.read_metadata(path)
    assert meta[constants.SINGLE_FILE_FORMAT_KEY] == constants.SINGLE_FILE_FORMAT_SD15
    loaded = sf.load_single_file(path, components=("vae",))
    assert loaded.unet is None and loaded.text_encoder is None
    _assert_same_state(folder_models["vae"], loaded.vae)


def test_full_size_sd15_key_layout() -> None:
    """Our mapping of a full-size SD1.5 (meta tensors) matches the real file layout."""
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import (
        convert_controlnet_checkpoint,
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
    )

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(sf.default_config("unet"))
        vae = AutoencoderKL.from_config(sf.default_config("vae"))
        cn = ControlNetModel.from_config(sf.default_config("controlnet"))
    unet_ldm = sf.unet_to_ldm(unet.state_dict(), unet.config)
    vae_ldm = sf.vae_to_ldm(vae.state_dict(), vae.config)
    # Real SD1.5 checkpoints hold 686 UNet and 248 VAE tensors.
    assert len(unet_ldm) == 686 and len(vae_ldm) == 248
    for key in (
        "model.diffusion_model.output_blocks.11.0.skip_connection.weight",
        "model.diffusion_model.input_blocks.3.0.op.weight",
        "model.diffusion_model.output_blocks.2.1.conv.weight",
        "model.diffusion_model.output_blocks.5.2.conv.weight",
        "model.diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_k.weight",
        "model.diffusion_model.time_embed.2.bias",
    ):
        assert key in unet_ldm, key
    assert vae_ldm["first_stage_model.decoder.mid.attn_1.proj_out.weight"].shape == (512, 512, 1, 1)
    assert "first_stage_model.decoder.up.3.upsample.conv.weight" in vae_ldm
    assert "first_stage_model.encoder.down.0.block.0.nin_shortcut.weight" not in vae_ldm
    assert "first_stage_model.encoder.down.1.block.0.nin_shortcut.weight" in vae_ldm

    back = convert_ldm_unet_checkpoint(unet_ldm, unet.config)
    assert {k: tuple(v.shape) for k, v in back.items()} == {k: tuple(v.shape) for k, v in unet.state_dict().items()}
    vback = convert_ldm_vae_checkpoint(vae_ldm, vae.config)
    assert {k: tuple(v.shape) for k, v in vback.items()} == {k: tuple(v.shape) for k, v in vae.state_dict().items()}
    cn_ldm = {sf.CONTROLNET_PREFIX + sf.controlnet_key_to_ldm(k, cn.config): v for k, v in cn.state_dict().items()}
    assert "control_model.input_hint_block.14.weight" in cn_ldm and "control_model.zero_convs.11.0.bias" in cn_ldm
    cback = convert_controlnet_checkpoint(cn_ldm, cn.config)
    assert set(cback) == set(cn.state_dict())


def test_controlnet_and_vae_single_files(demo_loader, tmp_path: Path) -> None:
    from graphs.types import ControlNetRef, VaeRef

    cn = demo_loader.controlnet(ControlNetRef(constants.DEMO_CONTROLNET))
    path = sf.save_controlnet_single_file(cn, tmp_path / "cn.safetensors")
    assert all(k.startswith("control_model.") for k in sf.read_keys(path))
    _assert_same_state(cn, sf.load_controlnet_file(path))

    vae = demo_loader.vae(VaeRef(checkpoint=constants.DEMO_CHECKPOINT))
    vpath = sf.save_vae_file(vae, tmp_path / "vae.safetensors")
    assert "encoder.mid.attn_1.q.weight" in sf.read_keys(vpath)
    _assert_same_state(vae, sf.load_vae_file(vpath))


def test_pickled_ckpt(folder_models, tmp_path: Path) -> None:
    state = sf.read_state_dict(sf.save_single_file(folder_models, tmp_path / "m.safetensors"))
    torch.save({"state_dict": state, "global_step": 1}, tmp_path / "m.ckpt")
    from_ckpt = sf.read_state_dict(tmp_path / "m.ckpt")
    assert set(from_ckpt) == set(state) and all(torch.equal(from_ckpt[k], state[k]) for k in state)
    # A .ckpt carries no configs, so SD1.5's (768 wide) are assumed: the demo's widths
    # do not fit, and the error says so instead of failing deep inside torch.
    with pytest.raises(sf.CheckpointFormatError, match="does not match its config"):
        sf.load_component(tmp_path / "m.ckpt", "text_encoder")


def test_not_sd15_errors(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    cases = {
        "sdxl": {
            "conditioner.embedders.0.transformer.text_model.x": torch.zeros(1),
            "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1),
        },
        "sd2": {
            "cond_stage_model.model.token_embedding.weight": torch.zeros(1),
            "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1),
        },
        "lora": {"lora_unet_x.lora_down.weight": torch.zeros(1)},
        "random": {"foo": torch.zeros(1)},
    }
    for name, state in cases.items():
        path = tmp_path / f"{name}.safetensors"
        save_file(state, str(path))
        with pytest.raises(sf.CheckpointFormatError) as err:
            sf.load_component(path, "unet")
        assert {"sdxl": "SDXL", "sd2": "SD2", "lora": "LoRA", "random": "not a Stable Diffusion 1.x"}[name] in str(
            err.value
        )
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 20)
    with pytest.raises(sf.CheckpointFormatError, match="not a readable safetensors"):
        sf.load_component(junk, "vae")


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__]))
