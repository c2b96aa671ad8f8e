"""TinyModelLoader: a test double for ``deployments.checkpoints.ModelLoader``.

It hands out real diffusers models (SD1.5 block structure, tiny widths) with seeded random
weights, built in memory, so sampler tests exercise the true UNet/ControlNet code paths
without any files or downloads. Same name -> same weights, in every process.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import ControlNetModel, UNet2DConditionModel
from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

from graphs.types import ControlNetRef, ModelRef

TINY_CROSS_ATTENTION_DIM = 32
SD15_MODEL_SAMPLING: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
}


def _seed_for(name: str) -> int:
    # NOTE: not hash(): Python salts str hashes per process.
    return sum((i + 1) * ord(c) for i, c in enumerate(name)) % (2**31)


class TinyEpsUNet(UNet2DConditionModel):
    """A real diffusers UNet whose eps prediction gets a skip connection: ``sample + 0.1 * unet(...)``.

    A randomly initialised UNet predicts noise that has nothing to do with its input, so
    sampling with it drifts to latents of size ~100 where float32 rounding alone exceeds
    the tolerances of the batch-invariance tests. With the skip, the prediction is roughly
    that of a trained model for data near 0 (eps ~ scaled input) plus a conditioned,
    ControlNet-sensitive perturbation, and results stay of order 1 like real latents.
    """

    residual_scale = 0.1

    def forward(self, sample, timestep, encoder_hidden_states, *args, return_dict: bool = True, **kwargs):
        out = super().forward(sample, timestep, encoder_hidden_states, *args, return_dict=False, **kwargs)[0]
        eps = sample + self.residual_scale * out
        return UNet2DConditionOutput(sample=eps) if return_dict else (eps,)


def tiny_unet(seed: int = 0) -> UNet2DConditionModel:
    """A 2-level SD1.5-style UNet (cross-attention in the first level), ~0.3M parameters."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = TinyEpsUNet(
            sample_size=8,
            in_channels=4,
            out_channels=4,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            block_out_channels=(32, 64),
            layers_per_block=1,
            cross_attention_dim=TINY_CROSS_ATTENTION_DIM,
            attention_head_dim=8,
            norm_num_groups=32,
        )
    return unet.eval()


def tiny_controlnet(unet: UNet2DConditionModel, seed: int = 0) -> ControlNetModel:
    """A ControlNet shaped for ``unet``, with its zero-initialised output convs randomised.

    A freshly initialised ControlNet outputs exact zeros (its "zero convolutions"), which
    would make every ControlNet test vacuous.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 16, 16, 16))
        with torch.no_grad():
            for module in list(controlnet.controlnet_down_blocks) + [
                controlnet.controlnet_mid_block,
                controlnet.controlnet_cond_embedding.conv_out,
            ]:
                module.weight.normal_(0.0, 0.05)
                module.bias.normal_(0.0, 0.05)
    return controlnet.eval()


class TinyModelLoader:
    """Test double for ``ModelLoader``: ``unet(ModelRef)``, ``controlnet(ControlNetRef)``,
    ``model_sampling(checkpoint)``; models are cached per name and seeded by name.

    Attributes:
        loads (`list[str]`): every model built, for tests that check caching.
    """

    def __init__(self) -> None:
        self._unets: dict[str, UNet2DConditionModel] = {}
        self._controlnets: dict[str, ControlNetModel] = {}
        self.loads: list[str] = []

    def unet(self, ref: ModelRef) -> UNet2DConditionModel:
        key = ref.key()
        if key not in self._unets:
            self.loads.append(f"unet:{key}")
            self._unets[key] = tiny_unet(_seed_for(key))
        return self._unets[key]

    def model_sampling(self, checkpoint: str) -> dict[str, Any]:
        return dict(SD15_MODEL_SAMPLING)

    def controlnet(self, ref: ControlNetRef) -> ControlNetModel:
        if ref.name not in self._controlnets:
            self.loads.append(f"controlnet:{ref.name}")
            base = tiny_unet(0)
            self._controlnets[ref.name] = tiny_controlnet(base, _seed_for(ref.name))
        return self._controlnets[ref.name]
