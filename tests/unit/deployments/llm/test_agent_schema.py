"""The agent's step schema compiles for constrained decoding with SmolLM2's real tokenizer (regression)."""

from __future__ import annotations

import pytest

from deployments.agent.image_client import HttpImageEngineClient
from deployments.agent.tools import action_json_schema, default_registry


def test_default_agent_step_schema_compiles_with_the_real_tokenizer(smollm2_gguf):
    from transformers import AutoTokenizer

    from deployments.llm.structured import JsonGrammar

    tok = AutoTokenizer.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name)
    grammar = JsonGrammar(tok, vocab_size=len(tok))
    registry = default_registry(HttpImageEngineClient("http://127.0.0.1:9"))
    for spec in registry.export_schema():  # one branch at a time names the culprit on failure
        grammar.compile(action_json_schema([spec]))
    grammar.compile(action_json_schema(registry.export_schema()))


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__]))
