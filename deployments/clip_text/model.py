"""CLIP text encoding with ComfyUI's semantics, plus an embedding cache.

:class:`ClipTextModel` is the plain model class behind the text-encoder deployment: no
Ray import, and the caller sets torch's thread count. It turns prompts into
:class:`graphs.types.ConditioningEntry` objects the way ComfyUI's ``CLIPTextEncode``
does for SD1.x:

* each prompt is tokenised word by word (split on spaces) without special tokens;
* tokens are packed into chunks of at most 75, each wrapped as ``[BOS] ... [EOS]`` and
  padded with the end token (SD1.x pads with ``<|endoftext|>`` = 49407) to 77. As in
  ComfyUI, a word of fewer than 8 tokens that would straddle a chunk boundary starts the
  next chunk instead of being split;
* all chunks of all prompts in one call go through the encoder as one batch; a prompt's
  chunks are concatenated along the sequence axis (``T = 77 * k``);
* the embedding is ``last_hidden_state`` (SD1.x uses the final layer, after the final
  layer norm); the pooled output is the first chunk's (hidden state at its first EOS).

Emphasis ``(word)`` / ``(word:1.2)`` follows ComfyUI (see :mod:`deployments.clip_text.weights`):
each token carries a weight, and weighted tokens' hidden states are scaled away from the
empty prompt's. Textual-inversion ``embedding:name`` references are plain text.

Usage::

    model = ClipTextModel(ClipTextConfig(models_dir="models"))
    [cond] = model.encode_prompt(ClipRef("genserve-demo-sd15"), ["a photo of a cat"])
    cond.embedding.shape   # (1, 77, 256) with the demo bundle
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from deployments import constants
from deployments.checkpoints.layout import ModelsDir, default_models_dir
from deployments.clip_text.weights import apply_token_weights, has_emphasis, parse_weighted
from graphs.types import ClipRef, ConditioningEntry

if TYPE_CHECKING:  # NOTE: the loader imports torch; keep this module cheap to import.
    from deployments.checkpoints.loader import ModelLoader

logger = logging.getLogger(__name__)

#: Tokens per chunk including BOS and EOS (CLIP's context length).
CHUNK_LENGTH = constants.CLIP_MAX_LENGTH
#: ComfyUI's ``max_word_length``: words this long may be split across chunks.
MAX_WORD_LENGTH = 8


class ClipTextConfig(BaseModel):
    """Configuration of the CLIP text stage."""

    model_config = ConfigDict(extra="forbid")

    models_dir: Path = Field(
        default_factory=default_models_dir,
        description="Models root in ComfyUI's layout (checkpoints/ holds the text encoders).",
    )
    cache_size: int = Field(
        default=1024, ge=0, description="Prompt embeddings kept in the LRU cache, keyed by (CLIP model+LoRAs, text)."
    )
    model_cache_size: int = Field(default=2, ge=1, description="Text encoders (with LoRA variants) kept loaded.")
    max_batch_chunks: int = Field(
        default=64, ge=1, description="Most 77-token chunks sent through the encoder in one forward pass."
    )
    device: str = Field(default="cpu", description="Torch device of the text encoder.")


@dataclass
class CacheStats:
    """Counters of the embedding cache."""

    hits: int
    misses: int
    size: int
    capacity: int


@dataclass
class _Encoded:
    embedding: np.ndarray  # (1, 77*k, D) float32
    pooled: np.ndarray  # (1, D) float32
    num_chunks: int


def tokenize_weighted(tokenizer: Any, text: str) -> tuple[list[list[int]], list[list[float]]]:
    """Splits a prompt into 77-token CLIP chunks with a weight per token, ComfyUI style.

    Args:
        tokenizer (`CLIPTokenizer`): The CLIP tokenizer.
        text (`str`): The prompt, with optional ``(word:1.2)`` emphasis.

    Returns:
        ``(ids, weights)``: one list of 77 ids per chunk, ``[BOS, tokens..., EOS, EOS
        padding...]`` (at least one chunk: an empty prompt gives ``[BOS, EOS, EOS, ...]``),
        and the same shape of weights (1.0 for BOS, EOS and padding).
    """
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = eos  # SD1.x pads with the end token
    word_tokens: list[tuple[list[int], float]] = []
    for segment, weight in parse_weighted(text):
        words = [w for w in segment.replace("\n", " ").split(" ") if w]
        if words:
            word_tokens.extend((list(ids), weight) for ids in tokenizer(words, add_special_tokens=False)["input_ids"])

    chunks: list[list[int]] = []
    chunk_weights: list[list[float]] = []
    batch, weights = [bos], [1.0]
    for group, weight in word_tokens:
        is_large = len(group) >= MAX_WORD_LENGTH
        while group:
            if len(group) + len(batch) > CHUNK_LENGTH - 1:
                remaining = CHUNK_LENGTH - len(batch) - 1
                if is_large:  # split the long word across chunks
                    batch.extend(group[:remaining])
                    weights.extend([weight] * remaining)
                    group = group[remaining:]
                    batch.append(eos)
                    weights.append(1.0)
                else:  # close this chunk, the word starts the next one
                    batch.append(eos)
                    batch.extend([pad] * remaining)
                    weights.extend([1.0] * (remaining + 1))
                chunks.append(batch)
                chunk_weights.append(weights)
                batch, weights = [bos], [1.0]
            else:
                batch.extend(group)
                weights.extend([weight] * len(group))
                group = []
    batch.append(eos)
    batch.extend([pad] * (CHUNK_LENGTH - len(batch)))
    weights.extend([1.0] * (CHUNK_LENGTH - len(weights)))
    chunks.append(batch)
    chunk_weights.append(weights)
    return chunks, chunk_weights


def tokenize_prompt(tokenizer: Any, text: str) -> list[list[int]]:
    """The token ids of :func:`tokenize_weighted` (one list of 77 ids per chunk)."""
    return tokenize_weighted(tokenizer, text)[0]


class ClipTextModel:
    """Encodes prompts with a checkpoint's CLIP text encoder; caches embeddings.

    Construct with a :class:`ClipTextConfig`; pass ``loader`` to share a
    :class:`~deployments.checkpoints.loader.ModelLoader` (tests pass one over the demo
    bundle). Thread-safe: the cache has its own lock and encoding is serialised.

    Args:
        config (`ClipTextConfig`): The stage config.
        loader (`ModelLoader`, *optional*): Model loader; built from ``config`` if omitted.
    """

    def __init__(self, config: ClipTextConfig | None = None, loader: ModelLoader | None = None) -> None:
        self.config = config or ClipTextConfig()
        if loader is None:
            from deployments.checkpoints.loader import ModelLoader

            loader = ModelLoader(
                ModelsDir(self.config.models_dir), device=self.config.device, cache_size=self.config.model_cache_size
            )
        self.loader = loader
        self._cache: OrderedDict[tuple[str, str], _Encoded] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._encode_lock = threading.Lock()
        self._hits = 0
        self._misses = 0

    def encode_prompt(self, clip: ClipRef, texts: list[str]) -> list[ConditioningEntry]:
        """Encodes several prompts with one CLIP model in one batched forward pass.

        Args:
            clip (`ClipRef`): The checkpoint (and LoRAs) whose text encoder to use.
            texts (`list[str]`): The prompts.

        Returns:
            One :class:`ConditioningEntry` per prompt, in order: ``embedding`` float32
            ``(1, 77*k, D)``, ``pooled`` float32 ``(1, D)``. The arrays are fresh copies.

        Raises:
            TypeError: ``texts`` is a single string or holds non-strings.
            ModelNotFoundError: the checkpoint does not exist.
        """
        # 1. Check inputs
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError("encode_prompt expects a list of strings.")
        model_key = clip.key()

        # 2. Cache lookups
        results: list[_Encoded | None] = [None] * len(texts)
        missing: dict[str, list[int]] = {}
        with self._cache_lock:
            for i, text in enumerate(texts):
                hit = self._cache_get((model_key, text))
                if hit is not None:
                    results[i] = hit
                elif text in missing:
                    missing[text].append(i)
                    self._hits += 1  # served by the encoding done for its twin in this call
                else:
                    missing[text] = [i]
                    self._misses += 1

        # 3. Encode the misses in one batch
        if missing:
            encoded = self._encode(clip, list(missing))
            with self._cache_lock:
                for text, value in zip(missing, encoded):
                    self._cache_put((model_key, text), value)
                    for i in missing[text]:
                        results[i] = value

        # 4. Typed output (copies: callers may modify them)
        return [ConditioningEntry(embedding=r.embedding.copy(), pooled=r.pooled.copy()) for r in results]  # type: ignore[union-attr]

    def cache_stats(self) -> dict[str, int]:
        """Returns the embedding cache's counters: ``hits``, ``misses``, ``size``, ``capacity``."""
        with self._cache_lock:
            return CacheStats(self._hits, self._misses, len(self._cache), self.config.cache_size).__dict__.copy()

    def clear_cache(self) -> None:
        """Drops every cached embedding (the counters are kept)."""
        with self._cache_lock:
            self._cache.clear()

    # -- internals ---------------------------------------------------------------------

    def _cache_get(self, key: tuple[str, str]) -> _Encoded | None:
        value = self._cache.get(key)
        if value is not None:
            self._cache.move_to_end(key)
            self._hits += 1
        return value

    def _cache_put(self, key: tuple[str, str], value: _Encoded) -> None:
        if self.config.cache_size <= 0:
            return
        self._cache[key] = value
        self._cache.move_to_end(key)
        while len(self._cache) > self.config.cache_size:
            self._cache.popitem(last=False)

    def _encode(self, clip: ClipRef, texts: list[str]) -> list[_Encoded]:
        import torch

        with self._encode_lock:
            tokenizer, encoder = self.loader.text_encoder(clip)
            per_text = [tokenize_weighted(tokenizer, t) for t in texts]
            flat = [chunk for chunks, _ in per_text for chunk in chunks]
            weighted = any(has_emphasis(w) for _, w in per_text)
            if weighted:  # emphasis is relative to the empty prompt's hidden states
                flat.append(tokenize_prompt(tokenizer, "")[0])
            device = next(encoder.parameters()).device
            hidden_parts, pooled_parts = [], []
            with torch.inference_mode():
                for start in range(0, len(flat), self.config.max_batch_chunks):
                    ids = torch.tensor(
                        flat[start : start + self.config.max_batch_chunks], dtype=torch.long, device=device
                    )
                    out = encoder(input_ids=ids)
                    hidden_parts.append(out.last_hidden_state.float().cpu())
                    pooled_parts.append(out.pooler_output.float().cpu())
            hidden = torch.cat(hidden_parts).numpy()
            pooled = torch.cat(pooled_parts).numpy()
        logger.debug("Encoded %d prompts (%d chunks) with %s", len(texts), len(flat), clip.key())

        empty = hidden[-1] if weighted else None
        encoded, offset = [], 0
        for chunks, weights in per_text:
            k = len(chunks)
            states = hidden[offset : offset + k]
            if empty is not None and has_emphasis(weights):
                states = apply_token_weights(states, np.asarray(weights, dtype=np.float32), empty)
            embedding = states.reshape(1, k * CHUNK_LENGTH, -1)
            encoded.append(
                _Encoded(
                    np.ascontiguousarray(embedding, dtype=np.float32), pooled[offset : offset + 1].astype(np.float32), k
                )
            )
            offset += k
        return encoded
