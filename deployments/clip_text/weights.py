"""Prompt emphasis applied to CLIP hidden states, ComfyUI style.

The syntax (``(word)``, ``(word:1.2)``) is parsed by :mod:`graphs.prompt_weights`; this module
applies the per-token weights to the encoder's output, relative to the empty prompt's:
``z = (z - z_empty) * w + z_empty`` for every token whose weight is not 1.
"""

from __future__ import annotations

import numpy as np

from graphs.prompt_weights import EMPHASIS, has_emphasis, parse_weighted

__all__ = ["EMPHASIS", "apply_token_weights", "has_emphasis", "parse_weighted"]


def apply_token_weights(hidden: np.ndarray, weights: np.ndarray, empty: np.ndarray) -> np.ndarray:
    """Scales each token's hidden state away from the empty prompt's.

    Args:
        hidden (`np.ndarray`): ``(k, 77, D)`` encoder outputs of one prompt's chunks.
        weights (`np.ndarray`): ``(k, 77)`` per-token weights.
        empty (`np.ndarray`): ``(77, D)`` encoder output of the empty prompt.

    Returns:
        ``(k, 77, D)``: ``(hidden - empty) * w + empty`` where ``w != 1``, ``hidden`` elsewhere.
    """
    w = weights[..., None].astype(hidden.dtype)
    scaled = (hidden - empty[None]) * w + empty[None]
    return np.where(w != 1.0, scaled, hidden)
