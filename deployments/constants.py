"""Constants and environment-variable names of the ``deployments`` package.

Every env var read by this package is named here and prefixed ``GENSERVE_``.
"""

from __future__ import annotations

# --- models folder -------------------------------------------------------------------

#: Env var naming the models root (ComfyUI's ``models/`` folder layout).
ENV_MODELS_DIR = "GENSERVE_MODELS_DIR"
#: Models root used when :data:`ENV_MODELS_DIR` is unset (relative to the working dir).
DEFAULT_MODELS_DIR = "./models"

#: Sub-folders of the models root, named as in ComfyUI.
MODEL_KINDS: tuple[str, ...] = ("checkpoints", "controlnet", "loras", "vae", "llm")

#: File suffixes recognised as single-file weights.
SAFETENSORS_SUFFIX = ".safetensors"
PICKLE_SUFFIXES: tuple[str, ...] = (".ckpt", ".pt", ".pth", ".bin")
WEIGHT_SUFFIXES: tuple[str, ...] = (SAFETENSORS_SUFFIX, *PICKLE_SUFFIXES)
#: Extra suffixes accepted per kind (the LLM stage loads GGUF files).
EXTRA_SUFFIXES: dict[str, tuple[str, ...]] = {"llm": (".gguf",)}

#: A directory is a diffusers model folder when it holds this file (per kind).
DIFFUSERS_MARKERS: dict[str, str] = {
    "checkpoints": "model_index.json",
    "controlnet": "config.json",
    "vae": "config.json",
    "llm": "config.json",
}

# --- caches --------------------------------------------------------------------------

#: Env var for genserve's own cache folder (the CLIP BPE file, the built tokenizer).
ENV_CACHE_DIR = "GENSERVE_CACHE_DIR"
#: Cache folder used when :data:`ENV_CACHE_DIR` is unset.
DEFAULT_CACHE_DIR = "~/.cache/genserve"

# --- CLIP tokenizer ------------------------------------------------------------------

#: Env var pointing at a local ``bpe_simple_vocab_16e6.txt.gz`` (offline installs).
ENV_CLIP_BPE = "GENSERVE_CLIP_BPE"
#: The PyPI distribution whose wheel ships OpenAI CLIP's BPE merges file.
OPEN_CLIP_DIST = "open-clip-torch"
OPEN_CLIP_VERSION = "3.3.0"
#: Path of the BPE file inside the wheel.
OPEN_CLIP_BPE_MEMBER = "open_clip/bpe_simple_vocab_16e6.txt.gz"
CLIP_BPE_FILENAME = "bpe_simple_vocab_16e6.txt.gz"
#: sha256 of the gzip file (identical to the one in openai/CLIP).
CLIP_BPE_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
CLIP_VOCAB_SIZE = 49408
CLIP_MAX_LENGTH = 77
CLIP_BOS_TOKEN_ID = 49406
CLIP_EOS_TOKEN_ID = 49407

# --- demo bundle ---------------------------------------------------------------------

DEMO_CHECKPOINT = "genserve-demo-sd15"
DEMO_CHECKPOINT_FILE = "genserve-demo-sd15.safetensors"
DEMO_CONTROLNET = "genserve-demo-controlnet"
DEMO_LORA = "genserve-demo-lora.safetensors"
#: Marker file written into every demo folder; its presence means "seeded random weights".
DEMO_MARKER = "genserve-demo.txt"

# --- single-file checkpoints ---------------------------------------------------------

#: safetensors ``__metadata__`` key holding the diffusers configs as JSON.
SINGLE_FILE_CONFIGS_KEY = "genserve.configs"
#: safetensors ``__metadata__`` key naming the layout of the keys.
SINGLE_FILE_FORMAT_KEY = "genserve.format"
SINGLE_FILE_FORMAT_SD15 = "ldm-sd15"
SINGLE_FILE_FORMAT_CONTROLNET = "ldm-controlnet-sd15"
