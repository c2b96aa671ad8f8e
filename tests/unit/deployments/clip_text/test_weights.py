"""Prompt emphasis parsing and per-token weighting (ComfyUI's ``(word:1.2)`` syntax)."""

from __future__ import annotations

import numpy as np
import pytest

from deployments.clip_text.weights import apply_token_weights, has_emphasis, parse_weighted


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("a photo of a cat", [("a photo of a cat", 1.0)]),
        ("a (red:1.3) car", [("a ", 1.0), ("red", 1.3), (" car", 1.0)]),
        ("(red)", [("red", 1.1)]),
        ("((red))", [("red", 1.1 * 1.1)]),
        ("((red:1.2))", [("red", 1.2)]),  # an explicit weight is absolute, not multiplied
        ("(a (b:1.5):0.5)", [("a ", 0.5), ("b", 1.5)]),
        ("(a, b:0.8), c", [("a, b", 0.8), (", c", 1.0)]),
        ("(ratio 16:nine)", [("ratio 16:nine", 1.1)]),  # the suffix after the last colon is no number
        ("(:1.5)", [(":1.5", 1.1)]),
        ("\\(not emphasised\\)", [("(not emphasised)", 1.0)]),
        ("(\\(kept\\):1.4)", [("(kept)", 1.4)]),
        ("a ) b", [("a ) b", 1.0)]),  # an unmatched ")" is text
        ("a) (b:1.5) c", [("a) (b:1.5) c", 1.0)]),  # ... and so is the rest of its level (ComfyUI)
        ("(x) a) (b:1.5)", [("x", 1.1), (" a) (b:1.5)", 1.0)]),
        ("a (b c", [("a ", 1.0), ("(b c", 1.0)]),  # an unclosed "(" leaves the rest as text
        ("(red)(car)", [("red", 1.1), ("car", 1.1)]),  # neighbours stay separate words
        ("", []),
    ],
)
def test_parse_weighted_follows_comfyui_semantics(prompt, expected):
    got = parse_weighted(prompt)
    assert [s for s, _ in got] == [s for s, _ in expected]
    assert [w for _, w in got] == pytest.approx([w for _, w in expected])


def test_has_emphasis_only_when_a_weight_differs_from_one():
    assert not has_emphasis([[1.0, 1.0], [1.0]])
    assert has_emphasis([[1.0, 1.2]])


def test_apply_token_weights_scales_away_from_the_empty_prompt_only_where_weighted():
    rng = np.random.default_rng(0)
    hidden, empty = rng.normal(size=(2, 77, 8)).astype(np.float32), rng.normal(size=(77, 8)).astype(np.float32)
    weights = np.ones((2, 77), dtype=np.float32)
    weights[1, 3] = 1.5
    out = apply_token_weights(hidden, weights, empty)
    np.testing.assert_allclose(out[1, 3], (hidden[1, 3] - empty[3]) * 1.5 + empty[3], rtol=1e-6)
    mask = weights == 1.0
    np.testing.assert_array_equal(out[mask], hidden[mask])


@pytest.mark.parametrize("prompt", ["(cat:nan)", "(cat:inf)", "a (b:-inf) c"])
def test_non_finite_weights_are_refused(prompt):
    with pytest.raises(ValueError, match="finite number"):
        parse_weighted(prompt)
