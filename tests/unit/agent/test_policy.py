"""`parse_policy_output` and `LLMPolicy` against a duck-typed chat engine double."""

from __future__ import annotations

import pytest

from deployments.agent import constants as C
from deployments.agent.policy import LLMPolicy, PolicyParseError, PolicyUnavailableError, parse_policy_output
from deployments.agent.runner import AgentRunner
from deployments.agent.tools import default_registry
from tests.unit.agent.conftest import PRICES, ChatLLMDouble, make_profile


@pytest.mark.parametrize("text, action, args", [
    ('{"thought": "t", "action": "calculator", "action_input": {"expression": "1+1"}}', "calculator", {"expression": "1+1"}),
    ('Sure!\n```json\n{"thought": "t", "action": "calculator", "action_input": {"expression": "2"}}\n```', "calculator",
     {"expression": "2"}),
    ('Here: {"thought": "t", "action": "echo", "action_input": "{\\"text\\": \\"x\\"}"} ok', "echo", {"text": "x"}),
    ('Thought: add\nAction: calculator\nAction Input: {"expression": "3+4"}', "calculator", {"expression": "3+4"}),
])
def test_parse_actions(text, action, args):
    step = parse_policy_output(text)
    assert (step.action, step.action_input, step.final_answer) == (action, args, None)


@pytest.mark.parametrize("text, answer", [
    ('{"thought": "t", "action": "final_answer", "action_input": {"answer": "42"}}', "42"),
    ('{"thought": "t", "action": "final_answer", "action_input": "42"}', "42"),
    ('{"thought": "t", "final_answer": "42"}', "42"),
    ("Thought: easy\nFinal Answer: 42", "42"),
])
def test_parse_final_answers(text, answer):
    assert parse_policy_output(text).final_answer == answer


@pytest.mark.parametrize("text, message", [
    ("", "empty"), ("the answer is 4", "no JSON object"), ('{"thought": "no action"}', "no 'action'"),
    ('{"thought": "t", "action": "calc", "action_input": [1]}', "must be a JSON object"),
    ('{"thought": "t", "action": "final_answer", "action_input": {}}', "answer"),
    ('{"thought": "t", "action": "calc", "action_input": {"a": 1', "no JSON object"),
])
def test_parse_errors(text, message):
    with pytest.raises(PolicyParseError, match=message):
        parse_policy_output(text)


async def test_llm_policy_uses_json_schema_and_counts_tokens():
    llm = ChatLLMDouble(['{"thought": "t", "action": "calculator", "action_input": {"expression": "1+1"}}'])
    policy = LLMPolicy(llm, "m", max_tokens=64, temperature=0.3, seed=5)
    tools = default_registry().export_schema()
    step = await policy.next_step([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1+1"}], tools)
    assert step.action == "calculator" and (step.tokens_in, step.tokens_out) == (100, 20)
    call = llm.calls[0]
    assert call["json_schema"]["anyOf"][0]["properties"]["action"]["const"] == "calculator"
    assert (call["max_tokens"], call["temperature"], call["seed"]) == (64, 0.3, 5)
    system = call["messages"][0]["content"]
    assert system.startswith("Be brief.") and "calculator@1.1.0" in system and len(call["messages"]) == 2


async def test_llm_policy_without_schema_parses_free_text_and_reports_malformed_output():
    llm = ChatLLMDouble(["I refuse to use JSON"])
    policy = LLMPolicy(llm, "m", json_schema_mode=False)
    step = await policy.next_step([{"role": "user", "content": "x"}], [])
    assert llm.calls[0]["json_schema"] is None
    assert step.parse_error and step.raw_text == "I refuse to use JSON" and step.tokens_out == 20


async def test_unreachable_llm_raises_policy_unavailable():
    policy = LLMPolicy(ChatLLMDouble([ConnectionRefusedError("connection refused")]), "remote-model")
    with pytest.raises(PolicyUnavailableError, match="remote-model.*unreachable"):
        await policy.next_step([{"role": "user", "content": "x"}], [])


async def test_engine_unavailable_errors_are_recognised_by_name():
    class EngineUnavailableError(RuntimeError):  # the name deployments/llm uses
        pass

    policy = LLMPolicy(ChatLLMDouble([EngineUnavailableError("endpoint http://x:9 refused")]), "remote")
    with pytest.raises(PolicyUnavailableError, match="refused"):
        await policy.next_step([{"role": "user", "content": "x"}], [])
    policy = LLMPolicy(ChatLLMDouble([ValueError("a bug")]), "m")
    with pytest.raises(ValueError):
        await policy.next_step([{"role": "user", "content": "x"}], [])


async def test_runner_with_llm_policy_end_to_end(store):
    llm = ChatLLMDouble([
        'Thought: multiply\nAction: calculator\nAction Input: {"expression": "6*7"}',
        '{"thought": "I have it", "action": "final_answer", "action_input": {"answer": "42"}}',
    ])
    profile = make_profile(allowed_tools=["calculator"], max_tokens_per_step=128)
    runner = AgentRunner(default_registry(), lambda p: LLMPolicy(llm, p.model, max_tokens=p.max_tokens_per_step),
                         store, {"test": profile}, PRICES)
    result = await runner.run("llm", "test", "6 times 7?")
    assert result.status == C.SUCCEEDED and result.final_answer == "42" and result.tokens_in == 200
    assert "untrusted" in llm.calls[1]["messages"][-1]["content"]


async def test_runner_with_unreachable_llm_records_error(store):
    import httpx

    llm = ChatLLMDouble([httpx.ConnectError("All connection attempts failed")])
    profile = make_profile(allowed_tools=["calculator"])
    runner = AgentRunner(default_registry(), lambda p: LLMPolicy(llm, p.model), store, {"test": profile}, PRICES)
    result = await runner.run("down", "test", "hi")
    assert result.status == C.ERROR and result.error["type"] == "llm_unavailable"
    assert "ConnectError" in store.get_run("down").error["message"]


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__]))
