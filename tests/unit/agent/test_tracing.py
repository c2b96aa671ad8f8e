"""OpenTelemetry spans with GenAI semantic-convention names, via the in-memory exporter."""

from __future__ import annotations

import pytest
from opentelemetry.trace import StatusCode

from deployments.agent import constants as C
from deployments.agent.runner import AgentRunner
from deployments.agent.tracing import AgentTracer, build_tracer
from tests.fakes.scripted_policy import ScriptedPolicyDouble, scripted_factory
from tests.unit.agent.conftest import MODEL, PRICES, calc, final, make_profile


async def test_spans_follow_genai_conventions(registry, store):
    tracer = build_tracer("memory")
    profile = make_profile()
    script = [calc("2*3"), {"thought": "x", "action": "raiser", "action_input": {"text": "k"}}, final("6")]
    runner = AgentRunner(registry, scripted_factory(ScriptedPolicyDouble(script, model_name=MODEL)), store,
                         {"test": profile}, PRICES, tracer)
    result = await runner.run("tr", "test", "2*3?")
    assert result.status == C.SUCCEEDED
    spans = tracer.memory_exporter.get_finished_spans()
    by_op: dict[str, list] = {}
    for span in spans:
        by_op.setdefault(span.attributes["gen_ai.operation.name"], []).append(span)
    assert sorted(by_op) == ["chat", "execute_tool", "invoke_agent"]
    (agent,) = by_op["invoke_agent"]
    assert agent.name == "invoke_agent test"
    assert agent.attributes["gen_ai.agent.name"] == "test" and agent.attributes["gen_ai.conversation.id"] == "tr"
    assert agent.attributes["gen_ai.request.model"] == MODEL
    assert agent.attributes["gen_ai.usage.input_tokens"] == 30 and agent.attributes["gen_ai.usage.output_tokens"] == 15
    assert agent.attributes["genserve.agent.status"] == C.SUCCEEDED
    assert len(by_op["chat"]) == 3
    chat = by_op["chat"][0]
    assert chat.name == f"chat {MODEL}" and chat.attributes["gen_ai.usage.input_tokens"] == 10
    assert chat.parent.span_id == agent.context.span_id
    tools = by_op["execute_tool"]
    assert [t.attributes["gen_ai.tool.name"] for t in tools] == ["calculator", "raiser"]
    assert tools[0].name == "execute_tool calculator" and tools[0].attributes["genserve.agent.tool.version"] == "1.1.0"
    assert tools[0].attributes["gen_ai.tool.call.id"] == "tr:0"
    assert tools[1].status.status_code == StatusCode.ERROR and tools[1].attributes["error.type"] == "tool_error"
    assert all(t.parent.span_id == agent.context.span_id for t in tools)
    assert "genserve.agent.thought" not in chat.attributes  # content is opt-in


def test_tracing_is_off_by_default(monkeypatch):
    monkeypatch.delenv("GENSERVE_AGENT_TRACING_EXPORTER", raising=False)
    assert not build_tracer().enabled and not AgentTracer.disabled().enabled
    assert build_tracer("console").enabled
    with pytest.raises(ValueError, match="unknown agent tracing exporter"):
        build_tracer("zipkin")


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__]))
