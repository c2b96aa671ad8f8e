"""Agent evaluation: run a task suite against a running genserve and report the success rate.

Each task (``load_tests/agent_tasks.yaml`` by default) is submitted as ``POST /v1/agent/runs``
and polled until it ends (a run still going after ``--timeout-s`` is cancelled, so the load never
exceeds ``--concurrency``); its run record and trajectory are then read back and scored by
``deployments/agent/evaluation.py``: a run passes only when it ends ``succeeded``, its final
answer matches the task's expectation and the expected tools were called successfully.
Tasks run ``--concurrency`` at a time (so the figures also show agent latency under that
load) and ``--repeat`` times each.

Usage:
  .venv/bin/python load_tests/eval_agent.py --host http://127.0.0.1:8188 [--tasks FILE]
      [--concurrency 2] [--repeat 1] [--only multiply,add] [--out load_tests/results/eval_agent.json]
      [--min-success-rate 0.5]
Exit status: 0, or 1 when ``--min-success-rate`` is given and not reached, 2 on bad arguments
or an unreachable service.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deployments.agent.constants import ACTIVE_STATUSES  # noqa: E402
from deployments.agent.evaluation import (  # noqa: E402
    AgentTask,
    AgentTaskError,
    TaskOutcome,
    failed_to_run,
    load_tasks,
    score,
    summarize,
)

DEFAULT_TASKS = ROOT / "load_tests" / "agent_tasks.yaml"
DEFAULT_OUT = ROOT / "load_tests" / "results" / "eval_agent.json"


POLL_S = 0.5


def run_task(client: httpx.Client, task: AgentTask, timeout_s: float) -> TaskOutcome:
    started = time.monotonic()
    try:
        r = client.post("/v1/agent/runs", json={"profile": task.profile, "input": task.input}, timeout=60)
        if r.status_code not in (200, 202):
            return failed_to_run(task, f"HTTP {r.status_code}: {r.text[:300]}", time.monotonic() - started)
        run = r.json()
        while run["status"] in ACTIVE_STATUSES:
            if time.monotonic() - started > timeout_s:
                client.post(f"/v1/agent/runs/{run['id']}/cancel", timeout=60)
                return failed_to_run(task, f"run {run['id']} still {run['status']} after {timeout_s:.0f} s; cancelled",
                                     time.monotonic() - started)
            time.sleep(POLL_S)
            poll = client.get(f"/v1/agent/runs/{run['id']}", timeout=60)
            poll.raise_for_status()
            run = poll.json()
        latency = time.monotonic() - started
        traj = client.get(f"/v1/agent/runs/{run['id']}/trajectory", timeout=60)
        traj.raise_for_status()
        body = traj.json()
        return score(task, body.get("run") or run, body["steps"], latency)
    except (httpx.HTTPError, ValueError, KeyError) as exc:  # ValueError: a body that is not JSON
        return failed_to_run(task, f"{type(exc).__name__}: {exc}", time.monotonic() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="http://127.0.0.1:8188", help="genserve base URL")
    parser.add_argument("--tasks", type=Path, default=DEFAULT_TASKS, help="task suite YAML")
    parser.add_argument("--only", default="", help="comma-separated task ids to run (default: all)")
    parser.add_argument("--concurrency", type=int, default=2, help="runs in flight at once")
    parser.add_argument("--repeat", type=int, default=1, help="runs per task")
    parser.add_argument("--timeout-s", type=float, default=900.0, help="limit of one run, client side")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON report")
    parser.add_argument("--min-success-rate", type=float, default=None, help="exit 1 below this rate (0..1)")
    args = parser.parse_args(argv)
    console = Console(width=max(Console().width, 140))
    if args.concurrency < 1 or args.repeat < 1:
        console.print("[red]--concurrency and --repeat must be at least 1[/red]")
        return 2
    try:
        tasks = load_tasks(args.tasks)
    except AgentTaskError as exc:
        console.print(f"[red]{exc}[/red]")
        return 2
    if args.only:
        wanted = {t.strip() for t in args.only.split(",") if t.strip()}
        unknown = wanted - {t.id for t in tasks}
        if unknown:
            console.print(f"[red]unknown task id(s): {', '.join(sorted(unknown))}[/red]")
            return 2
        tasks = [t for t in tasks if t.id in wanted]
        if not tasks:
            console.print("[red]--only selects no task[/red]")
            return 2

    with httpx.Client(base_url=args.host) as client:
        try:
            client.get("/v1/health", timeout=10).raise_for_status()
        except httpx.HTTPError as exc:
            console.print(f"[red]genserve at {args.host} is not reachable: {exc}[/red]")
            return 2
        jobs = [t for t in tasks for _ in range(args.repeat)]
        outcomes: list[TaskOutcome] = []
        started = time.monotonic()
        with Progress(console=console, transient=True) as progress, ThreadPoolExecutor(args.concurrency) as pool:
            bar = progress.add_task(f"{len(jobs)} agent runs", total=len(jobs))
            for outcome in pool.map(lambda t: run_task(client, t, args.timeout_s), jobs):
                outcomes.append(outcome)
                progress.advance(bar)
        wall_s = time.monotonic() - started

    table = Table(title=f"agent evaluation: {args.tasks.name} against {args.host}")
    for col in ("task", "status", "pass", "answer", "tools used", "steps", "tokens", "latency s"):
        table.add_column(col)
    for o in outcomes:
        table.add_row(o.task_id, o.status, "yes" if o.passed else "no", (o.final_answer or "")[:40],
                      ",".join(o.tools_used), str(o.steps), str(o.tokens_in + o.tokens_out), f"{o.latency_s:.1f}")
    console.print(table)
    summary = summarize(outcomes)
    summary.update({"concurrency": args.concurrency, "repeat": args.repeat, "wall_s": wall_s,
                    "runs_per_min": 60 * len(outcomes) / wall_s if wall_s else 0.0})
    console.print(
        f"success rate {summary['passed']}/{summary['runs']} = {summary['success_rate']:.0%}; "
        f"statuses {summary['statuses']}; latency p50 {summary['latency_s']['p50']:.1f} s, "
        f"p95 {summary['latency_s']['p95']:.1f} s at concurrency {args.concurrency}; "
        f"{summary['runs_per_min']:.2f} runs/min; mean steps {summary['steps_mean']:.1f}")
    for o in outcomes:
        if not o.passed:
            console.print(f"  {o.task_id}: {'; '.join(o.reasons)}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"summary": summary, "outcomes": [o.model_dump() for o in outcomes]}, indent=2))
    console.print(f"report: {args.out}")
    if args.min_success_rate is not None and summary["success_rate"] < args.min_success_rate:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
