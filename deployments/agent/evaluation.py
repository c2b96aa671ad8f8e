"""Task-based evaluation of agent profiles: did the run end well, with the right answer and tools?

A task suite is a YAML list of :class:`AgentTask` (an input, the profile to run, a regular
expression the final answer must match and the tools the run must have used successfully).
:func:`score` judges one finished run from its public run record and trajectory (the JSON of
``GET /v1/agent/runs/{id}`` and ``.../trajectory``), so the same scoring works for runs made
in-process or over HTTP; :func:`summarize` turns outcomes into the success rate and the
figures operators compare between models and profiles. ``load_tests/eval_agent.py`` drives a
suite against a running service.

A run that ends ``succeeded`` with a wrong answer is a failure here: the status says the loop
ended cleanly, the evaluation says whether the agent did the task.

Usage::

    tasks = load_tasks("load_tests/agent_tasks.yaml")
    outcome = score(tasks[0], run_json, trajectory_json["steps"], latency_s=12.3)
    summarize([outcome])["success_rate"]
"""

from __future__ import annotations

import re
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

SUCCEEDED = "succeeded"


class AgentTaskError(ValueError):
    """A task suite file that cannot be read or is invalid."""


class AgentTask(BaseModel):
    """One task of a suite."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$", description="Unique name of the task.")
    input: str = Field(..., min_length=1, max_length=20000, description="What the user asks.")
    profile: str = Field("default", description="Agent profile to run.")
    expect_answer: str | None = Field(
        None, description="Regular expression the final answer must match (searched, case-insensitive).")
    expect_tools: tuple[str, ...] = Field((), description="Tools the run must have called successfully.")
    expect_own_artifact: bool = Field(
        False, description="The final answer must cite an artifact id that a tool returned in this run.")

    @field_validator("expect_answer")
    @classmethod
    def _compiles(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as exc:
                raise ValueError(f"expect_answer is not a valid regular expression: {exc}") from exc
        return v


class TaskOutcome(BaseModel):
    """The verdict on one run of one task."""

    task_id: str
    run_id: str | None
    status: str = Field(..., description="The run's final status (or 'error' when it could not be run).")
    passed: bool
    reasons: list[str] = Field(default_factory=list, description="Why it failed; empty when it passed.")
    final_answer: str | None = None
    tools_used: list[str] = Field(default_factory=list, description="Tools called successfully, in order.")
    steps: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0
    latency_s: float = 0.0


def load_tasks(path: str | Path) -> list[AgentTask]:
    """Reads a task suite: a YAML list of tasks, or a mapping with a ``tasks`` list.

    Raises:
        AgentTaskError: missing file, bad YAML, an invalid task or a repeated task id.
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AgentTaskError(f"task suite not found: {path}") from None
    except yaml.YAMLError as exc:
        raise AgentTaskError(f"task suite {path} is not valid YAML: {exc}") from exc
    items = raw.get("tasks") if isinstance(raw, dict) else raw
    if not isinstance(items, list) or not items:
        raise AgentTaskError(f"task suite {path} must be a non-empty list of tasks (or a mapping with 'tasks')")
    tasks: list[AgentTask] = []
    for i, item in enumerate(items):
        try:
            tasks.append(AgentTask.model_validate(item))
        except ValidationError as exc:
            raise AgentTaskError(f"task #{i + 1} in {path} is invalid: {exc}") from exc
    repeated = [k for k, n in Counter(t.id for t in tasks).items() if n > 1]
    if repeated:
        raise AgentTaskError(f"task ids must be unique in {path}; repeated: {', '.join(sorted(repeated))}")
    return tasks


def _ok_tools(steps: list[dict[str, Any]]) -> list[str]:
    used = []
    for step in steps:
        call, obs = step.get("tool_call"), step.get("observation")
        if step.get("kind") == "tool" and call and isinstance(obs, dict) and obs.get("ok"):
            used.append(call["name"])
    return used


def _artifact_ids(steps: list[dict[str, Any]]) -> set[str]:
    """Artifact ids in the run's successful tool observations (``data.artifact_id(s)``, ``images``)."""
    found: set[str] = set()
    for step in steps:
        obs = step.get("observation")
        if not isinstance(obs, dict) or not obs.get("ok"):
            continue
        data = obs.get("data") if isinstance(obs.get("data"), dict) else {}
        ids = list(data.get("artifact_ids") or []) + [data.get("artifact_id")]
        ids += [img.get("artifact_id") for img in obs.get("images") or [] if isinstance(img, dict)]
        found.update(i for i in ids if isinstance(i, str) and i)
    return found


