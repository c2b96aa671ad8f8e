"""Short runs of the locust scenarios (``genserve loadtest``) and the agent evaluation, so they cannot rot."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_loadtest_smoke(serve_env, tmp_path):
    prefix = tmp_path / "smoke"
    genserve = Path(sys.executable).with_name("genserve")
    cmd = [str(genserve), "loadtest", "--host", serve_env.base_url, "-u", "2", "-r", "2", "-t", "20s",
           "-c", "ComfyUser", "-c", "NativeUser", "--csv", str(prefix), "--steps", "2", "--size", "64"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=180)
    print(proc.stdout[-4000:], proc.stderr[-4000:])
    stats = Path(f"{prefix}_stats.csv")
    assert stats.exists(), proc.stderr[-2000:]
    rows = {(r["Type"], r["Name"]): r for r in csv.DictReader(stats.open())}
    total = rows[("", "Aggregated")]
    assert int(total["Request Count"]) > 0
    assert int(total["Failure Count"]) == 0, Path(f"{prefix}_failures.csv").read_text()
    # Both scenarios got through end to end at least once.
    finished = {name: int(r["Request Count"]) for (_t, name), r in rows.items()}
    assert finished.get("/prompt", 0) >= 1, finished
    assert finished.get("comfy txt2img", 0) + finished.get("/v1/workflows/run", 0) >= 1, finished
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(Path(f"{prefix}_summary.json").read_text())
    assert summary["rows"][-1]["name"] == "Aggregated" and summary["rows"][-1]["error_rate"] == 0.0
    assert "p95 ms" in proc.stdout and "Aggregated" in proc.stdout


def test_agent_eval_smoke(serve_env, tmp_path):
    """One task of the agent suite through ``load_tests/eval_agent.py``: runs, scores and reports (any verdict)."""
    report = tmp_path / "eval.json"
    cmd = [sys.executable, str(REPO / "load_tests" / "eval_agent.py"), "--host", serve_env.base_url,
           "--only", "multiply", "--concurrency", "1", "--out", str(report)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    print(proc.stdout[-4000:], proc.stderr[-4000:])
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(report.read_text())
    [outcome] = data["outcomes"]
    assert outcome["task_id"] == "multiply" and outcome["run_id"]
    assert outcome["status"] in ("succeeded", "failed", "max_steps", "budget_exceeded", "loop_detected", "error")
    assert outcome["steps"] >= 1 and outcome["tokens_in"] > 0
    assert outcome["passed"] == (not outcome["reasons"])
    assert data["summary"]["runs"] == 1 and data["summary"]["success_rate"] in (0.0, 1.0)
    assert "success rate" in proc.stdout
    # a typo in a task id is a clear error, not an empty run
    bad = subprocess.run([*cmd[:4], "--only", "no-such-task"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "unknown task id(s): no-such-task" in bad.stdout


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-v", "-s"]))
