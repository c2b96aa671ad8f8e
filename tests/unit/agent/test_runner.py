"""The ReAct loop and every guardrail, driven by the scripted policy double (deterministic, no model)."""

from __future__ import annotations

import asyncio
import json

import pytest

from deployments.agent import constants as C
from deployments.agent.policy import PolicyStep, PolicyUnavailableError
from deployments.agent.pricing import PriceTable
from deployments.agent.runner import CancelToken, LoopDetector, action_signature, wrap_observation
from deployments.agent.tools import Observation
from tests.fakes.scripted_policy import ScriptedPolicyDouble
from tests.unit.agent.conftest import INJECTION, STEP_COST, calc, final


def echo(text: str) -> dict:
    return {"thought": "echo it", "action": "echo", "action_input": {"text": text}}


# -- happy path -----------------------------------------------------------------------------------


async def test_happy_path_calculator(make_runner, store):
    runner, policy, profile = make_runner([calc("17 * 23"), final("391")])
    result = await runner.run("r1", "test", "What is 17 * 23?", CancelToken())

    assert result.status == C.SUCCEEDED and result.final_answer == "391"
    assert (result.steps, result.tokens_in, result.tokens_out) == (2, 20, 10)
    assert result.cost_usd == pytest.approx(2 * STEP_COST)
    steps = store.steps("r1")
    assert [s.kind for s in steps] == [C.STEP_TOOL, C.STEP_FINAL]
    first = steps[0]
    assert (first.tool, first.tool_version, first.arguments) == ("calculator", "1.1.0", {"expression": "17 * 23"})
    assert first.observation["ok"] is True and first.observation["data"]["result"] == 391
    assert first.tokens_in == 10 and first.tokens_out == 5 and first.cost_usd == pytest.approx(STEP_COST)
    assert first.latency_ms >= 0 and first.llm_latency_ms is not None and first.tool_latency_ms is not None
    assert steps[1].arguments == {"answer": "391"}
    run = store.get_run("r1")
    assert run.status == C.SUCCEEDED and run.final_answer == "391" and run.finished_at is not None
    assert (run.steps, run.tokens_in, run.tokens_out) == (2, 20, 10)
    assert run.tools["calculator"] == "1.1.0"  # the exact tool versions the run could use
    assert run.profile_snapshot["max_steps"] == profile.max_steps
    # The model saw the observation of step 1 as labelled, untrusted data.
    last = policy.calls[1]["messages"][-1]["content"]
    assert '<tool_observation tool="calculator" version="1.1.0" trust="untrusted">' in last and "391" in last


async def test_generate_image_tool_records_images(make_runner, store, image_client):
    script = [{"thought": "draw", "action": "generate_image", "action_input": {"prompt": "a red fox", "seed": 7}},
              final("done")]
    runner, _, _ = make_runner(script)
    result = await runner.run("img", "test", "Draw a fox")
    assert result.status == C.SUCCEEDED
    obs = store.steps("img")[0].observation
    assert obs["data"]["artifact_ids"] == ["txt2img_00001_.png"]
    assert obs["images"][0]["url"].startswith("/view?filename=txt2img_00001_.png")
    assert image_client.calls[0] == ("run_workflow", ("txt2img", None, {"prompt": "a red fox", "seed": 7}))


# -- limits -----------------------------------------------------------------------------------------


async def test_max_steps(make_runner, store):
    runner, _, _ = make_runner([calc(f"{i} + 1") for i in range(10)], max_steps=3)
    result = await runner.run("ms", "test", "count")
    assert result.status == C.MAX_STEPS and result.error["type"] == "max_steps"
    assert len(store.steps("ms")) == 3 and store.get_run("ms").status == C.MAX_STEPS


async def test_budget_exceeded_by_tokens_stops_before_the_tool_runs(make_runner, store, tools):
    runner, _, _ = make_runner([echo("a"), echo("b"), echo("c")], max_tokens=25)  # 15 tokens per step
    result = await runner.run("bt", "test", "go")
    assert result.status == C.BUDGET_EXCEEDED and result.error["type"] == "max_tokens"
    steps = store.steps("bt")
    assert [s.kind for s in steps] == [C.STEP_TOOL, C.STEP_GUARDRAIL]
    assert steps[1].observation["error"]["type"] == C.OBS_BUDGET_EXCEEDED
    assert tools["echo"].runs == 1  # the over-budget action never ran
    assert store.get_run("bt").tokens_in + store.get_run("bt").tokens_out == 30


