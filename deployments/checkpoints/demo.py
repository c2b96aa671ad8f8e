"""The demo bundle: SD1.5-architecture models with reduced widths and seeded random weights.

It lets the whole system run on a laptop CPU with no downloads, through the same
loading code as real checkpoints. What :func:`init_demo` writes into the models folder:

* ``checkpoints/genserve-demo-sd15/``: a diffusers folder (``model_index.json``,
  ``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``) that plain
  ``diffusers.StableDiffusionPipeline.from_pretrained`` also loads;
* ``checkpoints/genserve-demo-sd15.safetensors``: the same weights as one LDM-layout
  file, as ComfyUI users keep them;
* ``controlnet/genserve-demo-controlnet/``: a ControlNet copied from the UNet (as real
  ControlNets start), whose zero convolutions get small seeded non-zero weights so the
  control image visibly changes the result;
* ``loras/genserve-demo-lora.safetensors``: a rank-4 kohya-style LoRA on the UNet's
  attention projections and the text encoder's q/k/v.

The layout is SD1.5's (same blocks, layers, key names, 77-token CLIP with the real
49408-token vocabulary); only widths differ, sized so that a 256x256, 20-step image with
CFG takes about 1.5 s on 2 CPU cores. Outputs look like noise and patterns: the weights
are random. Every tensor is drawn from its own generator seeded by ``(seed, name)``, so
the files are byte-identical for the same seed.

Command line::

    python -m deployments.checkpoints.demo --models-dir models [--seed 0] [--force]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deployments import constants
from deployments.checkpoints.layout import ModelsDir, default_models_dir
from deployments.checkpoints.lora import kohya_name
from deployments.checkpoints.single_file import default_config, save_single_file, sort_safetensors_metadata
from deployments.checkpoints.tokenizer import write_clip_tokenizer

logger = logging.getLogger(__name__)

#: Bump when the demo's architecture or init changes (written into the marker).
DEMO_VERSION = 1

DEMO_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 32,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    # SD1.5: (320, 640, 1280, 1280). Depth (layers, blocks) is kept, so key names match.
    "block_out_channels": [32, 64, 128, 128],
    "layers_per_block": 2,
    # NOTE: diffusers' "attention_head_dim" is SD1.5's number of heads (8 there). 4 heads
    # instead of 8 halves the cost of the 32x32 self-attention, which dominates on CPU
    # (measured: ~75 ms vs ~120 ms per batch-2 UNet call on 2 cores).
    "attention_head_dim": 4,
    "cross_attention_dim": 256,
    "norm_num_groups": 32,
    "use_linear_projection": False,
}

DEMO_VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [32, 64, 128, 128],  # SD1.5: (128, 256, 512, 512)
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 256,
    "scaling_factor": 0.18215,
}

DEMO_TEXT_CONFIG: dict[str, Any] = {
    "vocab_size": constants.CLIP_VOCAB_SIZE,
    "max_position_embeddings": constants.CLIP_MAX_LENGTH,
    "hidden_size": 256,  # SD1.5 (CLIP ViT-L/14): 768
    "intermediate_size": 1024,
    "num_hidden_layers": 4,  # SD1.5: 12
    "num_attention_heads": 4,
    "projection_dim": 256,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "bos_token_id": constants.CLIP_BOS_TOKEN_ID,
    "eos_token_id": constants.CLIP_EOS_TOKEN_ID,
    "pad_token_id": constants.CLIP_EOS_TOKEN_ID,
}

#: Default SD1.5 ControlNet hint encoder widths (kept: the LDM key layout depends on them).
DEMO_CONTROLNET_EMBEDDING_CHANNELS = (16, 32, 96, 256)
#: Std of the ControlNet zero convs, relative to a fan-in-scaled init. Real ControlNets
#: start at exactly zero; small non-zero values make the control image matter.
DEMO_ZERO_CONV_GAIN = 0.3
#: Gain of the hint encoder's convs. Eight conv+SiLU layers at gain 1 shrink the signal
#: ~30x, which made every control image give the same result; at 2.0, two different hint
#: images change the UNet output by ~30% of its norm (measured).
DEMO_HINT_GAIN = 2.0
DEMO_LORA_RANK = 4
#: Std of the LoRA up weights relative to fan-in scaling: large enough to be visible.
DEMO_LORA_GAIN = 0.5


@dataclass
class DemoComponents:
    """The demo models in memory (what :func:`build_demo_components` returns)."""

    unet: Any
    vae: Any
    text_encoder: Any
    controlnet: Any
    lora: dict[str, torch.Tensor]
    scheduler_config: dict[str, Any]


def _tensor_seed(seed: int, namespace: str, name: str) -> int:
    digest = hashlib.sha256(f"{seed}:{namespace}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _randn(shape: torch.Size | tuple[int, ...], seed: int, namespace: str, name: str) -> torch.Tensor:
    generator = torch.Generator().manual_seed(_tensor_seed(seed, namespace, name))
    return torch.randn(tuple(shape), generator=generator, dtype=torch.float32)


def seeded_init_(
    model: nn.Module,
    seed: int,
    namespace: str,
    include: Callable[[str], bool] | None = None,
    gain: Callable[[str], float] | None = None,
) -> nn.Module:
    """Overwrites parameters with deterministic values drawn per ``(seed, name)``.

    Independent of the libraries' own init order, so the same seed gives the same bytes.
    Norm layers get weight 1 / bias 0, embeddings N(0, 0.02), other weights
    N(0, gain/sqrt(fan_in)), biases N(0, 0.02).

    Args:
        model (`nn.Module`): The module to initialise in place.
        seed (`int`): The bundle's seed.
        namespace (`str`): Separates components (``"unet"``, ``"vae"``, ...).
        include (`Callable[[str], bool]`, *optional*): Only parameters whose full name
            passes are touched.
        gain (`Callable[[str], float]`, *optional*): Per-parameter weight gain (default 1).

    Returns:
        ``model``.
    """
    with torch.no_grad():
        for module_name, module in model.named_modules():
            for param_name, param in module.named_parameters(recurse=False):
                full = f"{module_name}.{param_name}" if module_name else param_name
                if include is not None and not include(full):
                    continue
                if isinstance(module, (nn.LayerNorm, nn.GroupNorm)):
                    param.fill_(1.0 if param_name == "weight" else 0.0)
                    continue
                noise = _randn(param.shape, seed, namespace, full)
                if isinstance(module, nn.Embedding) or param.ndim < 2:
                    param.copy_(noise * 0.02)
                else:
                    fan_in = param[0].numel()
                    scale = (gain(full) if gain else 1.0) / fan_in**0.5
                    param.copy_(noise * scale)
    return model


def build_demo_components(seed: int = 0) -> DemoComponents:
    """Builds the demo models in memory.

    Args:
        seed (`int`, *optional*, defaults to 0): Seed of every weight.

    Returns:
        The :class:`DemoComponents`.
    """
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    unet = seeded_init_(UNet2DConditionModel.from_config(DEMO_UNET_CONFIG), seed, "unet")
    vae = seeded_init_(AutoencoderKL.from_config(DEMO_VAE_CONFIG), seed, "vae")
    text_encoder = seeded_init_(CLIPTextModel(CLIPTextConfig(**DEMO_TEXT_CONFIG)), seed, "text_encoder")

    # A ControlNet starts as a copy of the UNet's encoder; only its own parts are new.
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=DEMO_CONTROLNET_EMBEDDING_CHANNELS)
    zero_convs = ("controlnet_down_blocks.", "controlnet_mid_block.", "controlnet_cond_embedding.conv_out.")
    seeded_init_(
        controlnet,
        seed,
        "controlnet",
        include=lambda name: name.startswith("controlnet_"),
        gain=lambda name: (
            DEMO_ZERO_CONV_GAIN
            if name.startswith(zero_convs)
            else (DEMO_HINT_GAIN if name.startswith("controlnet_cond_embedding.") else 1.0)
        ),
    )
    for model in (unet, vae, text_encoder, controlnet):
        model.eval().requires_grad_(False)
    return DemoComponents(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        controlnet=controlnet,
        lora=build_demo_lora(unet, text_encoder, seed),
        scheduler_config=default_config("scheduler"),
    )


def build_demo_lora(
    unet: nn.Module, text_encoder: nn.Module, seed: int, rank: int = DEMO_LORA_RANK
) -> dict[str, torch.Tensor]:
    """Builds a kohya-style LoRA state dict for the demo UNet and text encoder.

    Targets the UNet attention projections (``attn1``/``attn2`` ``to_q/k/v/out.0``) and
    the text encoder's ``q/k/v_proj``.

    Returns:
        ``{"lora_unet_..._to_q.lora_down.weight": ..., ".lora_up.weight", ".alpha"}``.
    """
    state: dict[str, torch.Tensor] = {}
    targets: list[tuple[str, str, nn.Module]] = []
    for name, module in unet.named_modules():
        if isinstance(module, nn.Linear) and name.endswith(
            tuple(f"{a}.{p}" for a in ("attn1", "attn2") for p in ("to_q", "to_k", "to_v", "to_out.0"))
        ):
            targets.append(("unet", name, module))
    for name, module in text_encoder.named_modules():
        if isinstance(module, nn.Linear) and name.endswith(
            ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
        ):
            targets.append(("text_encoder", name, module))
    for namespace, name, module in targets:
        base = kohya_name(name, namespace)
        out_f, in_f = module.weight.shape
        down = _randn((rank, in_f), seed, "lora", base + ".down") / in_f**0.5
        up = _randn((out_f, rank), seed, "lora", base + ".up") * DEMO_LORA_GAIN / rank**0.5
        state[base + ".lora_down.weight"] = down.contiguous()
        state[base + ".lora_up.weight"] = up.contiguous()
        state[base + ".alpha"] = torch.tensor(float(rank))
    return state


def _marker_text(seed: int, what: str) -> str:
    return (
        f"genserve demo bundle (version {DEMO_VERSION}, seed {seed})\n\n"
        f"This {what} has Stable Diffusion 1.5's architecture with reduced widths and SEEDED RANDOM\n"
        "weights. It is not a trained model: images look like noise and patterns. It exists so\n"
        "that genserve runs end to end on a CPU without downloading weights, through the same\n"
        "loading code as real checkpoints. Recreate it with\n\n"
        "    python -m deployments.checkpoints.demo --models-dir <models> --force\n\n"
        f"marker: {json.dumps({'genserve_demo': True, 'version': DEMO_VERSION, 'seed': seed})}\n"
    )


def _read_marker(folder: Path) -> dict[str, Any] | None:
    marker = folder / constants.DEMO_MARKER
    if not marker.is_file():
        return None
    for line in marker.read_text().splitlines():
        if line.startswith("marker: "):
            return json.loads(line.removeprefix("marker: "))
    return None


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def demo_paths(models: ModelsDir) -> list[Path]:
    """Returns the paths :func:`init_demo` writes, in a fixed order."""
    return [
        models.folder("checkpoints") / constants.DEMO_CHECKPOINT,
        models.folder("checkpoints") / constants.DEMO_CHECKPOINT_FILE,
        models.folder("controlnet") / constants.DEMO_CONTROLNET,
        models.folder("loras") / constants.DEMO_LORA,
    ]


def _write_diffusers_bundle(components: DemoComponents, folder: Path, seed: int) -> None:
    from diffusers import PNDMScheduler

    components.unet.save_pretrained(folder / "unet")
    components.vae.save_pretrained(folder / "vae")
    components.text_encoder.save_pretrained(folder / "text_encoder")
    write_clip_tokenizer(folder / "tokenizer")
    PNDMScheduler.from_config(components.scheduler_config).save_pretrained(folder / "scheduler")
    from diffusers import __version__ as diffusers_version

    model_index = {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": diffusers_version,
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "PNDMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    _write_text(folder / "model_index.json", json.dumps(model_index, indent=2, sort_keys=True) + "\n")
    _write_text(folder / constants.DEMO_MARKER, _marker_text(seed, "checkpoint"))


def _replace(tmp: Path, final: Path) -> None:
    if final.is_dir() and not final.is_symlink():
        shutil.rmtree(final)
    elif final.exists() or final.is_symlink():
        final.unlink()
    tmp.replace(final)


def init_demo(models_dir: ModelsDir | Path | str | None = None, seed: int = 0, force: bool = False) -> list[Path]:
    """Writes the deterministic demo bundle into a models folder.

    Args:
        models_dir (`ModelsDir | Path`, *optional*): The models root; defaults to
            ``$GENSERVE_MODELS_DIR`` or ``./models``.
        seed (`int`, *optional*, defaults to 0): Seed of every weight.
        force (`bool`, *optional*, defaults to False): Rewrite even if a complete bundle
            with this seed exists.

    Returns:
        The paths written by this call: all four of :func:`demo_paths`, or ``[]`` when a
        complete bundle with this seed was already there.

    Raises:
        FileExistsError: a bundle with another seed (or a non-demo model under a demo
            name) exists and ``force`` is False.
        deployments.checkpoints.tokenizer.ClipBpeUnavailableError: the CLIP vocabulary
            is neither local nor downloadable.
    """
    models = models_dir if isinstance(models_dir, ModelsDir) else ModelsDir(models_dir or default_models_dir())
    models.ensure()
    paths = demo_paths(models)
    ckpt_dir, ckpt_file, cn_dir, lora_file = paths
    if not force and all(p.exists() for p in paths):
        marker = _read_marker(ckpt_dir)
        if marker and marker.get("seed") == seed and marker.get("version") == DEMO_VERSION:
            logger.info("Demo bundle already present in %s (seed %d); use force=True to rewrite", models.root, seed)
            return []
    if not force:
        for p in paths:
            if p.is_dir() and _read_marker(p) is None:
                raise FileExistsError(f"{p} exists and is not a genserve demo model; refusing to overwrite it.")
        marker = _read_marker(ckpt_dir) if ckpt_dir.exists() else None
        if marker and (marker.get("seed") != seed or marker.get("version") != DEMO_VERSION):
            raise FileExistsError(
                f"A demo bundle with seed {marker.get('seed')} (version {marker.get('version')}) exists in "
                f"{models.root}; pass force=True (--force) to replace it with seed {seed}."
            )

    started = time.perf_counter()
    logger.info("Building the genserve demo bundle (seed %d) in %s", seed, models.root)
    components = build_demo_components(seed)
    logger.info("Built demo models in %.1fs; writing files", time.perf_counter() - started)

    tag = f".tmp-genserve-demo-{seed}"
    # 1. diffusers folder
    tmp_dir = ckpt_dir.with_name(ckpt_dir.name + tag)
    shutil.rmtree(tmp_dir, ignore_errors=True)
    _write_diffusers_bundle(components, tmp_dir, seed)
    _replace(tmp_dir, ckpt_dir)
    # 2. single file (save_single_file writes to a temp name and renames itself)
    save_single_file(
        {"unet": components.unet, "vae": components.vae, "text_encoder": components.text_encoder},
        ckpt_file,
        scheduler_config=components.scheduler_config,
        extra_metadata={"genserve.demo": _marker_text(seed, "checkpoint").splitlines()[-1]},
    )
    # 3. ControlNet folder
    tmp_cn = cn_dir.with_name(cn_dir.name + tag)
    shutil.rmtree(tmp_cn, ignore_errors=True)
    components.controlnet.save_pretrained(tmp_cn)
    _write_text(tmp_cn / constants.DEMO_MARKER, _marker_text(seed, "ControlNet"))
    _replace(tmp_cn, cn_dir)
    # 4. LoRA
    from safetensors.torch import save_file

    tmp_lora = lora_file.with_name(f".{lora_file.name}{tag}")
    save_file(
        components.lora,
        str(tmp_lora),
        metadata={"format": "pt", "genserve.demo": _marker_text(seed, "LoRA").splitlines()[-1]},
    )
    sort_safetensors_metadata(tmp_lora)
    _replace(tmp_lora, lora_file)
    logger.info("Demo bundle written in %.1fs: %s", time.perf_counter() - started, ", ".join(str(p) for p in paths))
    return paths


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: ``python -m deployments.checkpoints.demo``."""
    parser = argparse.ArgumentParser(
        description="Write genserve's demo model bundle (seeded random SD1.5-like weights)."
    )
    parser.add_argument(
        "--models-dir",
        type=Path,
        default=None,
        help=f"models root (default: ${constants.ENV_MODELS_DIR} or {constants.DEFAULT_MODELS_DIR})",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights (default 0)")
    parser.add_argument("--force", action="store_true", help="rewrite an existing bundle")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    written = init_demo(args.models_dir, seed=args.seed, force=args.force)
    models = ModelsDir(args.models_dir or default_models_dir())
    for path in demo_paths(models):
        logger.info("%s: %s", "written" if path in written else "already present", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
