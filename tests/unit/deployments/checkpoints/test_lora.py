"""LoRA parsing (kohya and diffusers/peft keys) and merging."""

from __future__ import annotations

import pytest
import torch

from deployments import constants
from deployments.checkpoints.lora import LoraError, LoraLayer, apply_lora, lora_namespaces, parse_lora
from graphs.types import ClipRef, ModelRef


@pytest.fixture(scope="module")
def base(demo_loader):
    unet = demo_loader.unet(ModelRef(constants.DEMO_CHECKPOINT))
    _, text_encoder = demo_loader.text_encoder(ClipRef(constants.DEMO_CHECKPOINT))
    lora = demo_loader.lora_state(constants.DEMO_LORA)
    return unet, text_encoder, lora


def _unet_out(unet: torch.nn.Module) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x, ctx = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 77, 256, generator=g)
    with torch.inference_mode():
        return unet(x, 500, ctx).sample


def test_demo_lora_is_kohya_style(base) -> None:
    _, _, lora = base
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight" in lora
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight" in lora
    assert lora["lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_out_0.alpha"].item() == 4.0
    assert lora_namespaces(lora) == {"unet", "text_encoder"}


def test_lora_changes_output_and_strength_zero_is_base(base) -> None:
    unet, _, lora = base
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    ref = _unet_out(unet)
    merged = apply_lora(unet, lora, "unet", 1.0)
    out = _unet_out(merged)
    assert (out - ref).norm() / ref.norm() > 0.05
    zero = apply_lora(unet, lora, "unet", 0.0)
    assert zero is not unet
    assert torch.equal(_unet_out(zero), ref)
    # the cached base is untouched
    assert all(torch.equal(before[k], v) for k, v in unet.state_dict().items())


def test_text_encoder_lora(base) -> None:
    _, text_encoder, lora = base
    ids = torch.tensor([[49406, 320, 2368, 49407] + [49407] * 73])
    with torch.inference_mode():
        a = text_encoder(ids).last_hidden_state
        b = apply_lora(text_encoder, lora, "te", 1.0)(ids).last_hidden_state
    assert not torch.allclose(a, b)


def test_merge_math_and_peft_keys(base) -> None:
    unet, _, _ = base
    name = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    w = unet.get_submodule(name).weight
    down, up = torch.randn(2, w.shape[1]), torch.randn(w.shape[0], 2)
    peft = {f"unet.{name}.lora_A.weight": down, f"unet.{name}.lora_B.weight": up}
    merged = apply_lora(unet, peft, "unet", 0.5)
    assert torch.allclose(merged.get_submodule(name).weight, w + 0.5 * (up @ down), atol=1e-6)
    kohya = {
        "lora_unet_" + name.replace(".", "_") + ".lora_down.weight": down,
        "lora_unet_" + name.replace(".", "_") + ".lora_up.weight": up,
        "lora_unet_" + name.replace(".", "_") + ".alpha": torch.tensor(1.0),
    }
    merged = apply_lora(unet, kohya, "unet", 1.0)
    assert torch.allclose(merged.get_submodule(name).weight, w + 0.5 * (up @ down), atol=1e-6)


def test_ldm_style_kohya_names(base) -> None:
    unet, _, _ = base
    # input_blocks.1.1 == down_blocks.0.attentions.0 in SD1.x
    name = "down_blocks.0.attentions.0.proj_in"
    w = unet.get_submodule(name).weight  # a 1x1 conv
    down, up = torch.randn(2, w.shape[1], 1, 1), torch.randn(w.shape[0], 2, 1, 1)
    lora = {
        "lora_unet_input_blocks_1_1_proj_in.lora_down.weight": down,
        "lora_unet_input_blocks_1_1_proj_in.lora_up.weight": up,
    }
    merged = apply_lora(unet, lora, "unet", 1.0)
    expected = w + (up.flatten(1) @ down.flatten(1))[:, :, None, None] / 1.0
    assert torch.allclose(merged.get_submodule(name).weight, expected, atol=1e-6)


def test_conv_kxk_delta() -> None:
    layer = LoraLayer(down=torch.randn(2, 3, 3, 3), up=torch.randn(5, 2, 1, 1), alpha=1.0)
    delta = layer.delta(torch.Size((5, 3, 3, 3)))
    assert delta.shape == (5, 3, 3, 3)
    assert torch.allclose(delta, 0.5 * torch.einsum("or,rihw->oihw", layer.up.flatten(1), layer.down))


def test_unknown_keys_are_listed(base) -> None:
    unet, _, _ = base
    with pytest.raises(LoraError, match="not understood.*weird.key"):
        parse_lora({"weird.key": torch.zeros(1)})
    with pytest.raises(LoraError, match="lora_unet_no_such_module"):
        apply_lora(
            unet,
            {
                "lora_unet_no_such_module.lora_down.weight": torch.zeros(1, 1),
                "lora_unet_no_such_module.lora_up.weight": torch.zeros(1, 1),
            },
            "unet",
        )
    with pytest.raises(LoraError, match="lacks its up"):
        parse_lora({"lora_unet_x.lora_down.weight": torch.zeros(1, 1)})


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__]))