async def test_budget_exceeded_by_cost(make_runner, store):
    runner, _, _ = make_runner([calc("1+1"), calc("2+2"), calc("3+3")], max_cost_usd=0.03)  # $0.02 per step
    result = await runner.run("bc", "test", "go")
    assert result.status == C.BUDGET_EXCEEDED and result.error["type"] == "max_cost"
    assert result.cost_usd == pytest.approx(0.04)
    assert store.get_run("bc").cost_usd == pytest.approx(0.04)
    assert len(store.steps("bc")) == 2


async def test_cost_limit_without_a_price_is_a_clear_error(make_runner, store):
    runner, _, _ = make_runner([final("x")], prices=PriceTable(), max_cost_usd=1.0)
    result = await runner.run("np", "test", "go")
    assert result.status == C.ERROR and "no price for model" in result.error["message"]
    assert store.get_run("np").status == C.ERROR


async def test_wall_clock_timeout_during_model_call(make_runner, store):
    runner, _, _ = make_runner([calc("1+1"), ScriptedPolicyDouble.HANG], timeout_s=0.3)
    result = await runner.run("to", "test", "go")
    assert result.status == C.BUDGET_EXCEEDED and result.error["type"] == "timeout"
    assert len(store.steps("to")) == 1  # the finished step is kept
    assert result.duration_s < 5


async def test_wall_clock_timeout_during_tool_keeps_the_partial_step(make_runner, store):
    runner, _, _ = make_runner([{"thought": "wait", "action": "hanger", "action_input": {"text": "x"}}],
                               timeout_s=0.3, tool_timeout_s=60)
    result = await runner.run("tt", "test", "go")
    assert result.status == C.BUDGET_EXCEEDED and result.error["type"] == "timeout"
    (step,) = store.steps("tt")
    assert step.tool == "hanger" and step.observation["error"]["type"] == C.OBS_BUDGET_EXCEEDED
    assert step.tokens_in == 10  # the spent tokens are accounted for


# -- loops ------------------------------------------------------------------------------------------


async def test_loop_detected_for_repeated_action(make_runner, store, tools):
    runner, _, _ = make_runner([echo("same")] * 5, loop_repeat_threshold=3)
    result = await runner.run("lr", "test", "go")
    assert result.status == C.LOOP_DETECTED
    steps = store.steps("lr")
    assert len(steps) == 3 and steps[-1].kind == C.STEP_GUARDRAIL
    assert steps[-1].observation["error"]["type"] == C.OBS_LOOP_DETECTED
    assert tools["echo"].runs == 2  # the looping call was not run a third time


async def test_loop_detected_for_ab_alternation(make_runner, store):
    runner, _, _ = make_runner([echo("a"), calc("1+1"), echo("a"), calc("1+1"), echo("a")], loop_alternation_cycles=2)
    result = await runner.run("ab", "test", "go")
    assert result.status == C.LOOP_DETECTED and "alternating" in result.error["message"]
    assert len(store.steps("ab")) == 4


def test_loop_detector_units():
    d = LoopDetector(repeat_threshold=3, alternation_cycles=3)
    assert [d.observe(s) for s in "ABABA"] == [None] * 5
    assert d.observe("B") is not None  # ABABAB: 3 cycles
    d = LoopDetector(repeat_threshold=2, alternation_cycles=2)
    assert d.observe("A") is None and d.observe("A") is not None
    assert action_signature("t", {"b": 1, "a": 2}) == action_signature("t", {"a": 2, "b": 1})


# -- bad actions ------------------------------------------------------------------------------------


async def test_tool_not_allowed_is_an_observation_and_never_runs(make_runner, store, tools):
    runner, _, _ = make_runner([echo("hi"), final("ok")], allowed_tools=["calculator"])
    result = await runner.run("na", "test", "go")
    assert result.status == C.SUCCEEDED
    obs = store.steps("na")[0].observation
    assert obs["ok"] is False and obs["error"]["type"] == C.OBS_TOOL_NOT_ALLOWED
    assert "allowed tools: calculator" in obs["error"]["message"]
    assert tools["echo"].runs == 0


async def test_unknown_tool(make_runner, store):
    runner, policy, _ = make_runner([{"thought": "?", "action": "teleport", "action_input": {}}, final("ok")])
    result = await runner.run("ut", "test", "go")
    assert result.status == C.SUCCEEDED
    step = store.steps("ut")[0]
    assert step.observation["error"]["type"] == C.OBS_UNKNOWN_TOOL and step.tool_version is None
    assert "teleport" in policy.calls[1]["messages"][-1]["content"]


