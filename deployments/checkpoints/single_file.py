"""Single-file SD1.x checkpoints in the original LDM/CompVis key layout.

This is what ComfyUI users keep in ``models/checkpoints``: one ``.safetensors`` (or
pickled ``.ckpt``) holding the UNet (``model.diffusion_model.*``), the VAE
(``first_stage_model.*``) and the CLIP text encoder
(``cond_stage_model.transformer.text_model.*``).

* **Saving** (:func:`save_single_file`) maps diffusers/transformers parameter names to
  LDM names with our own table (the inverse of diffusers'
  ``convert_ldm_unet_checkpoint`` / ``convert_ldm_vae_checkpoint``; the VAE mid-block
  attention projections become 1x1 convs again). The diffusers configs go into the
  safetensors ``__metadata__`` (``genserve.configs``), so reduced-width checkpoints
  (the demo bundle) load back without guessing.
* **Loading** (:func:`load_single_file`, :func:`load_component`) converts LDM -> diffusers
  with diffusers' own conversion functions, passing configs explicitly: from the file's
  metadata, or else SD1.5's defaults shipped as JSON under ``configs/``. Nothing touches
  a model hub. Only the tensors of the asked-for component are read from a safetensors
  file.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from deployments import constants

if TYPE_CHECKING:  # NOTE: diffusers/transformers are imported lazily (slow imports).
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

logger = logging.getLogger(__name__)

#: LDM prefixes of the three components of a full checkpoint.
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."
CLIP_TEXT_PREFIX = CLIP_PREFIX + "text_model."
CONTROLNET_PREFIX = "control_model."

COMPONENT_PREFIXES: dict[str, str] = {"unet": UNET_PREFIX, "vae": VAE_PREFIX, "text_encoder": CLIP_PREFIX}

#: Keys present in some checkpoints that no diffusers module has (buffers of old versions).
_IGNORED_SUFFIXES = ("position_ids",)


class CheckpointFormatError(ValueError):
    """A file is not a checkpoint we can load (wrong family, missing parts, bad shapes)."""


# ----------------------------------------------------------------------------------------
# Bundled default configs (SD1.5)
# ----------------------------------------------------------------------------------------


def default_config(name: str) -> dict[str, Any]:
    """Returns one of the SD1.5 default configs shipped in ``configs/``.

    Args:
        name (`str`): ``"unet"``, ``"vae"``, ``"text_encoder"``, ``"scheduler"`` or
            ``"controlnet"``.

    Returns:
        A fresh dict (safe to modify).
    """
    text = resources.files("deployments.checkpoints").joinpath("configs", f"sd15_{name}.json").read_text()
    return json.loads(text)


# ----------------------------------------------------------------------------------------
# diffusers -> LDM key mapping (our own; diffusers ships only the other direction)
# ----------------------------------------------------------------------------------------

_UNET_FIXED = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_RESNET_RENAMES = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
_CONTROLNET_FIXED = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0",
    "controlnet_cond_embedding.conv_in": "input_hint_block.0",
    "controlnet_mid_block": "middle_block_out.0",
}


def _split_param(key: str) -> tuple[str, str]:
    module, _, param = key.rpartition(".")
    return module, param


def _resnet_to_ldm(rest: str) -> str:
    head, _, tail = rest.partition(".")
    if head not in _RESNET_RENAMES:
        raise CheckpointFormatError(f"Unexpected resnet parameter {rest!r}.")
    return f"{_RESNET_RENAMES[head]}.{tail}"


def unet_key_to_ldm(key: str, config: Mapping[str, Any]) -> str:
    """Maps one diffusers UNet (or ControlNet trunk) key to its LDM name (no prefix).

    Args:
        key (`str`): A diffusers key such as ``"down_blocks.0.resnets.1.conv1.weight"``; a
            module name followed by a fake ``.weight`` works too.
        config (`Mapping`): The UNet's diffusers config (``layers_per_block``,
            ``up_block_types``).

    Returns:
        The LDM key, e.g. ``"input_blocks.2.0.in_layers.2.weight"``.

    Raises:
        CheckpointFormatError: the key has no SD1.x counterpart.
    """
    per_block = int(config["layers_per_block"])
    module, param = _split_param(key)
    if module in _UNET_FIXED:
        return f"{_UNET_FIXED[module]}.{param}"
    m = re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key)
    if m:
        block, kind, layer, rest = int(m[1]), m[2], int(m[3]), m[4]
        index = 1 + block * (per_block + 1) + layer
        if kind == "resnets":
            return f"input_blocks.{index}.0.{_resnet_to_ldm(rest)}"
        return f"input_blocks.{index}.1.{rest}"
    m = re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key)
    if m:
        return f"input_blocks.{(int(m[1]) + 1) * (per_block + 1)}.0.op.{m[2]}"
    m = re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", key)
    if m:
        return f"middle_block.{2 * int(m[1])}.{_resnet_to_ldm(m[2])}"
    m = re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key)
    if m:
        return f"middle_block.1.{m[1]}"
    # Up blocks have one layer more than down blocks (they also consume the skip of the
    # downsampler).
    m = re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key)
    if m:
        block, kind, layer, rest = int(m[1]), m[2], int(m[3]), m[4]
        index = block * (per_block + 1) + layer
        if kind == "resnets":
            return f"output_blocks.{index}.0.{_resnet_to_ldm(rest)}"
        return f"output_blocks.{index}.1.{rest}"
    m = re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key)
    if m:
        block = int(m[1])
        index = block * (per_block + 1) + per_block
        # The upsampler follows the attention layer when the block has one.
        slot = 2 if "CrossAttn" in config["up_block_types"][block] else 1
        return f"output_blocks.{index}.{slot}.conv.{m[2]}"
    raise CheckpointFormatError(f"UNet key {key!r} has no SD1.x (LDM) counterpart.")


def unet_to_ldm(state: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Converts a diffusers UNet state dict to LDM keys (``model.diffusion_model.*``)."""
    return {UNET_PREFIX + unet_key_to_ldm(k, config): v for k, v in state.items()}


