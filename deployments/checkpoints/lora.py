"""LoRA files: parse kohya/ComfyUI and diffusers/peft keys, merge into copies of weights.

Two key styles are read:

* **kohya / ComfyUI** (what ``models/loras`` usually holds)::

      lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight
      lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight
      lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.alpha
      lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight

  The module path is flattened with ``_``, which is ambiguous (``down_blocks`` vs
  ``down.blocks``), so names are matched against an index built from the target model's
  own modules. UNet names in the LDM layout (``lora_unet_input_blocks_1_1_...``) are
  accepted too.
* **diffusers / peft**: ``unet.<module>.lora_A.weight`` / ``lora_B.weight`` (and the
  older ``.lora.down.weight`` / ``.lora.up.weight``), ``text_encoder.<module>...``.

Merging follows the LoRA paper (Hu et al., 2021, eq. 3) with kohya's alpha scaling:
``W <- W + strength * (alpha / rank) * up @ down``; 1x1 and kxk conv LoRAs are handled.
:func:`apply_lora` always works on a deep copy, so a cached base model stays untouched.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

logger = logging.getLogger(__name__)

#: Components a LoRA may target, with the key prefixes of both styles.
LORA_NAMESPACES: dict[str, tuple[str, ...]] = {
    "unet": ("lora_unet_", "unet."),
    "text_encoder": ("lora_te_", "text_encoder."),
}
_ALIASES = {"te": "text_encoder", "clip": "text_encoder", "model": "unet"}

_SUFFIXES: dict[str, str] = {
    ".lora_down.weight": "down",
    ".lora_up.weight": "up",
    ".lora_A.weight": "down",
    ".lora_B.weight": "up",
    ".lora.down.weight": "down",
    ".lora.up.weight": "up",
    ".alpha": "alpha",
}


class LoraError(ValueError):
    """A LoRA file has keys we cannot place, or shapes that do not fit the model."""


@dataclass
class LoraLayer:
    """One low-rank update: ``delta = (alpha / rank) * up @ down``."""

    down: torch.Tensor
    up: torch.Tensor
    alpha: float | None = None

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def scale(self) -> float:
        return (self.alpha if self.alpha is not None else self.rank) / self.rank

    def delta(self, weight_shape: torch.Size) -> torch.Tensor:
        """Returns ``(alpha/rank) * up @ down`` in float32, shaped like the target weight."""
        down = self.down.float()
        up = self.up.float()
        if down.ndim == 2:
            delta = up.reshape(up.shape[0], -1) @ down
        elif down.ndim == 4 and down.shape[2:] == (1, 1):
            delta = (up.flatten(1) @ down.flatten(1))[:, :, None, None]
        elif down.ndim == 4:
            # kohya conv LoRA ("LoCon"): a kxk down conv followed by a 1x1 up conv.
            delta = torch.einsum("or,rihw->oihw", up.flatten(1), down)
        else:
            raise LoraError(f"Unsupported LoRA down weight with shape {tuple(down.shape)}.")
        if delta.shape != weight_shape:
            if delta.numel() != torch.Size(weight_shape).numel():
                raise LoraError(
                    f"LoRA update of shape {tuple(delta.shape)} does not fit a weight {tuple(weight_shape)}."
                )
            delta = delta.reshape(weight_shape)  # conv 1x1 <-> linear layouts
        return delta * self.scale


def load_lora_file(path: Path | str) -> dict[str, torch.Tensor]:
    """Reads a LoRA file (``.safetensors`` or weights-only pickle) into a state dict."""
    from deployments.checkpoints.single_file import read_state_dict

    return read_state_dict(path)


def normalize_target(prefix: str) -> str:
    """Maps ``"unet"``/``"model"`` and ``"text_encoder"``/``"te"``/``"clip"`` to a namespace."""
    name = _ALIASES.get(prefix, prefix)
    if name not in LORA_NAMESPACES:
        raise ValueError(f"Unknown LoRA target {prefix!r}; expected 'unet' or 'text_encoder'.")
    return name


def parse_lora(state: Mapping[str, torch.Tensor]) -> dict[str, dict[str, LoraLayer]]:
    """Groups a LoRA state dict by target component and base name.

    Args:
        state (`Mapping`): The LoRA file's tensors.

    Returns:
        ``{"unet": {base: LoraLayer}, "text_encoder": {...}}``; ``base`` is the key without
        its suffix (``"lora_unet_..._to_q"`` or ``"unet.down_blocks...to_q"``).

    Raises:
        LoraError: keys of an unknown kind (listed), or a layer lacking its up/down half.
    """
    parts: dict[str, dict[str, dict[str, torch.Tensor]]] = {name: {} for name in LORA_NAMESPACES}
    unknown: list[str] = []
    for key, tensor in state.items():
        suffix = next((s for s in _SUFFIXES if key.endswith(s)), None)
        namespace = next((n for n, prefixes in LORA_NAMESPACES.items() if key.startswith(prefixes)), None)
        if suffix is None or namespace is None:
            unknown.append(key)
            continue
        base = key[: -len(suffix)]
        parts[namespace].setdefault(base, {})[_SUFFIXES[suffix]] = tensor
    if unknown:
        raise LoraError(
            f"{len(unknown)} LoRA keys are not understood (e.g. {', '.join(sorted(unknown)[:5])}). Supported: "
            "kohya keys 'lora_unet_*'/'lora_te_*' with .lora_down/.lora_up/.alpha, and diffusers/peft keys "
            "'unet.*'/'text_encoder.*' with .lora_A/.lora_B."
        )
    layers: dict[str, dict[str, LoraLayer]] = {name: {} for name in LORA_NAMESPACES}
    for namespace, bases in parts.items():
        for base, tensors in bases.items():
            if "down" not in tensors or "up" not in tensors:
                raise LoraError(f"LoRA layer {base!r} lacks its {'down' if 'down' not in tensors else 'up'} weight.")
            alpha = tensors.get("alpha")
            layers[namespace][base] = LoraLayer(
                down=tensors["down"], up=tensors["up"], alpha=float(alpha.item()) if alpha is not None else None
            )
    return layers


def _lora_targets(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d)) and name]


def module_index(model: nn.Module, namespace: str) -> dict[str, str]:
    """Maps every LoRA base name we accept for ``model`` to its module name.

    Args:
        model (`nn.Module`): A diffusers UNet or a transformers CLIPTextModel.
        namespace (`str`): ``"unet"`` or ``"text_encoder"``.

    Returns:
        Alias -> module name (``model.get_submodule`` accepts it).
    """
    index: dict[str, str] = {}
    names = _lora_targets(model)
    if namespace == "unet":
        from deployments.checkpoints.single_file import CheckpointFormatError, unet_key_to_ldm

        config = getattr(model, "config", None)
        for name in names:
            index["lora_unet_" + name.replace(".", "_")] = name
            index["unet." + name] = name
            if config is not None:
                try:
                    ldm = unet_key_to_ldm(name + ".weight", config).removesuffix(".weight")
                except (CheckpointFormatError, KeyError):
                    continue
                index["lora_unet_" + ldm.replace(".", "_")] = name
    else:
        for name in names:
            flat = name.removeprefix("text_model.")
            for alias in (flat, "text_model." + flat):
                index["lora_te_" + alias.replace(".", "_")] = name
                index["text_encoder." + alias] = name
    return index


def apply_lora(
    model: nn.Module, lora_state: Mapping[str, torch.Tensor], prefix: str, strength: float = 1.0
) -> nn.Module:
    """Returns a copy of ``model`` with one LoRA merged into its weights.

    Args:
        model (`nn.Module`): The base UNet (``prefix="unet"``) or CLIPTextModel
            (``prefix="text_encoder"``). It is not modified.
        lora_state (`Mapping`): The LoRA file's tensors (:func:`load_lora_file`).
        prefix (`str`): Which component of the LoRA to merge: ``"unet"`` or
            ``"text_encoder"`` (aliases ``"model"``, ``"te"``, ``"clip"``).
        strength (`float`, *optional*, defaults to 1.0): ComfyUI's ``strength_model`` /
            ``strength_clip``; 0 gives an exact copy of the base weights.

    Returns:
        A new module (deep copy) with ``W += strength * (alpha/rank) * up @ down``.

    Raises:
        LoraError: unknown keys, layers naming modules the model lacks, or shape mismatches.
    """
    namespace = normalize_target(prefix)
    layers = parse_lora(lora_state)[namespace]
    index = module_index(model, namespace)
    missing = sorted(base for base in layers if base not in index)
    if missing:
        raise LoraError(
            f"{len(missing)} {namespace} LoRA layers name modules this model does not have "
            f"(e.g. {', '.join(missing[:5])}). Is the LoRA made for SD1.x?"
        )
    merged = copy.deepcopy(model)
    if not layers:
        logger.info("LoRA has no %s layers; returning an unchanged copy", namespace)
        return merged
    with torch.no_grad():
        for base, layer in layers.items():
            module = merged.get_submodule(index[base])
            weight = module.weight
            if strength == 0:
                continue
            delta = layer.delta(weight.shape)
            weight.copy_((weight.float() + strength * delta.to(weight.device)).to(weight.dtype))
    logger.debug("Merged %d %s LoRA layers at strength %g", len(layers), namespace, strength)
    return merged


def lora_namespaces(lora_state: Mapping[str, torch.Tensor]) -> set[str]:
    """Returns which components (``"unet"``, ``"text_encoder"``) a LoRA touches."""
    return {name for name, layers in parse_lora(lora_state).items() if layers}


def kohya_name(module_name: str, namespace: str) -> str:
    """Returns the kohya base name of a diffusers/transformers module.

    Args:
        module_name (`str`): E.g. ``"down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"``
            or ``"encoder.layers.0.self_attn.q_proj"``.
        namespace (`str`): ``"unet"`` or ``"text_encoder"``.

    Returns:
        E.g. ``"lora_unet_down_blocks_0_..._to_q"`` or
        ``"lora_te_text_model_encoder_layers_0_self_attn_q_proj"``.
    """
    if namespace == "unet":
        return "lora_unet_" + module_name.replace(".", "_")
    return "lora_te_" + ("text_model." + module_name.removeprefix("text_model.")).replace(".", "_")