def score(task: AgentTask, run: dict[str, Any], steps: list[dict[str, Any]], latency_s: float = 0.0) -> TaskOutcome:
    """Judges one finished run.

    Args:
        task (`AgentTask`): the task the run was made for.
        run (`dict`): the run record (``GET /v1/agent/runs/{id}``).
        steps (`list[dict]`): the trajectory's steps (``GET /v1/agent/runs/{id}/trajectory``).
        latency_s (`float`, *optional*): wall time the caller waited for the run.

    Returns:
        TaskOutcome: ``passed`` when the run succeeded, its answer matches ``expect_answer``,
        every tool in ``expect_tools`` was called successfully and, with
        ``expect_own_artifact``, the answer cites an artifact id a tool returned in this run.
    """
    status = str(run.get("status"))
    answer = run.get("final_answer")
    used = _ok_tools(steps)
    reasons: list[str] = []
    if status != SUCCEEDED:
        error = run.get("error") or {}
        reasons.append(f"run ended {status}" + (f": {error.get('message')}" if error.get("message") else ""))
    if task.expect_answer is not None and not (
        isinstance(answer, str) and re.search(task.expect_answer, answer, re.IGNORECASE)
    ):
        reasons.append(f"answer {answer!r} does not match /{task.expect_answer}/")
    missing = [t for t in task.expect_tools if t not in used]
    if missing:
        reasons.append(f"expected tool(s) not used successfully: {', '.join(missing)}")
    if task.expect_own_artifact:
        produced = _artifact_ids(steps)
        if not (isinstance(answer, str) and any(i in answer for i in produced)):
            reasons.append("the answer cites no artifact id this run produced"
                           + (f" (produced: {', '.join(sorted(produced))})" if produced else ""))
    return TaskOutcome(
        task_id=task.id, run_id=run.get("id"), status=status, passed=not reasons, reasons=reasons,
        final_answer=answer, tools_used=used, steps=int(run.get("steps") or len(steps)),
        tokens_in=int(run.get("tokens_in") or 0), tokens_out=int(run.get("tokens_out") or 0),
        cost_usd=float(run.get("cost_usd") or 0.0), latency_s=float(latency_s),
    )


def failed_to_run(task: AgentTask, message: str, latency_s: float = 0.0) -> TaskOutcome:
    """The outcome of a task whose run could not be made (HTTP error, timeout)."""
    return TaskOutcome(task_id=task.id, run_id=None, status="error", passed=False, reasons=[message],
                       latency_s=latency_s)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def summarize(outcomes: list[TaskOutcome]) -> dict[str, Any]:
    """Success rate and run figures over a list of outcomes (one per run).

    Returns:
        ``runs``, ``passed``, ``success_rate`` (0..1), ``statuses`` (count per final status),
        ``per_task`` (passed / runs per task id), ``latency_s`` (p50, p95, max), mean ``steps``,
        total ``tokens_in`` / ``tokens_out`` / ``cost_usd``.
    """
    if not outcomes:
        return {"runs": 0, "passed": 0, "success_rate": 0.0, "statuses": {}, "per_task": {}, "latency_s": {},
                "steps_mean": 0.0, "tokens_in": 0, "tokens_out": 0, "cost_usd": 0.0}
    per_task: dict[str, dict[str, int]] = {}
    for o in outcomes:
        entry = per_task.setdefault(o.task_id, {"runs": 0, "passed": 0})
        entry["runs"] += 1
        entry["passed"] += int(o.passed)
    latencies = [o.latency_s for o in outcomes]
    passed = sum(o.passed for o in outcomes)
    return {
        "runs": len(outcomes),
        "passed": passed,
        "success_rate": passed / len(outcomes),
        "statuses": dict(Counter(o.status for o in outcomes)),
        "per_task": per_task,
        "latency_s": {"p50": _percentile(latencies, 0.5), "p95": _percentile(latencies, 0.95), "max": max(latencies)},
        "steps_mean": statistics.fmean(o.steps for o in outcomes),
        "tokens_in": sum(o.tokens_in for o in outcomes),
        "tokens_out": sum(o.tokens_out for o in outcomes),
        "cost_usd": sum(o.cost_usd for o in outcomes),
    }
