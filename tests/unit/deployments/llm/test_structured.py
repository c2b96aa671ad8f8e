"""JSON-schema constrained decoding (xgrammar): every tool call parses and validates."""

from __future__ import annotations

import json

import jsonschema
import pytest

from deployments.llm.engines import ChatRequest

TOOLS = ["generate_image", "search", "calculator", "finish"]

#: A ReAct tool call. Strings are length-bounded so that max_tokens always leaves room to
#: close the JSON value: every allowed token adds at least one character, so an answer has at
#: most 80 + 40 + ~60 structural characters, i.e. fewer than MAX_TOKENS tokens. (A 135M model
#: may otherwise ramble inside a string, e.g. "8. 8. 8. ...", until the budget runs out.)
TOOL_CALL_SCHEMA = {
    "type": "object",
    "properties": {
        "thought": {"type": "string", "maxLength": 80},
        "action": {"type": "string", "enum": TOOLS},
        "action_input": {
            "type": "object",
            "properties": {"query": {"type": "string", "maxLength": 40}},
            "required": ["query"],
            "additionalProperties": False,
        },
    },
    "required": ["thought", "action", "action_input"],
    "additionalProperties": False,
}

SYSTEM = (
    "You are an agent. Tools: generate_image (draws a picture), search (web search), calculator (arithmetic), "
    "finish (final answer). Reply with one JSON object with keys thought, action and action_input."
)

PROMPTS = [
    "Draw a red cat sitting on a mat.",
    "What is the capital of Japan?",
    "Compute 17 * 23.",
    "Find recent news about Mars rovers.",
    "Make a picture of a sunset over mountains.",
    "I am done, thanks!",
    "Search for the best pizza recipe.",
    "Generate an image of a robot reading a book.",
    "How many legs does a spider have?",
    "What is the square root of 144?",
    "Paint a watercolor of a lighthouse in a storm.",
    "Who wrote Pride and Prejudice?",
    "Give me the final answer: the sky is blue.",
    "Look up the population of Canada.",
    "Create a logo for a coffee shop called Bean There.",
    "Add 1234 and 4321.",
    "Show me a dragon flying over a castle.",
    "What's the weather like on Venus?",
    "Translate 'good morning' into French.",
    "Draw a minimalist line art of a fox.",
    "Convert 100 Fahrenheit to Celsius.",
    "Summarize the plot of Hamlet in one line.",
    "Render a cyberpunk city street at night.",
    "Finish: the answer is 42.",
]


MAX_TOKENS = 200


def requests(max_tokens: int = MAX_TOKENS) -> list[ChatRequest]:
    return [
        ChatRequest(
            messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": p}],
            max_tokens=max_tokens,
            json_schema=TOOL_CALL_SCHEMA,
        )
        for p in PROMPTS
    ]


def test_every_constrained_tool_call_parses_and_validates(smollm2_engine):
    assert len(PROMPTS) >= 20
    results = smollm2_engine.generate(requests())  # three batches of 8
    actions = set()
    for prompt, result in zip(PROMPTS, results):
        assert result.finish_reason == "stop", (prompt, result.text)
        call = json.loads(result.text)
        jsonschema.validate(call, TOOL_CALL_SCHEMA)
        actions.add(call["action"])
    assert len(actions) >= 2, "the model still chooses between tools"


def test_unconstrained_output_would_not_parse(smollm2_engine):
    # The reason the constraint exists: the bare model does not reliably answer in JSON.
    results = smollm2_engine.generate([ChatRequest(messages=r.messages, max_tokens=48) for r in requests()[:8]])
    failures = 0
    for result in results:
        try:
            jsonschema.validate(json.loads(result.text), TOOL_CALL_SCHEMA)
        except (json.JSONDecodeError, jsonschema.ValidationError):
            failures += 1
    assert failures >= 4


def test_constrained_and_free_rows_share_a_batch(smollm2_engine):
    free = ChatRequest(messages=[{"role": "user", "content": "What is 2+2?"}], max_tokens=10)
    [alone] = smollm2_engine.generate([free])
    mixed = smollm2_engine.generate([requests()[0], ChatRequest(messages=free.messages, max_tokens=10)])
    jsonschema.validate(json.loads(mixed[0].text), TOOL_CALL_SCHEMA)
    assert mixed[1].text == alone.text


def test_sampled_constrained_output_still_validates(smollm2_engine):
    batch = [ChatRequest(messages=r.messages, max_tokens=MAX_TOKENS, json_schema=TOOL_CALL_SCHEMA, temperature=1.0, seed=i)
             for i, r in enumerate(requests()[:4])]
    for result in smollm2_engine.generate(batch):
        jsonschema.validate(json.loads(result.text), TOOL_CALL_SCHEMA)


def test_logits_processor_works_with_model_generate(smollm2_engine):
    import torch

    from deployments.llm.structured import JsonSchemaLogitsProcessor

    tok, model = smollm2_engine.tokenizer, smollm2_engine.model
    ids = smollm2_engine.encode_prompt(requests()[1].messages)
    processor = JsonSchemaLogitsProcessor(smollm2_engine.json_grammar, [TOOL_CALL_SCHEMA])
    with torch.inference_mode():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=MAX_TOKENS, do_sample=False, logits_processor=[processor],
                             pad_token_id=smollm2_engine.pad_token_id)
    text = tok.decode(out[0, len(ids):], skip_special_tokens=True)
    jsonschema.validate(json.loads(text), TOOL_CALL_SCHEMA)
    # Same tokens as the engine's own loop.
    assert text == smollm2_engine.generate([requests()[1]])[0].text


def test_json_object_only(smollm2_engine):
    [result] = smollm2_engine.generate(
        [ChatRequest(messages=[{"role": "user", "content": "Give me a JSON object about a cat."}], max_tokens=48,
                     json_schema={"type": "object", "properties": {"name": {"type": "string", "maxLength": 20},
                                                                    "age": {"type": "integer"}},
                                  "required": ["name", "age"]})]
    )
    data = json.loads(result.text)
    assert isinstance(data["name"], str) and isinstance(data["age"], int)


def test_invalid_schema_is_a_clear_error(smollm2_engine):
    from deployments.llm.structured import InvalidJsonSchemaError

    with pytest.raises(InvalidJsonSchemaError, match="JSON schema"):
        smollm2_engine.generate([ChatRequest(messages=[{"role": "user", "content": "x"}], max_tokens=4,
                                             json_schema={"type": "no-such-type"})])


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__]))