def controlnet_key_to_ldm(key: str, config: Mapping[str, Any]) -> str:
    """Maps one diffusers ControlNet key to its LDM name (no ``control_model.`` prefix)."""
    module, param = _split_param(key)
    if module in _CONTROLNET_FIXED:
        return f"{_CONTROLNET_FIXED[module]}.{param}"
    m = re.fullmatch(r"controlnet_cond_embedding\.blocks\.(\d+)", module)
    if m:
        return f"input_hint_block.{2 * (int(m[1]) + 1)}.{param}"
    if module == "controlnet_cond_embedding.conv_out":
        # LDM's hint block is a Sequential of convs and SiLUs; the last conv sits after
        # conv_in + every block (each followed by an activation).
        n_blocks = 2 * (len(config.get("conditioning_embedding_out_channels", (16, 32, 96, 256))) - 1)
        return f"input_hint_block.{2 * (n_blocks + 1)}.{param}"
    m = re.fullmatch(r"controlnet_down_blocks\.(\d+)", module)
    if m:
        return f"zero_convs.{m[1]}.0.{param}"
    if key.startswith("up_blocks.") or module in ("conv_norm_out", "conv_out"):
        raise CheckpointFormatError(f"ControlNet key {key!r} belongs to a UNet, not a ControlNet.")
    return unet_key_to_ldm(key, config)


def vae_key_to_ldm(key: str, config: Mapping[str, Any]) -> str:
    """Maps one diffusers AutoencoderKL key to its LDM name (no ``first_stage_model.``)."""
    n_up = len(config["up_block_types"])
    m = re.fullmatch(r"(encoder|decoder)\.conv_norm_out\.(.+)", key)
    if m:
        return f"{m[1]}.norm_out.{m[2]}"
    m = re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key)
    if m:
        return f"encoder.down.{m[1]}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
    m = re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key)
    if m:
        return f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
    # LDM numbers the decoder's up blocks from the lowest resolution upwards, in reverse.
    m = re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key)
    if m:
        return f"decoder.up.{n_up - 1 - int(m[1])}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
    m = re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key)
    if m:
        return f"decoder.up.{n_up - 1 - int(m[1])}.upsample.conv.{m[2]}"
    m = re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key)
    if m:
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3]}"
    m = re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(.+)", key)
    if m:
        name = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}[m[2]]
        return f"{m[1]}.mid.attn_1.{name}.{m[3]}"
    if re.fullmatch(r"(encoder|decoder)\.(conv_in|conv_out)\.(weight|bias)|(post_)?quant_conv\.(weight|bias)", key):
        return key
    raise CheckpointFormatError(f"VAE key {key!r} has no SD1.x (LDM) counterpart.")


