"""Prompt emphasis ``(word:1.2)`` with ComfyUI's semantics.

ComfyUI users write emphasis into their prompts, and a workflow moved to genserve must
encode the same way. The syntax:

* ``(text)`` multiplies the weight of ``text`` by 1.1; nesting multiplies again, so
  ``((text))`` is 1.21;
* ``(text:1.5)`` sets the weight of ``text`` to 1.5 (absolute, not multiplied by an
  enclosing group), where the number follows the group's last colon; a suffix that is not a
  number (``(a:b)``) leaves the text as is and counts as plain ``(...)``;
* ``\\(`` and ``\\)`` are literal brackets. As in ComfyUI, an unmatched ``)`` makes the rest
  of its level literal text, and an unmatched ``(`` leaves the rest of the prompt as literal
  text at the current weight;
* each segment is tokenised on its own: ``(red)(car)`` is two words, never ``redcar``;
* a weight that is not a finite number (``(cat:nan)``) is an error, not NaN embeddings.

This module is the syntax (part of the workflow language, so validation can reject a bad
weight before anything runs); the text encoder applies the weights to its hidden states
(``deployments/clip_text/weights.py``). Prompts without emphasis encode exactly as before.

Usage::

    parse_weighted("a (red:1.3) car")
    # [("a ", 1.0), ("red", 1.3), (" car", 1.0)]
"""

from __future__ import annotations

import math

#: Weight of a bare ``(...)`` group, per nesting level.
EMPHASIS = 1.1

# NOTE: escaped brackets are swapped for private-use characters while parsing, then restored.
_ESCAPES = {"\\(": "\ue000", "\\)": "\ue001"}


def _escape(text: str) -> str:
    for seq, mark in _ESCAPES.items():
        text = text.replace(seq, mark)
    return text


def _unescape(text: str) -> str:
    for seq, mark in _ESCAPES.items():
        text = text.replace(mark, seq[1])
    return text


def _split_groups(text: str) -> list[str]:
    """Top-level pieces: plain runs and balanced ``(...)`` groups (kept with their brackets).

    A ``)`` at the top level drives the depth below zero, so nothing after it opens a group
    until the depth is back to exactly zero on a ``)`` (ComfyUI's behaviour with stray brackets).
    """
    pieces: list[str] = []
    current = ""
    depth = 0
    for ch in text:
        if ch == "(":
            if depth == 0:
                if current:
                    pieces.append(current)
                current = ""
            current += ch
            depth += 1
        elif ch == ")":
            depth -= 1
            current += ch
            if depth == 0:
                pieces.append(current)
                current = ""
        else:
            current += ch
    if current:
        # NOTE: an unclosed "(" run, or text after a stray ")": kept as literal text.
        pieces.append(current)
    return pieces


def _weights(text: str, weight: float) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    for piece in _split_groups(text):
        if len(piece) >= 2 and piece[0] == "(" and piece[-1] == ")":
            inner = piece[1:-1]
            inner_weight = weight * EMPHASIS
            colon = inner.rfind(":")
            if colon > 0:
                try:
                    explicit = float(inner[colon + 1 :])
                except ValueError:
                    pass
                else:
                    if not math.isfinite(explicit):
                        raise ValueError(f"prompt emphasis weight must be a finite number, got {inner[colon + 1:]!r}")
                    inner_weight, inner = explicit, inner[:colon]
            out.extend(_weights(inner, inner_weight))
        else:
            out.append((piece, weight))
    return out


def parse_weighted(text: str) -> list[tuple[str, float]]:
    """Splits a prompt into ``(segment, weight)`` pairs.

    Args:
        text (`str`): The prompt, with optional emphasis syntax.

    Returns:
        The segments in order with their weights; brackets and weight suffixes removed,
        escaped brackets restored as literal ``(`` / ``)``. Segments are never merged: each
        is tokenised on its own.

    Raises:
        ValueError: an explicit weight that is not a finite number.
    """
    return [(_unescape(segment), weight) for segment, weight in _weights(_escape(text), 1.0)]


def has_emphasis(weights: list[list[float]]) -> bool:
    """True when any token weight differs from 1."""
    return any(w != 1.0 for chunk in weights for w in chunk)