async def test_invalid_arguments_are_rejected_before_the_tool_runs(make_runner, store, tools):
    script = [{"thought": "x", "action": "echo", "action_input": {"txt": "typo"}},
              {"thought": "x", "action": "echo", "action_input": {"text": "y" * 500}}, final("ok")]
    runner, _, _ = make_runner(script)
    result = await runner.run("ia", "test", "go")
    assert result.status == C.SUCCEEDED
    for step in store.steps("ia")[:2]:
        assert step.observation["error"]["type"] == C.OBS_INVALID_ARGUMENTS
        assert step.observation["error"]["details"] and step.tool_latency_ms is None
    assert tools["echo"].runs == 0


async def test_repeated_unusable_steps_fail_the_run(make_runner, store):
    script = ["not json at all", {"thought": "?", "action": "nope", "action_input": {}},
              {"thought": "x", "action": "echo", "action_input": {}}]
    runner, _, _ = make_runner(script, max_consecutive_errors=3)
    result = await runner.run("fa", "test", "go")
    assert result.status == C.FAILED and result.error["type"] == "no_progress"
    assert len(store.steps("fa")) == 3


async def test_tool_that_raises_becomes_an_observation(make_runner, store):
    runner, _, _ = make_runner([{"thought": "x", "action": "raiser", "action_input": {"text": "k"}}, final("recovered")])
    result = await runner.run("tr", "test", "go")
    assert result.status == C.SUCCEEDED and result.final_answer == "recovered"
    err = store.steps("tr")[0].observation["error"]
    assert err["type"] == C.OBS_TOOL_ERROR and "RuntimeError: boom: k" in err["message"]
    assert "Traceback" not in err["message"]


async def test_tool_that_hangs_times_out_as_an_observation(make_runner, store, tools):
    runner, _, _ = make_runner([{"thought": "x", "action": "hanger", "action_input": {"text": "k"}}, final("moved on")],
                               tool_timeout_s=0.2)
    result = await runner.run("th", "test", "go")
    assert result.status == C.SUCCEEDED
    step = store.steps("th")[0]
    assert step.observation["error"]["type"] == C.OBS_TOOL_TIMEOUT
    assert 150 <= step.tool_latency_ms < 3000
    await asyncio.sleep(0)
    assert tools["hanger"].cancelled


async def test_prompt_injection_in_observation_changes_no_limit(make_runner, store, tools):
    script = [{"thought": "read", "action": "injector", "action_input": {"text": str(i)}} for i in range(10)]
    runner, policy, profile = make_runner(script, max_steps=3, allowed_tools=["injector", "calculator"])
    result = await runner.run("pi", "test", "go")
    assert result.status == C.MAX_STEPS and len(store.steps("pi")) == 3
    assert profile.max_steps == 3 and runner.profiles["test"].allowed_tools == ("injector", "calculator")
    assert store.get_run("pi").profile_snapshot["max_steps"] == 3
    shown = policy.calls[1]["messages"][-1]["content"]
    assert 'trust="untrusted"' in shown and "IGNORE ALL PREVIOUS INSTRUCTIONS" in shown
    # The injected closing tag is escaped: the data block cannot be closed from inside.
    assert shown.count("</tool_observation>") == 1 and "<system>" not in shown
    assert "untrusted" in policy.calls[0]["messages"][0]["content"]  # the system prompt says so too
    # The stored observation keeps the exact tool output.
    assert store.steps("pi")[0].observation["data"]["page"] == INJECTION


def test_wrap_observation_truncates_long_output():
    text = wrap_observation("t", "1", Observation(data="x" * 10_000), limit=100)
    assert '"truncated": true' in text and len(text) < 600


# -- malformed model output -------------------------------------------------------------------------


async def test_malformed_model_output_is_recorded_and_fed_back(make_runner, store):
    runner, policy, _ = make_runner(["I think the answer is 4", '{"thought": "ok", "action": "final_answer", '
                                     '"action_input": {"answer": "4"}}'])
    result = await runner.run("mo", "test", "2+2?")
    assert result.status == C.SUCCEEDED and result.final_answer == "4"
    bad = store.steps("mo")[0]
    assert bad.kind == C.STEP_PARSE_ERROR and bad.raw_text == "I think the answer is 4"
    assert bad.observation["error"]["type"] == C.OBS_PARSE_ERROR and bad.tokens_in == 10
    assert "no JSON object found" in policy.calls[1]["messages"][-1]["content"]


# -- crashes, unreachable model, cancellation ---------------------------------------------------------


async def test_policy_crash_after_two_steps_keeps_the_steps(make_runner, store):
    runner, _, _ = make_runner([calc("1+1"), calc("2+2"), RuntimeError("model server exploded")])
    result = await runner.run("cr", "test", "go")
    assert result.status == C.ERROR and result.error["type"] == "policy_error"
    assert "model server exploded" in result.error["message"]
    assert len(store.steps("cr")) == 2
    run = store.get_run("cr")
    assert run.status == C.ERROR and run.steps == 2 and run.tokens_in == 20


