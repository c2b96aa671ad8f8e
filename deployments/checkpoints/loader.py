"""Loads the models that workflow references name, with an LRU cache per kind.

A :class:`ModelLoader` turns :mod:`graphs.types` references (``ModelRef``, ``ClipRef``,
``VaeRef``, ``ControlNetRef``) into eval-mode torch modules with gradients off. A
checkpoint may be a diffusers folder (``model_index.json``) or a single LDM-layout file
(``.safetensors`` / ``.ckpt``); only the component asked for is read. LoRAs are merged
into copies of the cached base weights, so the base is never modified.

Usage::

    loader = ModelLoader(ModelsDir.from_env())
    unet = loader.unet(ModelRef("genserve-demo-sd15.safetensors",
                                loras=(LoraRef("genserve-demo-lora.safetensors", 0.8),)))
    tokenizer, text_encoder = loader.text_encoder(ClipRef("genserve-demo-sd15"))

Returned modules are shared between callers: treat them as read-only.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from deployments.checkpoints import single_file
from deployments.checkpoints.layout import ModelsDir
from deployments.checkpoints.lora import apply_lora, load_lora_file
from deployments.checkpoints.single_file import CheckpointFormatError, default_config
from deployments.checkpoints.tokenizer import load_clip_tokenizer, tokenizer_cache_dir
from graphs.types import ClipRef, ControlNetRef, LoraRef, ModelRef, VaeRef

if TYPE_CHECKING:  # NOTE: diffusers/transformers are imported lazily (slow imports).
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

logger = logging.getLogger(__name__)

#: Keys of the scheduler config that define the model's noise schedule (ComfyUI's
#: ``model_sampling``).
MODEL_SAMPLING_KEYS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "prediction_type")
_MODEL_SAMPLING_DEFAULTS = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
}


@dataclass
class CacheInfo:
    """Hit/miss counters of one of the loader's caches."""

    hits: int = 0
    misses: int = 0
    size: int = 0
    capacity: int = 0


