"""`build_agent_service` (production wiring with an LLM double) and the handle-backed service/LLM adapters."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from deployments.agent import constants as C
from deployments.agent.config import AgentRunnerConfig
from deployments.agent.service import HandleChatLLM, RemoteAgentService, RunNotActiveError, build_agent_service
from tests.unit.agent.conftest import ChatLLMDouble, ChatResult, FakeImageEngineClient


class MethodDouble:
    """Stands in for ``handle.<method>``: ``.remote(...)`` returns an awaitable, like a DeploymentResponse."""

    def __init__(self, fn):
        self.fn = fn
        self.calls: list[tuple] = []

    def remote(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        return self.fn(*args, **kwargs)


async def test_build_agent_service_runs_the_default_profile(tmp_path):
    llm = ChatLLMDouble([
        '{"thought": "draw", "action": "generate_image", "action_input": {"prompt": "a fox"}}',
        '{"thought": "done", "action": "final_answer", "action_input": {"answer": "made txt2img_00001_.png"}}',
    ])
    config = AgentRunnerConfig(database_url=f"sqlite:///{tmp_path}/g.db", tracing_exporter="none")
    service = build_agent_service(config, llm, image_client=FakeImageEngineClient())
    run = await service.submit(profile="default", input="Draw a fox", wait=True)
    assert run.status == C.SUCCEEDED and run.model == "smollm2-135m-instruct" and run.cost_usd == 0.0
    assert run.tools == {"calculator": "1.1.0", "generate_image": "1.0.0", "get_artifact": "1.0.0",
                         "evaluate_image": "1.0.0"}
    assert llm.calls[0]["json_schema"] is not None and llm.calls[0]["max_tokens"] == 384
    with pytest.raises(RunNotActiveError):
        service.cancel(run.id)


async def test_events_and_shutdown(tmp_path):
    config = AgentRunnerConfig(database_url=f"sqlite:///{tmp_path}/g.db")
    hang = asyncio.Event()

    class SlowLLM:
        async def chat(self, messages, **kw):
            if len(messages) > 2:
                await hang.wait()
            return ChatResult('{"thought": "t", "action": "calculator", "action_input": {"expression": "1+1"}}', 5, 5)

    service = build_agent_service(config, SlowLLM(), image_client=FakeImageEngineClient())
    run = await service.submit(profile="default", input="go")
    events = service.events(run.id)
    kind, step = await asyncio.wait_for(events.__anext__(), 5)
    assert kind == "step" and step.index == 0
    await service.shutdown()  # cancels the in-flight run; it is recorded
    kind, ended = await asyncio.wait_for(events.__anext__(), 5)
    assert kind == "end" and ended.status == C.CANCELLED
    await events.aclose()


async def test_remote_service_submits_through_the_handle(tmp_path):
    config = AgentRunnerConfig(database_url=f"sqlite:///{tmp_path}/g.db")
    llm = ChatLLMDouble(['{"thought": "t", "action": "final_answer", "action_input": {"answer": "hi"}}'])
    backend = build_agent_service(config, llm, image_client=FakeImageEngineClient())

    async def submit(profile, input, wait):  # noqa: A002
        return (await backend.submit(profile=profile, input=input, wait=wait)).to_dict()

    handle = SimpleNamespace(submit=MethodDouble(submit))
    remote = RemoteAgentService(backend.store, handle, backend.profiles)
    run = await remote.submit(profile="default", input="hello", wait=True)
    assert run.status == C.SUCCEEDED and run.final_answer == "hi"
    assert handle.submit.calls == [(("default", "hello", True), {})]
    assert [s.kind for s in remote.steps(run.id)] == [C.STEP_FINAL]


async def test_handle_chat_llm_forwards_keywords():
    async def chat(messages, **kw):
        return ChatResult("x", 1, 2)

    handle = SimpleNamespace(chat=MethodDouble(chat))
    result = await HandleChatLLM(handle).chat([{"role": "user", "content": "q"}], max_tokens=8, temperature=0.0,
                                              seed=1, json_schema={"type": "object"})
    assert result.tokens_out == 2
    assert handle.chat.calls[0][1] == {"max_tokens": 8, "temperature": 0.0, "seed": 1,
                                       "json_schema": {"type": "object"}, "stop": None}


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__]))
