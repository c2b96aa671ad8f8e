"""Configuration of the sampler stage (UNet + ControlNet + KSampler math)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class SamplerConfig(BaseModel):
    """Settings of :class:`deployments.sampler.model.SamplerModel`.

    Construct directly (``SamplerConfig(models_dir="models")``) or validate a dict from the
    app's settings (``SamplerConfig.model_validate(cfg)``).
    """

    model_config = ConfigDict(extra="forbid")

    models_dir: str = Field(
        default="models",
        description="Models folder laid out like ComfyUI's (checkpoints/, controlnet/, loras/); "
        "read by the model loader, not by the sampler math.",
    )
    device: str = Field(
        default="cpu",
        description="Torch device for the UNet/ControlNet forward passes ('cpu', 'cuda', 'cuda:1').",
    )
    dtype: str = Field(
        default="float32",
        pattern="^(float32|float16|bfloat16)$",
        description="Weight/activation dtype of the UNet and ControlNet forwards. The sampler math "
        "(noise, sigmas, CFG, solver updates) always runs in float32.",
    )
    max_batch_rows: int = Field(
        default=16,
        ge=1,
        description="Most rows (latents x conditionings, cond and uncond together) in one UNet "
        "forward. A tick with more compatible rows is split into several forwards.",
    )
    latent_scale_factor: float = Field(
        default=1.0,
        gt=0.0,
        description="Factor between LATENT values and the UNet's latent space: the sampler "
        "multiplies by it on the way in and divides on the way out. 1.0 (default): LATENT is "
        "already in UNet space, as deployments.vae encodes/decodes it. 0.18215: LATENT holds the "
        "VAE's unscaled latents (ComfyUI's convention, SD1.5 factor).",
    )
    quantize_timesteps: bool = Field(
        default=True,
        description="True: the UNet gets the nearest training timestep (integer, ComfyUI). "
        "False: a fractional timestep interpolated in log-sigma (k-diffusion's default).",
    )