class _LRU:
    """A small LRU map; not thread-safe on its own (the loader holds its lock)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.items: OrderedDict[Hashable, Any] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable) -> Any | None:
        if key in self.items:
            self.items.move_to_end(key)
            self.hits += 1
            return self.items[key]
        self.misses += 1
        return None

    def put(self, key: Hashable, value: Any) -> None:
        self.items[key] = value
        self.items.move_to_end(key)
        while len(self.items) > max(self.capacity, 0):
            self.items.popitem(last=False)

    def info(self) -> CacheInfo:
        return CacheInfo(self.hits, self.misses, len(self.items), self.capacity)


def _file_stamp(path: Path) -> tuple[str, int]:
    """Identity of a file or folder for cache keys: a rewritten file is reloaded."""
    target = path / "model_index.json" if (path / "model_index.json").is_file() else path
    target = target / "config.json" if target.is_dir() and (target / "config.json").is_file() else target
    try:
        return str(path.resolve()), target.stat().st_mtime_ns
    except OSError:
        return str(path.resolve()), 0


class ModelLoader:
    """Loads and caches UNets, text encoders, VAEs and ControlNets from a models folder.

    Construct with a :class:`~deployments.checkpoints.layout.ModelsDir` (tests point it at
    a temporary folder holding the demo bundle). One lock serialises loading, so several
    threads (e.g. a Serve replica's batch handler and its health check) may share a loader.

    Args:
        models_dir (`ModelsDir | Path`, *optional*): The models root; defaults to
            ``ModelsDir.from_env()``.
        device (`str | torch.device`, *optional*, defaults to ``"cpu"``): Where modules go.
        dtype (`torch.dtype`, *optional*, defaults to float32): Parameter dtype.
        cache_size (`int`, *optional*, defaults to 2): Models kept per kind (UNet, text
            encoder, VAE, ControlNet); LoRA variants count as their own entries.
    """

    def __init__(
        self,
        models_dir: ModelsDir | Path | str | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        cache_size: int = 2,
    ) -> None:
        if models_dir is None:
            models_dir = ModelsDir.from_env()
        self.models = models_dir if isinstance(models_dir, ModelsDir) else ModelsDir(models_dir)
        self.device = torch.device(device)
        self.dtype = dtype
        self._lock = threading.RLock()
        self._caches = {kind: _LRU(cache_size) for kind in ("unet", "text_encoder", "vae", "controlnet", "lora")}
        # LoRA files are small; keep more of them than big models.
        self._caches["lora"].capacity = max(cache_size, 8)
        logger.debug("ModelLoader(%s, device=%s, dtype=%s, cache_size=%d)", self.models, self.device, dtype, cache_size)

    # -- public API --------------------------------------------------------------------

    def unet(self, ref: ModelRef) -> UNet2DConditionModel:
        """Returns the UNet of ``ref.checkpoint`` with ``ref.loras`` merged in order.

        Args:
            ref (`ModelRef`): Checkpoint name (in ``models/checkpoints``) and LoRAs, whose
                ``strength_model`` applies.

        Returns:
            A ``UNet2DConditionModel`` in eval mode, gradients off.

        Raises:
            ModelNotFoundError: the checkpoint or a LoRA does not exist.
            CheckpointFormatError: the checkpoint is not SD1.x.
            LoraError: a LoRA does not fit the UNet.
        """
        path = self.models.resolve("checkpoints", ref.checkpoint)
        base_key = ("base", _file_stamp(path))

        def load_base() -> Any:
            return self._cached("unet", base_key, lambda: self._load_component(path, "unet"))

        if not ref.loras:
            return load_base()
        key = (base_key, tuple((l.name, l.strength_model) for l in ref.loras))
        return self._cached(
            "unet", key, lambda: self._with_loras(load_base(), ref.loras, "unet", lambda l: l.strength_model)
        )

    def text_encoder(self, ref: ClipRef) -> tuple[CLIPTokenizer, CLIPTextModel]:
        """Returns the CLIP tokenizer and text encoder of a checkpoint, LoRAs merged.

        Args:
            ref (`ClipRef`): Checkpoint name and LoRAs, whose ``strength_clip`` applies.

        Returns:
            ``(tokenizer, text_encoder)``; the encoder is in eval mode, gradients off.

        Raises:
            ModelNotFoundError: the checkpoint or a LoRA does not exist.
            CheckpointFormatError: the checkpoint is not SD1.x.
            ClipBpeUnavailableError: a single-file checkpoint needs the CLIP vocabulary,
                which is neither cached nor downloadable.
        """
        path = self.models.resolve("checkpoints", ref.checkpoint)
        base_key = ("base", _file_stamp(path))

        def load_base() -> tuple[Any, Any]:
            return self._cached("text_encoder", base_key, lambda: self._load_text_encoder(path))

        if not ref.loras:
            return load_base()

        def load() -> tuple[Any, Any]:
            tokenizer, encoder = load_base()
            return tokenizer, self._with_loras(encoder, ref.loras, "text_encoder", lambda l: l.strength_clip)

        key = (base_key, tuple((l.name, l.strength_clip) for l in ref.loras))
        return self._cached("text_encoder", key, load)

    def vae(self, ref: VaeRef) -> AutoencoderKL:
        """Returns a VAE: a standalone file from ``models/vae`` or a checkpoint's own.

        Args:
            ref (`VaeRef`): ``vae_file`` (wins when set) or ``checkpoint``.

        Returns:
            An ``AutoencoderKL`` in eval mode, gradients off.

        Raises:
            ValueError: neither ``vae_file`` nor ``checkpoint`` is set.
            ModelNotFoundError: the file does not exist.
            CheckpointFormatError: the file is not an SD-style VAE.
        """
        if ref.vae_file:
            path = self.models.resolve("vae", ref.vae_file)
            return self._cached("vae", ("file", _file_stamp(path)), lambda: self._load_vae_file(path))
        if not ref.checkpoint:
            raise ValueError("VaeRef needs either vae_file or checkpoint.")
        path = self.models.resolve("checkpoints", ref.checkpoint)
        return self._cached("vae", ("ckpt", _file_stamp(path)), lambda: self._load_component(path, "vae"))

    def controlnet(self, ref: ControlNetRef) -> ControlNetModel:
        """Returns a ControlNet from ``models/controlnet`` (diffusers folder or single file).

        Args:
            ref (`ControlNetRef`): The ControlNet's name.

        Returns:
            A ``ControlNetModel`` in eval mode, gradients off.

        Raises:
            ModelNotFoundError: the ControlNet does not exist.
            CheckpointFormatError: the file is not an SD1.x ControlNet.
        """
        path = self.models.resolve("controlnet", ref.name)
        return self._cached("controlnet", _file_stamp(path), lambda: self._load_controlnet(path))

    def model_sampling(self, checkpoint: str) -> dict[str, Any]:
        """Returns the noise-schedule part of a checkpoint's scheduler config.

        Args:
            checkpoint (`str`): A name in ``models/checkpoints``.

        Returns:
            ``{"num_train_timesteps", "beta_start", "beta_end", "beta_schedule",
            "prediction_type"}``; SD1.5's values where the checkpoint says nothing.

        Raises:
            ModelNotFoundError: the checkpoint does not exist.
        """
        path = self.models.resolve("checkpoints", checkpoint)
        if path.is_dir():
            config_path = path / "scheduler" / "scheduler_config.json"
            config = json.loads(config_path.read_text()) if config_path.is_file() else default_config("scheduler")
        else:
            config = single_file.scheduler_config_of(path)
        return {key: config.get(key, _MODEL_SAMPLING_DEFAULTS[key]) for key in MODEL_SAMPLING_KEYS}

    def lora_state(self, name: str) -> dict[str, torch.Tensor]:
        """Returns a LoRA file's tensors (cached).

        Raises:
            ModelNotFoundError: the LoRA does not exist in ``models/loras``.
        """
        path = self.models.resolve("loras", name)
        return self._cached("lora", _file_stamp(path), lambda: load_lora_file(path))

    def cache_info(self) -> dict[str, CacheInfo]:
        """Returns hit/miss counters per cache (``unet``, ``text_encoder``, ...)."""
        with self._lock:
            return {kind: cache.info() for kind, cache in self._caches.items()}

    def clear(self) -> None:
        """Drops every cached model."""
        with self._lock:
            for cache in self._caches.values():
                cache.items.clear()

    # -- internals ---------------------------------------------------------------------

    def _cached(self, kind: str, key: Hashable, load: Callable[[], Any]) -> Any:
        with self._lock:
            cache = self._caches[kind]
            value = cache.get(key)
            if value is None:
                started = time.perf_counter()
                value = load()
                cache.put(key, value)
                logger.debug("Loaded %s %s in %.2fs", kind, key, time.perf_counter() - started)
            return value

    def _prepare(self, model: Any) -> Any:
        if any(p.dtype != self.dtype for p in model.parameters()):
            model = model.to(dtype=self.dtype)
        if self.device.type != "cpu":
            model = model.to(self.device)
        single_file.realign_(model)  # same bits whatever the load path (see realign_)
        model.eval()
        model.requires_grad_(False)
        return model

    def _with_loras(
        self, base: Any, loras: tuple[LoraRef, ...], target: str, strength: Callable[[LoraRef], float]
    ) -> Any:
        model = base
        for lora in loras:
            model = apply_lora(model, self.lora_state(lora.name), target, strength(lora))
        return self._prepare(model) if loras else model

    def _check_diffusers_folder(self, path: Path) -> dict[str, Any]:
        index = json.loads((path / "model_index.json").read_text())
        if "text_encoder_2" in index or "XL" in str(index.get("_class_name", "")):
            raise CheckpointFormatError(f"{path} is an SDXL pipeline; only SD1.x checkpoints are supported.")
        for part in ("unet", "vae", "text_encoder"):
            if not (path / part).is_dir():
                raise CheckpointFormatError(f"{path} has no {part}/ folder; is it a Stable Diffusion 1.x pipeline?")
        return index

    def _load_component(self, path: Path, component: str) -> Any:
        if path.is_dir():
            self._check_diffusers_folder(path)
            from diffusers import AutoencoderKL, UNet2DConditionModel

            cls = {"unet": UNet2DConditionModel, "vae": AutoencoderKL}[component]
            model = cls.from_pretrained(path, subfolder=component, local_files_only=True, torch_dtype=self.dtype)
        else:
            model = single_file.load_component(path, component, dtype=self.dtype)
        logger.info("Loaded %s from %s", component, path)
        return self._prepare(model)

    def _load_text_encoder(self, path: Path) -> tuple[Any, Any]:
        if path.is_dir():
            self._check_diffusers_folder(path)
            from transformers import CLIPTextModel

            encoder = CLIPTextModel.from_pretrained(path / "text_encoder", local_files_only=True, dtype=self.dtype)
            tokenizer_dir = path / "tokenizer"
            tokenizer = load_clip_tokenizer(str(tokenizer_dir) if (tokenizer_dir / "vocab.json").is_file() else None)
        else:
            encoder = single_file.load_component(path, "text_encoder", dtype=self.dtype)
            tokenizer = load_clip_tokenizer(self._single_file_tokenizer_dir())
        logger.info("Loaded text_encoder from %s", path)
        return tokenizer, self._prepare(encoder)

    def _single_file_tokenizer_dir(self) -> str | None:
        """Where the tokenizer of a single-file SD1.x checkpoint comes from.

        Single files carry no tokenizer, and every SD1.x model uses CLIP ViT-L/14's. Prefer
        copies that are already on disk (genserve's cache, then the ``tokenizer/`` of any
        diffusers checkpoint in the models folder, e.g. the demo bundle) over building one,
        which may need the package registry.
        """
        cached = tokenizer_cache_dir()
        if (cached / "vocab.json").is_file() and (cached / "merges.txt").is_file():
            return str(cached)
        for name in self.models.list("checkpoints"):
            folder = self.models.folder("checkpoints") / name / "tokenizer"
            if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
                return str(folder)
        return None  # load_clip_tokenizer builds the cached one

    def _load_vae_file(self, path: Path) -> Any:
        if path.is_dir():
            from diffusers import AutoencoderKL

            model = AutoencoderKL.from_pretrained(path, local_files_only=True, torch_dtype=self.dtype)
        else:
            model = single_file.load_vae_file(path, dtype=self.dtype)
        return self._prepare(model)

    def _load_controlnet(self, path: Path) -> Any:
        if path.is_dir():
            from diffusers import ControlNetModel

            model = ControlNetModel.from_pretrained(path, local_files_only=True, torch_dtype=self.dtype)
        else:
            model = single_file.load_controlnet_file(path, dtype=self.dtype)
        logger.info("Loaded ControlNet from %s", path)
        return self._prepare(model)