def vae_to_ldm(
    state: Mapping[str, torch.Tensor], config: Mapping[str, Any], prefix: str = VAE_PREFIX
) -> dict[str, torch.Tensor]:
    """Converts a diffusers VAE state dict to LDM keys.

    The mid-block attention of the LDM VAE uses 1x1 convolutions where diffusers uses
    linear layers, so those weights gain two trailing singleton dimensions.
    """
    out = {}
    for key, value in state.items():
        ldm = vae_key_to_ldm(key, config)
        if ".mid.attn_1." in ldm and ldm.endswith(".weight") and value.ndim == 2:
            value = value[:, :, None, None]
        out[prefix + ldm] = value
    return out


def clip_to_ldm(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Converts a transformers CLIPTextModel state dict to LDM keys.

    Accepts both the flat key layout of transformers >= 5.6 and the older one with a
    ``text_model.`` level.
    """
    return {CLIP_TEXT_PREFIX + k.removeprefix("text_model."): v for k, v in state.items()}


# ----------------------------------------------------------------------------------------
# Saving
# ----------------------------------------------------------------------------------------


#: Config entries that describe where a config came from, not the model; some are sets
#: (random order), so they would make files non-deterministic.
_VOLATILE_CONFIG_KEYS = ("_use_default_values", "_name_or_path", "_commit_hash")


def _module_config(module: Any) -> dict[str, Any]:
    config = module.config
    config = dict(config.to_dict() if hasattr(config, "to_dict") else config)
    return {k: v for k, v in config.items() if k not in _VOLATILE_CONFIG_KEYS}


def sort_safetensors_metadata(path: Path | str) -> None:
    """Rewrites a safetensors header with its ``__metadata__`` keys sorted, in place.

    The safetensors writer serialises metadata from a hash map, so the order (and the
    file's bytes) varies between runs; sorting makes files reproducible. Tensor data and
    the header length are unchanged.
    """
    with open(path, "r+b") as f:
        size = int.from_bytes(f.read(8), "little")
        raw = f.read(size)
        header = json.loads(raw)
        if "__metadata__" in header:
            header = {
                "__metadata__": dict(sorted(header["__metadata__"].items())),
                **{k: v for k, v in header.items() if k != "__metadata__"},
            }
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        if len(text) > size:  # cannot happen for a reordering; keep the file as it is
            return
        f.seek(8)
        f.write(text + b" " * (size - len(text)))


def _to_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=lambda o: list(o) if isinstance(o, tuple) else str(o))


def _cpu_contiguous(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # NOTE: clone: safetensors refuses tensors that share storage, and reshaped views do.
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def save_single_file(
    components: Mapping[str, Any],
    path: Path | str,
    *,
    scheduler_config: Mapping[str, Any] | None = None,
    extra_metadata: Mapping[str, str] | None = None,
) -> Path:
    """Writes a UNet + VAE + CLIP text encoder as one LDM-layout ``.safetensors`` file.

    Args:
        components (`Mapping`): ``{"unet": UNet2DConditionModel, "vae": AutoencoderKL,
            "text_encoder": CLIPTextModel}``; ``"scheduler"`` may hold a scheduler (its
            config is stored).
        path (`Path`): Output file (``.safetensors``).
        scheduler_config (`Mapping`, *optional*): Scheduler config to store; overrides
            ``components["scheduler"]``.
        extra_metadata (`Mapping[str, str]`, *optional*): More ``__metadata__`` entries.

    Returns:
        ``path``.

    Raises:
        ValueError: a component is missing or the path is not ``.safetensors``.
        CheckpointFormatError: a module has parameters with no SD1.x counterpart.
    """
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != constants.SAFETENSORS_SUFFIX:
        raise ValueError(f"Single-file checkpoints are written as .safetensors, got {path.name!r}.")
    missing = [name for name in ("unet", "vae", "text_encoder") if name not in components]
    if missing:
        raise ValueError(f"save_single_file needs unet, vae and text_encoder; missing: {', '.join(missing)}.")
    unet, vae, text_encoder = components["unet"], components["vae"], components["text_encoder"]
    configs = {
        "unet": _module_config(unet),
        "vae": _module_config(vae),
        "text_encoder": _module_config(text_encoder),
    }
    if scheduler_config is None and components.get("scheduler") is not None:
        scheduler_config = _module_config(components["scheduler"])
    if scheduler_config is not None:
        configs["scheduler"] = dict(scheduler_config)

    state: dict[str, torch.Tensor] = {}
    state.update(unet_to_ldm(unet.state_dict(), configs["unet"]))
    state.update(vae_to_ldm(vae.state_dict(), configs["vae"]))
    state.update(clip_to_ldm(text_encoder.state_dict()))
    metadata = {
        "format": "pt",
        constants.SINGLE_FILE_FORMAT_KEY: constants.SINGLE_FILE_FORMAT_SD15,
        constants.SINGLE_FILE_CONFIGS_KEY: _to_json(configs),
        **(extra_metadata or {}),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(_cpu_contiguous(state), str(tmp), metadata=metadata)
    sort_safetensors_metadata(tmp)
    tmp.replace(path)
    logger.info("Wrote single-file checkpoint %s (%d tensors)", path, len(state))
    return path


def save_controlnet_single_file(controlnet: Any, path: Path | str) -> Path:
    """Writes a diffusers ControlNet as an LDM-layout file (``control_model.*`` keys).

    Args:
        controlnet (`ControlNetModel`): The model to save.
        path (`Path`): Output ``.safetensors`` file.

    Returns:
        ``path``.
    """
    from safetensors.torch import save_file

    path = Path(path)
    config = _module_config(controlnet)
    state = {CONTROLNET_PREFIX + controlnet_key_to_ldm(k, config): v for k, v in controlnet.state_dict().items()}
    metadata = {
        "format": "pt",
        constants.SINGLE_FILE_FORMAT_KEY: constants.SINGLE_FILE_FORMAT_CONTROLNET,
        constants.SINGLE_FILE_CONFIGS_KEY: _to_json({"controlnet": config}),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(_cpu_contiguous(state), str(path), metadata=metadata)
    sort_safetensors_metadata(path)
    return path


def save_vae_file(vae: Any, path: Path | str) -> Path:
    """Writes a VAE alone in LDM layout without prefix, like files in ``models/vae``."""
    from safetensors.torch import save_file

    path = Path(path)
    config = _module_config(vae)
    state = vae_to_ldm(vae.state_dict(), config, prefix="")
    metadata = {"format": "pt", constants.SINGLE_FILE_CONFIGS_KEY: _to_json({"vae": config})}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(_cpu_contiguous(state), str(path), metadata=metadata)
    sort_safetensors_metadata(path)
    return path


# ----------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------


def read_metadata(path: Path | str) -> dict[str, str]:
    """Returns a safetensors file's ``__metadata__`` (empty for pickles)."""
    path = Path(path)
    if path.suffix.lower() != constants.SAFETENSORS_SUFFIX:
        return {}
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointFormatError(f"{path} is not a readable safetensors file: {exc}") from exc


def read_keys(path: Path | str) -> list[str]:
    """Lists a checkpoint's tensor names (safetensors: without reading any tensor)."""
    path = Path(path)
    if path.suffix.lower() == constants.SAFETENSORS_SUFFIX:
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                return list(f.keys())
        except Exception as exc:
            raise CheckpointFormatError(f"{path} is not a readable safetensors file: {exc}") from exc
    return list(read_state_dict(path))


def read_state_dict(path: Path | str, prefixes: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """Reads tensors from a ``.safetensors`` or pickled ``.ckpt/.pt/.pth/.bin`` file.

    Args:
        path (`Path`): The file.
        prefixes (`Iterable[str]`, *optional*): Keep only keys starting with one of these;
            for safetensors only those tensors are read from disk.

    Returns:
        Key -> tensor (CPU).

    Raises:
        CheckpointFormatError: the file cannot be parsed.
    """
    path = Path(path)
    wanted = tuple(prefixes) if prefixes is not None else None
    if path.suffix.lower() == constants.SAFETENSORS_SUFFIX:
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                keys = [k for k in f.keys() if wanted is None or k.startswith(wanted)]
                return {k: f.get_tensor(k) for k in keys}
        except Exception as exc:
            raise CheckpointFormatError(f"{path} is not a readable safetensors file: {exc}") from exc
    try:
        # NOTE: weights_only=True: a .ckpt is a pickle and may come from anywhere.
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointFormatError(
            f"{path} could not be loaded as a (weights-only) torch checkpoint: {exc}. "
            "Convert it to .safetensors if it holds more than tensors."
        ) from exc
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CheckpointFormatError(f"{path} holds a {type(obj).__name__}, not a state dict.")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor) and (wanted is None or k.startswith(wanted))}


def stored_configs(metadata: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """Parses the diffusers configs that :func:`save_single_file` stored (or ``{}``)."""
    raw = metadata.get(constants.SINGLE_FILE_CONFIGS_KEY)
    if not raw:
        return {}
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise CheckpointFormatError(f"Corrupt {constants.SINGLE_FILE_CONFIGS_KEY} metadata: {exc}") from exc


def check_sd15_checkpoint(keys: Iterable[str], path: Path | str) -> None:
    """Raises a helpful error unless ``keys`` look like a full SD1.x LDM checkpoint.

    Raises:
        CheckpointFormatError: naming the family that was detected instead.
    """
    keys = list(keys)
    has = lambda prefix: any(k.startswith(prefix) for k in keys)  # noqa: E731
    if has("conditioner.embedders."):
        raise CheckpointFormatError(f"{path} is an SDXL checkpoint; only SD1.x checkpoints are supported.")
    if has("cond_stage_model.model."):
        raise CheckpointFormatError(f"{path} is an SD2.x checkpoint (OpenCLIP text encoder); only SD1.x is supported.")
    if has("model.diffusion_model.") and not has("model.diffusion_model.input_blocks."):
        raise CheckpointFormatError(f"{path} has a diffusion model that is not an SD1.x UNet (DiT/MMDiT?).")
    if not has(UNET_PREFIX):
        if has("down_blocks.") or has("unet."):
            raise CheckpointFormatError(
                f"{path} has diffusers-layout keys; put diffusers models in a folder with model_index.json."
            )
        if has("control_model.") or has("input_hint_block.") or has("zero_convs."):
            raise CheckpointFormatError(f"{path} is a ControlNet; put it in models/controlnet.")
        if has("lora_") or any(".lora_" in k for k in keys):
            raise CheckpointFormatError(f"{path} is a LoRA; put it in models/loras.")
        raise CheckpointFormatError(f"{path} is not a Stable Diffusion 1.x checkpoint: no {UNET_PREFIX}* keys.")


# ----------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------


def realign_(model: torch.nn.Module, alignment: int = 64) -> torch.nn.Module:
    """Copies parameters and buffers whose memory is not ``alignment``-byte aligned.

    Tensors read from a file can start at any offset; CPU kernels then take other SIMD
    paths and results differ in the last bits (measured: 2.5e-6 on a UNet output) from
    the same weights loaded another way. Fresh torch allocations are 64-byte aligned, so
    after this every load path computes bit-identical outputs.

    Returns:
        ``model`` (modified in place).
    """
    with torch.no_grad():
        for tensor in list(model.parameters()) + list(model.buffers()):
            if tensor.device.type == "cpu" and tensor.numel() and tensor.data_ptr() % alignment:
                tensor.data = tensor.data.clone()
    return model


def _materialize(model: torch.nn.Module, state: Mapping[str, torch.Tensor], what: str, path: Path) -> torch.nn.Module:
    """Loads ``state`` into a meta-device model (assigning tensors) with clear errors."""
    state = {k: v for k, v in state.items() if not k.endswith(_IGNORED_SUFFIXES)}
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(state) & set(expected))
        if tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        if mismatched:
            parts.append(f"{len(mismatched)} with other shapes (e.g. {'; '.join(mismatched[:2])})")
        raise CheckpointFormatError(
            f"The {what} in {path} does not match its config: {'; '.join(parts)}. "
            "Is this an SD1.x checkpoint (or one saved by genserve with its configs)?"
        )
    model.load_state_dict(dict(state), strict=True, assign=True)
    for name, buf in list(model.named_buffers()):
        if buf.is_meta:
            if name.endswith("position_ids"):
                module_name, _, attr = name.rpartition(".")
                module = model.get_submodule(module_name)
                setattr(module, attr, torch.arange(buf.shape[-1]).expand(buf.shape))
            else:
                raise CheckpointFormatError(f"Buffer {name} of the {what} was not initialised.")
    return realign_(model)


def build_unet(config: Mapping[str, Any], diffusers_state: Mapping[str, torch.Tensor], path: Path):
    """Creates a UNet2DConditionModel from a config and a diffusers-key state dict."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        model = UNet2DConditionModel.from_config(dict(config))
    return _materialize(model, diffusers_state, "UNet", path)


def build_vae(config: Mapping[str, Any], diffusers_state: Mapping[str, torch.Tensor], path: Path):
    """Creates an AutoencoderKL from a config and a diffusers-key state dict."""
    from diffusers import AutoencoderKL

    with torch.device("meta"):
        model = AutoencoderKL.from_config(dict(config))
    return _materialize(model, diffusers_state, "VAE", path)


def build_controlnet(config: Mapping[str, Any], diffusers_state: Mapping[str, torch.Tensor], path: Path):
    """Creates a ControlNetModel from a config and a diffusers-key state dict."""
    from diffusers import ControlNetModel

    with torch.device("meta"):
        model = ControlNetModel.from_config(dict(config))
    return _materialize(model, diffusers_state, "ControlNet", path)


def build_text_encoder(config: Mapping[str, Any], diffusers_state: Mapping[str, torch.Tensor], path: Path):
    """Creates a CLIPTextModel from a config dict and a (flat-key) state dict."""
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(**{k: v for k, v in config.items() if k not in ("architectures", "transformers_version")})
    with torch.device("meta"):
        model = CLIPTextModel(cfg)
    state = {k.removeprefix("text_model."): v for k, v in diffusers_state.items()}
    return _materialize(model, state, "CLIP text encoder", path)


def _infer_unet_config(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    config = default_config("unet")
    conv_in = state.get(UNET_PREFIX + "input_blocks.0.0.weight")
    if conv_in is not None and conv_in.shape[1] != config["in_channels"]:
        # SD1.5 inpainting (9 channels) and instruct-pix2pix (8) differ only here.
        config["in_channels"] = int(conv_in.shape[1])
    to_k = state.get(UNET_PREFIX + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight")
    if to_k is not None and to_k.shape[1] != config["cross_attention_dim"]:
        raise CheckpointFormatError(
            f"UNet cross-attention width is {to_k.shape[1]}, SD1.x uses 768: not an SD1.x checkpoint."
        )
    return config


def load_component(path: Path | str, component: str, dtype: torch.dtype = torch.float32) -> Any:
    """Loads one component of a single-file SD1.x checkpoint.

    Args:
        path (`Path`): A ``.safetensors`` / ``.ckpt`` full checkpoint.
        component (`str`): ``"unet"``, ``"vae"`` or ``"text_encoder"``.
        dtype (`torch.dtype`, *optional*, defaults to float32): Parameter dtype.

    Returns:
        The diffusers/transformers module in eval mode on the CPU.

    Raises:
        CheckpointFormatError: the file is not an SD1.x checkpoint or does not match its
            config.
        ValueError: unknown ``component``.
    """
    from diffusers.loaders.single_file_utils import (
        convert_ldm_clip_checkpoint,
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
    )

    path = Path(path)
    if component not in COMPONENT_PREFIXES:
        raise ValueError(f"Unknown component {component!r}; expected one of {', '.join(COMPONENT_PREFIXES)}.")
    metadata = read_metadata(path)
    configs = stored_configs(metadata)
    prefix = COMPONENT_PREFIXES[component]
    if path.suffix.lower() == constants.SAFETENSORS_SUFFIX:
        check_sd15_checkpoint(read_keys(path), path)
        state = read_state_dict(path, prefixes=[prefix])
    else:  # a pickle is read whole anyway: read it once
        full = read_state_dict(path)
        check_sd15_checkpoint(full.keys(), path)
        state = {k: v for k, v in full.items() if k.startswith(prefix)}
    if not state:
        raise CheckpointFormatError(f"{path} has no {COMPONENT_PREFIXES[component]}* keys: no {component} inside.")

    if component == "unet":
        config = configs.get("unet") or _infer_unet_config(state)
        converted = convert_ldm_unet_checkpoint(state, config)
        model = build_unet(config, converted, path)
    elif component == "vae":
        config = configs.get("vae") or default_config("vae")
        converted = convert_ldm_vae_checkpoint(state, config)
        model = build_vae(config, converted, path)
    else:
        config = configs.get("text_encoder") or default_config("text_encoder")
        converted = convert_ldm_clip_checkpoint(state)
        model = build_text_encoder(config, converted, path)
    return _cast(model, dtype).eval()


def _cast(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    # NOTE: only cast when needed: diffusers warns on every .to(dtype) call.
    if any(p.dtype != dtype for p in model.parameters()):
        model = model.to(dtype=dtype)
    return model


def load_vae_file(path: Path | str, dtype: torch.dtype = torch.float32) -> Any:
    """Loads a standalone VAE file (``models/vae``): LDM keys with or without prefix,
    or diffusers keys.

    Raises:
        CheckpointFormatError: the file is not an SD-style KL VAE.
    """
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    path = Path(path)
    config = stored_configs(read_metadata(path)).get("vae") or default_config("vae")
    state = read_state_dict(path)
    if "encoder.down_blocks.0.resnets.0.conv1.weight" in state:
        converted = dict(state)
    elif any(k.startswith(VAE_PREFIX) for k in state) or "encoder.conv_in.weight" in state:
        converted = convert_ldm_vae_checkpoint(state, config)
    else:
        raise CheckpointFormatError(f"{path} does not look like a VAE: no encoder/decoder keys.")
    return _cast(build_vae(config, converted, path), dtype).eval()


def load_controlnet_file(path: Path | str, dtype: torch.dtype = torch.float32) -> Any:
    """Loads a single-file ControlNet (LDM ``control_model.*`` keys, bare LDM keys, or
    diffusers keys), with the stored config or SD1.5's default.

    Raises:
        CheckpointFormatError: the file is not an SD1.x ControlNet.
    """
    from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint

    path = Path(path)
    config = stored_configs(read_metadata(path)).get("controlnet") or default_config("controlnet")
    state = read_state_dict(path)
    if not any(k.startswith(("control_model.", "time_embed.", "time_embedding.")) for k in state):
        raise CheckpointFormatError(f"{path} does not look like a ControlNet (no control_model.* keys).")
    if any(k.startswith("control_model.") for k in state):
        state = {k: v for k, v in state.items() if k.startswith("control_model.")}
    converted = convert_controlnet_checkpoint(state, config)
    return _cast(build_controlnet(config, converted, path), dtype).eval()


@dataclass
class SingleFileComponents:
    """What :func:`load_single_file` returns; components not asked for are ``None``."""

    unet: UNet2DConditionModel | None = None
    vae: AutoencoderKL | None = None
    text_encoder: CLIPTextModel | None = None
    scheduler_config: dict[str, Any] = field(default_factory=dict)
    configs: dict[str, dict[str, Any]] = field(default_factory=dict)


def scheduler_config_of(path: Path | str) -> dict[str, Any]:
    """Returns the stored scheduler config of a single file, else SD1.5's default."""
    return dict(stored_configs(read_metadata(path)).get("scheduler") or default_config("scheduler"))


def load_single_file(
    path: Path | str,
    components: Iterable[str] = ("unet", "vae", "text_encoder"),
    dtype: torch.dtype = torch.float32,
) -> SingleFileComponents:
    """Loads a single-file SD1.x checkpoint into diffusers/transformers modules.

    Args:
        path (`Path`): The ``.safetensors``/``.ckpt`` file.
        components (`Iterable[str]`, *optional*): Which of ``"unet"``, ``"vae"``,
            ``"text_encoder"`` to load; defaults to all three.
        dtype (`torch.dtype`, *optional*, defaults to float32): Parameter dtype.

    Returns:
        A :class:`SingleFileComponents`.

    Raises:
        CheckpointFormatError: not an SD1.x checkpoint.
    """
    out = SingleFileComponents(scheduler_config=scheduler_config_of(path), configs=stored_configs(read_metadata(path)))
    for name in components:
        setattr(out, name, load_component(path, name, dtype=dtype))
    return out