async def test_unreachable_llm_ends_in_error(make_runner, store):
    runner, _, _ = make_runner([calc("1+1"), PolicyUnavailableError("LLM 'x' unreachable: ConnectError")])
    result = await runner.run("un", "test", "go")
    assert result.status == C.ERROR and result.error["type"] == "llm_unavailable"
    assert len(store.steps("un")) == 1


async def test_steps_are_persisted_before_the_next_begins(make_runner, store):
    seen: list[int] = []

    def check(messages):
        seen.append(len(store.steps("inc")))
        return calc(f"{len(seen)} * 2") if len(seen) < 4 else final("done")

    runner, _, _ = make_runner([check] * 4)
    await runner.run("inc", "test", "go")
    assert seen == [0, 1, 2, 3]


async def test_cancel_mid_tool_keeps_steps(make_runner, store, tools):
    script = [calc("1+1"), {"thought": "wait", "action": "hanger", "action_input": {"text": "x"}}]
    runner, _, _ = make_runner(script, tool_timeout_s=60)
    token = CancelToken()
    task = asyncio.create_task(runner.run("cm", "test", "go", token))
    await asyncio.wait_for(tools["hanger"].started.wait(), 5)
    token.cancel("user pressed stop")
    result = await asyncio.wait_for(task, 5)
    assert result.status == C.CANCELLED and result.error["message"] == "user pressed stop"
    steps = store.steps("cm")
    assert [s.tool for s in steps] == ["calculator", "hanger"]
    assert steps[1].observation["error"]["type"] == C.OBS_CANCELLED
    assert store.get_run("cm").status == C.CANCELLED


async def test_cancel_during_model_call(make_runner, store):
    runner, policy, _ = make_runner([calc("1+1"), ScriptedPolicyDouble.HANG])
    token = CancelToken()
    task = asyncio.create_task(runner.run("cp", "test", "go", token))
    while len(policy.calls) < 2:
        await asyncio.sleep(0.01)
    token.cancel()
    result = await asyncio.wait_for(task, 5)
    assert result.status == C.CANCELLED and len(store.steps("cp")) == 1


async def test_cancel_through_the_store_flag(make_runner, store, tools):
    runner, _, _ = make_runner([{"thought": "wait", "action": "hanger", "action_input": {"text": "x"}}],
                               tool_timeout_s=60, runner_kwargs={"cancel_poll_s": 0.05})
    task = asyncio.create_task(runner.run("cs", "test", "go"))
    await asyncio.wait_for(tools["hanger"].started.wait(), 5)
    store.request_cancel(run_id="cs")  # as another replica would
    result = await asyncio.wait_for(task, 5)
    assert result.status == C.CANCELLED and len(store.steps("cs")) == 1


async def test_task_cancellation_is_recorded(make_runner, store, tools):
    runner, _, _ = make_runner([{"thought": "wait", "action": "hanger", "action_input": {"text": "x"}}],
                               tool_timeout_s=60)
    task = asyncio.create_task(runner.run("tc", "test", "go"))
    await asyncio.wait_for(tools["hanger"].started.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert store.get_run("tc").status == C.CANCELLED and len(store.steps("tc")) == 1


async def test_unknown_profile_is_a_recorded_error(make_runner, store):
    runner, _, _ = make_runner([final("x")])
    result = await runner.run("up", "nope", "go")
    assert result.status == C.ERROR and "no agent profile 'nope'" in result.error["message"]
    assert store.get_run("up").status == C.ERROR


async def test_final_answer_written_as_an_action(make_runner, store):
    runner, _, _ = make_runner([{"thought": "t", "action": "final_answer", "action_input": {"answer": "7"}}])
    result = await runner.run("fa2", "test", "go")
    assert result.status == C.SUCCEEDED and result.final_answer == "7"


async def test_a_run_is_never_started_twice(make_runner, store):
    runner, policy, _ = make_runner([final("x"), final("y")])
    assert (await runner.run("twice", "test", "go")).status == C.SUCCEEDED
    again = await runner.run("twice", "test", "go")
    assert again.error["type"] == "not_queued" and len(policy.calls) == 1
    assert store.get_run("twice").final_answer == "x" and len(store.steps("twice")) == 1


async def test_every_status_is_final_and_recorded(make_runner, store):
    runner, _, _ = make_runner([PolicyStep(thought="t", final_answer="a", tokens_in=3, tokens_out=4)])
    result = await runner.run("fs", "test", "go")
    assert result.status in C.FINAL_STATUSES
    assert json.loads(json.dumps(store.get_run("fs").to_dict()))["status"] == C.SUCCEEDED


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__]))
