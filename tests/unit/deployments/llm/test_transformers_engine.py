"""The CPU engine on the real SmolLM2: chat template, greedy determinism, batching, sampling, streaming."""

from __future__ import annotations

import asyncio

import pytest

from deployments.llm.engines import ChatRequest, TextDelta

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three colors.",
    "Say hello in Spanish.",
    "What is 2+2?",
    "Name a famous painter.",
]


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_prompt_goes_through_the_models_chat_template(smollm2_engine):
    tok = smollm2_engine.tokenizer
    ids = smollm2_engine.encode_prompt(user("Hi there"))
    text = tok.decode(ids)
    # SmolLM2's template: ChatML with a default system message, ending with the assistant header.
    assert text.startswith("<|im_start|>system\n")
    assert "<|im_start|>user\nHi there<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")
    expected = tok.apply_chat_template(user("Hi there"), add_generation_prompt=True, tokenize=True, return_dict=False)
    assert ids == list(expected)
    # A system message replaces the default one; list-of-parts content is flattened.
    ids = smollm2_engine.encode_prompt(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": [{"type": "text", "text": "Yo"}]}]
    )
    text = tok.decode(ids)
    assert "<|im_start|>system\nBe brief.<|im_end|>" in text and "SmolLM" not in text
    assert "<|im_start|>user\nYo<|im_end|>" in text


def test_answers_a_question(smollm2_engine):
    [result] = smollm2_engine.generate([ChatRequest(messages=user(PROMPTS[0]), max_tokens=16)])
    assert "Paris" in result.text
    assert result.finish_reason == "stop"
    assert result.tokens_in == len(smollm2_engine.encode_prompt(user(PROMPTS[0])))
    assert 1 <= result.tokens_out <= 16
    assert 0 < result.ttft_s <= result.latency_s
    assert result.model == "SmolLM2-135M-Instruct"


def test_greedy_is_deterministic(smollm2_engine):
    a = smollm2_engine.generate([ChatRequest(messages=user(PROMPTS[1]), max_tokens=12)])[0]
    b = smollm2_engine.generate([ChatRequest(messages=user(PROMPTS[1]), max_tokens=12)])[0]
    assert a.text == b.text and a.tokens_out == b.tokens_out == 12
    assert a.finish_reason == "length"


def test_batched_greedy_equals_single_requests(smollm2_engine):
    # Different prompt lengths (left padding) and different max_tokens (rows leave the batch early).
    requests = lambda: [ChatRequest(messages=user(p), max_tokens=8 + 2 * i) for i, p in enumerate(PROMPTS)]  # noqa: E731
    single = [smollm2_engine.generate([r])[0] for r in requests()]
    batched = smollm2_engine.generate(requests())
    assert [r.text for r in batched] == [r.text for r in single]
    assert [r.tokens_out for r in batched] == [r.tokens_out for r in single]
    assert [r.finish_reason for r in batched] == [r.finish_reason for r in single]


def test_padding_is_trimmed_when_the_longest_prompt_finishes_first(smollm2_engine):
    long_prompt = "Please read this carefully. " * 12 + "What is the capital of France?"
    requests = lambda: [ChatRequest(messages=user(long_prompt), max_tokens=2),  # noqa: E731
                        ChatRequest(messages=user("Hi"), max_tokens=10),
                        ChatRequest(messages=user("What is 2+2?"), max_tokens=10)]
    single = [smollm2_engine.generate([r])[0] for r in requests()]
    batched = smollm2_engine.generate(requests())
    assert [r.text for r in batched] == [r.text for r in single]


def test_batches_larger_than_max_batch_size_run_in_chunks(smollm2_engine, monkeypatch):
    monkeypatch.setattr(smollm2_engine, "max_batch_size", 2)
    requests = [ChatRequest(messages=user(p), max_tokens=6) for p in PROMPTS[:5]]
    results = smollm2_engine.generate(requests)
    assert len(results) == 5 and all(r.tokens_out >= 1 for r in results)
    single = smollm2_engine.generate([ChatRequest(messages=user(PROMPTS[4]), max_tokens=6)])[0]
    assert results[4].text == single.text


def test_seeded_sampling_is_reproducible_and_independent_of_batch_mates(smollm2_engine):
    def req(seed: int) -> ChatRequest:
        return ChatRequest(messages=user("Tell me a story."), max_tokens=12, temperature=0.9, seed=seed)

    a = smollm2_engine.generate([req(7)])[0].text
    b = smollm2_engine.generate([req(7)])[0].text
    c = smollm2_engine.generate([req(8)])[0].text
    assert a == b
    assert a != c
    # In a batch next to other rows, the row's own generator gives the same sample.
    batched = smollm2_engine.generate([ChatRequest(messages=user(PROMPTS[2]), max_tokens=5), req(7), req(8)])
    assert batched[1].text == a and batched[2].text == c


def test_stop_strings_cut_the_answer(smollm2_engine):
    [full] = smollm2_engine.generate([ChatRequest(messages=user("Count from 1 to 10, separated by commas."), max_tokens=24)])
    assert "4" in full.text
    [cut] = smollm2_engine.generate(
        [ChatRequest(messages=user("Count from 1 to 10, separated by commas."), max_tokens=24, stop=["4"])]
    )
    assert cut.finish_reason == "stop"
    assert "4" not in cut.text and full.text.startswith(cut.text)


def test_stream_deltas_add_up_to_the_answer(smollm2_engine):
    async def collect():
        return [d async for d in smollm2_engine.stream_chat(user(PROMPTS[3]), max_tokens=12)]

    deltas = asyncio.run(collect())
    assert all(isinstance(d, TextDelta) for d in deltas)
    assert len(deltas) > 2, "the answer arrives in pieces"
    final = deltas[-1].result
    assert final is not None and all(d.result is None for d in deltas[:-1])
    assert "".join(deltas) == final.text
    [same] = smollm2_engine.generate([ChatRequest(messages=user(PROMPTS[3]), max_tokens=12)])
    assert same.text == final.text


def test_streaming_holds_back_a_partial_stop_string(smollm2_engine):
    async def collect():
        return [d async for d in smollm2_engine.stream_chat(user("Count from 1 to 10."), max_tokens=40, stop=["5, 6"])]

    deltas = asyncio.run(collect())
    assert "5, 6" not in "".join(deltas)
    assert "".join(deltas) == deltas[-1].result.text


def test_chat_async_matches_generate(smollm2_engine):
    result = asyncio.run(smollm2_engine.chat(user(PROMPTS[4]), max_tokens=10))
    assert result.text == smollm2_engine.generate([ChatRequest(messages=user(PROMPTS[4]), max_tokens=10)])[0].text


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"messages": []}, "non-empty"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "role"),
        ({"messages": user("x"), "max_tokens": 0}, "max_tokens"),
        ({"messages": user("x"), "temperature": -1}, "temperature"),
        ({"messages": user("x"), "max_tokens": 9000}, "context"),
    ],
)
def test_invalid_requests_fail_early(smollm2_engine, kwargs, match):
    with pytest.raises(ValueError, match=match):
        smollm2_engine.generate([ChatRequest(**kwargs)])


def test_text_delta_survives_pickling():
    import pickle

    from deployments.llm.engines import ChatResult

    result = ChatResult("hi", 3, 1, "stop", 0.2, 0.1)
    delta = pickle.loads(pickle.dumps(TextDelta("", result)))
    assert delta == "" and delta.result == result and delta.finish_reason == "stop"
    assert pickle.loads(pickle.dumps(TextDelta("x"))).result is None


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__]))
