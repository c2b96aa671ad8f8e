"""Per-token emphasis weights applied to CLIP hidden states."""

from __future__ import annotations

import numpy as np

from deployments.clip_text.weights import apply_token_weights


def test_apply_token_weights_scales_away_from_the_empty_prompt_only_where_weighted():
    rng = np.random.default_rng(0)
    hidden, empty = rng.normal(size=(2, 77, 8)).astype(np.float32), rng.normal(size=(77, 8)).astype(np.float32)
    weights = np.ones((2, 77), dtype=np.float32)
    weights[1, 3] = 1.5
    out = apply_token_weights(hidden, weights, empty)
    np.testing.assert_allclose(out[1, 3], (hidden[1, 3] - empty[3]) * 1.5 + empty[3], rtol=1e-6)
    mask = weights == 1.0
    np.testing.assert_array_equal(out[mask], hidden[mask])
