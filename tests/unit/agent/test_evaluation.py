"""Task-based agent evaluation: suites load with clear errors, runs are judged on status, answer and tools."""

from __future__ import annotations

from pathlib import Path

import pytest

from deployments.agent.evaluation import AgentTask, AgentTaskError, failed_to_run, load_tasks, score, summarize

REPO = Path(__file__).resolve().parents[3]


def _run(status="succeeded", answer="17*23 = 391", **kw):
    return {"id": "r1", "status": status, "final_answer": answer, "steps": 2, "tokens_in": 100, "tokens_out": 20,
            "cost_usd": 0.0, **kw}


def _tool_step(name, ok=True, kind="tool"):
    return {"kind": kind, "tool_call": {"name": name, "version": "1.0.0", "arguments": {}},
            "observation": {"ok": ok, "data": {}} if ok else {"ok": False, "error": {"type": "tool_error"}}}


TASK = AgentTask(id="multiply", input="What is 17*23?", expect_answer=r"\b391\b", expect_tools=("calculator",))


def test_a_succeeded_run_with_the_right_answer_and_tool_passes():
    outcome = score(TASK, _run(), [_tool_step("calculator"), {"kind": "final_answer", "tool_call": None}], 3.5)
    assert outcome.passed and outcome.reasons == [] and outcome.tools_used == ["calculator"]
    assert (outcome.steps, outcome.tokens_in, outcome.latency_s) == (2, 100, 3.5)


def test_a_succeeded_run_with_a_wrong_answer_fails():
    outcome = score(TASK, _run(answer="429"), [_tool_step("calculator")])
    assert not outcome.passed and "does not match" in outcome.reasons[0]


def test_an_answer_from_memory_without_the_expected_tool_fails():
    outcome = score(TASK, _run(answer="391"), [])
    assert not outcome.passed and outcome.reasons == ["expected tool(s) not used successfully: calculator"]


def test_a_failed_tool_call_does_not_count_as_used():
    outcome = score(TASK, _run(), [_tool_step("calculator", ok=False)])
    assert not outcome.passed and outcome.tools_used == []


def test_a_run_stopped_by_a_guardrail_fails_with_its_status():
    run = _run(status="loop_detected", answer=None, error={"type": "loop_detected", "message": "same action 3 times"})
    outcome = score(TASK, run, [_tool_step("calculator"), _tool_step("calculator")])
    assert not outcome.passed and outcome.status == "loop_detected"
    assert outcome.reasons[0] == "run ended loop_detected: same action 3 times"
    assert outcome.tools_used == ["calculator", "calculator"]


def test_summary_counts_success_rate_statuses_and_latency():
    outcomes = [score(TASK, _run(), [_tool_step("calculator")], 2.0),
                score(TASK, _run(status="max_steps", answer=None), [], 10.0),
                failed_to_run(TASK, "HTTP 503", 1.0)]
    s = summarize(outcomes)
    assert (s["runs"], s["passed"]) == (3, 1) and s["success_rate"] == pytest.approx(1 / 3)
    assert s["statuses"] == {"succeeded": 1, "max_steps": 1, "error": 1}
    assert s["per_task"] == {"multiply": {"runs": 3, "passed": 1}}
    assert s["latency_s"] == {"p50": 2.0, "p95": 10.0, "max": 10.0}
    assert summarize([])["success_rate"] == 0.0


def test_the_shipped_task_suite_loads():
    tasks = load_tasks(REPO / "load_tests" / "agent_tasks.yaml")
    assert len(tasks) >= 5 and len({t.id for t in tasks}) == len(tasks)


@pytest.mark.parametrize(("text", "message"), [
    ("tasks: []", "non-empty list"),
    ("- {id: a, input: x}\n- {id: a, input: y}", "repeated: a"),
    ("- {id: a, input: x, expect_answer: '('}", "not a valid regular expression"),
    ("- {id: a, input: x, surprise: 1}", "task #1"),
    ("- {id: a, input: [unclosed", "not valid YAML"),
])
def test_bad_suites_get_clear_errors(tmp_path, text, message):
    path = tmp_path / "suite.yaml"
    path.write_text(text)
    with pytest.raises(AgentTaskError, match=message):
        load_tasks(path)
    with pytest.raises(AgentTaskError, match="not found"):
        load_tasks(tmp_path / "missing.yaml")


def test_an_image_answer_must_cite_an_artifact_this_run_produced():
    task = AgentTask(id="image", input="draw a fox", expect_tools=("generate_image",), expect_own_artifact=True)
    gen = {"kind": "tool", "tool_call": {"name": "generate_image", "version": "1.0.0", "arguments": {}},
           "observation": {"ok": True, "data": {"artifact_ids": ["art_0a1b"]}, "images": [{"artifact_id": "art_0a1b"}]}}
    assert score(task, _run(answer="Here it is: art_0a1b"), [gen]).passed
    made_up = score(task, _run(answer="Here it is: art_ffff"), [gen])
    assert not made_up.passed and made_up.reasons == ["the answer cites no artifact id this run produced (produced: art_0a1b)"]
    assert not score(task, _run(answer="art_0a1b"), []).passed  # no tool call produced it
