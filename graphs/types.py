"""Values that flow along workflow links and cross stage boundaries.

Everything here is plain data (dataclasses + numpy arrays) so it pickles cheaply
between Ray processes and needs neither torch nor Ray to import.

Conventions follow ComfyUI so that workflows keep their meaning:

* ``IMAGE``: float32 array ``(B, H, W, 3)`` in ``[0, 1]``.
* ``LATENT``: :class:`Latent` with ``samples`` float32 ``(B, 4, H/8, W/8)``.
* ``CONDITIONING``: ``list[ConditioningEntry]`` (ComfyUI: list of ``[tensor, dict]``).
* ``MODEL`` / ``CLIP`` / ``VAE`` / ``CONTROL_NET``: *references* (:class:`ModelRef`, ...)
  naming files in the models folder. The weights live in the stage deployments;
  the graph only passes names around, so a workflow never ships weights over the wire.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class LoraRef:
    """A LoRA file applied on top of a checkpoint."""

    name: str
    strength_model: float = 1.0
    strength_clip: float = 1.0


@dataclass(frozen=True)
class ModelRef:
    """The denoising UNet of a checkpoint, with LoRAs applied in order."""

    checkpoint: str
    loras: tuple[LoraRef, ...] = ()

    def key(self) -> str:
        parts = [self.checkpoint] + [f"{l.name}@{l.strength_model:g}" for l in self.loras]
        return "|".join(parts)


@dataclass(frozen=True)
class ClipRef:
    """The CLIP text encoder (and tokenizer) of a checkpoint, with LoRAs applied in order."""

    checkpoint: str
    loras: tuple[LoraRef, ...] = ()

    def key(self) -> str:
        parts = [self.checkpoint] + [f"{l.name}@{l.strength_clip:g}" for l in self.loras]
        return "|".join(parts)


@dataclass(frozen=True)
class VaeRef:
    """A VAE: the one inside ``checkpoint`` or a standalone file from ``models/vae``."""

    checkpoint: str | None = None
    vae_file: str | None = None

    def key(self) -> str:
        return f"vae:{self.vae_file}" if self.vae_file else f"ckpt:{self.checkpoint}"


@dataclass(frozen=True)
class ControlNetRef:
    """A ControlNet file from ``models/controlnet``."""

    name: str


@dataclass
class ControlHint:
    """A ControlNet attached to a conditioning (ComfyUI's ``control`` entry).

    ``image`` is an IMAGE array ``(B, H, W, 3)`` in ``[0, 1]``; the sampler resizes it to
    the latent's pixel size. ``start_percent``/``end_percent`` bound the part of the
    denoising schedule (0 = first step, 1 = last step) where the control is active.
    """

    control_net: ControlNetRef
    image: np.ndarray
    strength: float = 1.0
    start_percent: float = 0.0
    end_percent: float = 1.0


@dataclass
class ConditioningEntry:
    """One text conditioning: CLIP hidden states ``(1, T, D)`` (T a multiple of 77)."""

    embedding: np.ndarray
    pooled: np.ndarray | None = None
    controls: tuple[ControlHint, ...] = ()

    def with_control(self, hint: ControlHint) -> "ConditioningEntry":
        return ConditioningEntry(self.embedding, self.pooled, self.controls + (hint,))


Conditioning = list[ConditioningEntry]


@dataclass
class Latent:
    """ComfyUI's LATENT dict: ``samples`` is ``(B, 4, H/8, W/8)`` float32."""

    samples: np.ndarray
    batch_index: list[int] | None = None


@dataclass
class SampleRequest:
    """Everything the sampler stage needs for one KSampler/KSamplerAdvanced call.

    Argument names follow ComfyUI's KSampler inputs. ``latent`` is the starting latent
    (zeros for txt2img, a VAE encoding for img2img); initial and ancestral noise are
    drawn from a CPU generator seeded with ``seed`` so the result does not depend on
    batch composition or device.
    """

    model: ModelRef
    positive: Conditioning
    negative: Conditioning
    latent: np.ndarray
    seed: int
    steps: int = 20
    cfg: float = 8.0
    sampler_name: str = "euler"
    scheduler: str = "normal"
    denoise: float = 1.0
    add_noise: bool = True
    start_at_step: int = 0
    end_at_step: int = 10000
    return_with_leftover_noise: bool = False
    request_id: str = ""
    batch_index: list[int] | None = None


@dataclass
class SamplerProgress:
    """Emitted once per finished denoising step."""

    step: int
    total: int


@dataclass
class SamplerOutput:
    """Final latents of one request."""

    latents: np.ndarray
    seed: int
    steps_run: int = 0
    unet_batch_sizes: list[int] = field(default_factory=list)
