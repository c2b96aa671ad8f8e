"""ClipTextModel: ComfyUI chunking, batched encoding, embedding cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydantic
import pytest

from deployments import constants
from deployments.clip_text.model import ClipTextConfig, ClipTextModel, tokenize_prompt, tokenize_weighted
from graphs.types import ClipRef, ConditioningEntry, LoraRef

CLIP = ClipRef(constants.DEMO_CHECKPOINT)
BOS, EOS = 49406, 49407


@pytest.fixture()
def model(demo_models_dir: Path, demo_loader) -> ClipTextModel:
    return ClipTextModel(ClipTextConfig(models_dir=demo_models_dir, cache_size=8), loader=demo_loader)


def test_tokenize_short_prompt(demo_loader) -> None:
    tokenizer, _ = demo_loader.text_encoder(CLIP)
    [chunk] = tokenize_prompt(tokenizer, "a photo of a cat")
    assert chunk[:7] == [BOS, 320, 1125, 539, 320, 2368, EOS]
    assert len(chunk) == 77 and set(chunk[7:]) == {EOS}
    [empty] = tokenize_prompt(tokenizer, "")
    assert empty[:2] == [BOS, EOS] and len(empty) == 77


def test_tokenize_long_prompt_chunks(demo_loader) -> None:
    tokenizer, _ = demo_loader.text_encoder(CLIP)
    chunks = tokenize_prompt(tokenizer, " ".join(["cat"] * 100))
    assert len(chunks) == 2
    assert all(len(c) == 77 and c[0] == BOS for c in chunks)
    assert chunks[0][1:76] == [2368] * 75 and chunks[0][76] == EOS
    assert chunks[1][1:26] == [2368] * 25 and chunks[1][26] == EOS
    # a short word that would straddle the boundary moves to the next chunk (ComfyUI)
    chunks = tokenize_prompt(tokenizer, " ".join(["cat"] * 74 + ["photograph,"]))
    assert chunks[0][75] == EOS and chunks[0][76] == EOS
    assert chunks[1][1:3] == tokenizer("photograph,", add_special_tokens=False).input_ids


def test_encode_shapes_and_long_prompts(model: ClipTextModel) -> None:
    entries = model.encode_prompt(CLIP, ["a photo of a cat", "", " ".join(["cat"] * 100)])
    assert all(isinstance(e, ConditioningEntry) for e in entries)
    assert [e.embedding.shape for e in entries] == [(1, 77, 256), (1, 77, 256), (1, 154, 256)]
    assert all(e.pooled.shape == (1, 256) and e.embedding.dtype == np.float32 for e in entries)
    assert not np.allclose(entries[0].embedding, entries[1].embedding)


def test_batched_equals_single(model: ClipTextModel, demo_models_dir: Path, demo_loader) -> None:
    batched = model.encode_prompt(CLIP, ["a photo of a cat", "a dog " * 60])
    fresh = ClipTextModel(ClipTextConfig(models_dir=demo_models_dir, cache_size=0), loader=demo_loader)
    single = [fresh.encode_prompt(CLIP, [t])[0] for t in ["a photo of a cat", "a dog " * 60]]
    for b, s in zip(batched, single):
        np.testing.assert_allclose(b.embedding, s.embedding, atol=1e-5)
        np.testing.assert_allclose(b.pooled, s.pooled, atol=1e-5)


def test_pooled_is_first_eos_hidden_state(model: ClipTextModel) -> None:
    [entry] = model.encode_prompt(CLIP, ["a photo of a cat"])
    np.testing.assert_allclose(entry.pooled[0], entry.embedding[0, 6], atol=1e-6)  # EOS at index 6


def test_cache_hits_and_keys(model: ClipTextModel) -> None:
    model.encode_prompt(CLIP, ["red", "blue"])
    assert model.cache_stats() == {"hits": 0, "misses": 2, "size": 2, "capacity": 8}
    a = model.encode_prompt(CLIP, ["red", "red", "green"])
    stats = model.cache_stats()
    assert (stats["hits"], stats["misses"], stats["size"]) == (2, 3, 3)
    np.testing.assert_array_equal(a[0].embedding, a[1].embedding)
    a[0].embedding[:] = 0  # callers get copies; the cache is unaffected
    assert model.encode_prompt(CLIP, ["red"])[0].embedding.any()
    # another LoRA strength is another model: a miss, and a different embedding
    lora = ClipRef(constants.DEMO_CHECKPOINT, loras=(LoraRef(constants.DEMO_LORA, 1.0, 1.0),))
    b = model.encode_prompt(lora, ["red"])
    assert model.cache_stats()["misses"] == 4
    assert not np.allclose(a[1].embedding, b[0].embedding)


def test_cache_is_lru_bounded(demo_models_dir: Path, demo_loader) -> None:
    model = ClipTextModel(ClipTextConfig(models_dir=demo_models_dir, cache_size=2), loader=demo_loader)
    model.encode_prompt(CLIP, ["a", "b", "c"])
    assert model.cache_stats()["size"] == 2


def test_bad_input(model: ClipTextModel) -> None:
    with pytest.raises(TypeError):
        model.encode_prompt(CLIP, "a cat")  # type: ignore[arg-type]
    with pytest.raises(pydantic.ValidationError):
        ClipTextConfig(models_dir="x", cache_size=-1)
    with pytest.raises(pydantic.ValidationError):
        ClipTextConfig(models_dir="x", unknown_option=1)


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__]))


def test_emphasis_scales_only_the_weighted_tokens_away_from_the_empty_prompt(model: ClipTextModel, demo_loader) -> None:
    tokenizer, _ = demo_loader.text_encoder(CLIP)
    ids, weights = tokenize_weighted(tokenizer, "a (red:1.5) car")
    assert ids == tokenize_prompt(tokenizer, "a red car")  # brackets and weights are not tokens
    assert len(tokenizer("red", add_special_tokens=False).input_ids) == 1
    assert weights[0][:5] == [1.0, 1.0, 1.5, 1.0, 1.0] and set(weights[0][5:]) == {1.0}
    plain, empty, weighted = model.encode_prompt(CLIP, ["a red car", "", "a (red:1.5) car"])
    z, z0, zw = plain.embedding[0], empty.embedding[0], weighted.embedding[0]
    np.testing.assert_allclose(zw[2], (z[2] - z0[2]) * 1.5 + z0[2], rtol=1e-5, atol=1e-5)
    assert not np.allclose(zw[2], z[2])
    keep = [i for i in range(77) if i != 2]
    np.testing.assert_allclose(zw[keep], z[keep], atol=1e-6)
    np.testing.assert_allclose(weighted.pooled, plain.pooled, atol=1e-6)


def test_weight_one_and_escaped_brackets_encode_like_plain_text(model: ClipTextModel, demo_loader) -> None:
    tokenizer, _ = demo_loader.text_encoder(CLIP)
    a, b = model.encode_prompt(CLIP, ["(a cat:1.0)", "a cat"])
    np.testing.assert_allclose(a.embedding, b.embedding, atol=1e-6)
    [chunk] = tokenize_prompt(tokenizer, r"\(a cat\)")
    literal = tokenizer(["(a", "cat)"], add_special_tokens=False).input_ids
    assert chunk[: 1 + len(literal[0]) + len(literal[1])] == [BOS] + literal[0] + literal[1]


def test_adjacent_groups_stay_separate_words(demo_loader) -> None:
    tokenizer, _ = demo_loader.text_encoder(CLIP)
    ids, weights = tokenize_weighted(tokenizer, "(red:1.2)(car:1.2)")
    assert ids == tokenize_prompt(tokenizer, "red car") != tokenize_prompt(tokenizer, "redcar")
    n = sum(len(t) for t in tokenizer(["red", "car"], add_special_tokens=False).input_ids)
    assert weights[0][1 : 1 + n] == [1.2] * n
