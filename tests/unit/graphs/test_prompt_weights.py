"""Prompt emphasis syntax (ComfyUI's ``(word:1.2)``): parsing, and validation before anything runs."""

from __future__ import annotations

import pytest

from graphs.prompt_weights import has_emphasis, parse_weighted


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


@pytest.mark.parametrize("prompt", ["(cat:nan)", "(cat:inf)", "a (b:-inf) c"])
def test_non_finite_weights_are_refused(prompt):
    with pytest.raises(ValueError, match="finite number"):
        parse_weighted(prompt)
