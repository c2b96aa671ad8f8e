"""The command line as users run it: offline runs, verify, and the README's up/down on a fresh cluster."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
GENSERVE = [sys.executable, "-m", "serve.cli"]


def cli(*args: str, cwd: Path, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([*GENSERVE, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env)


def test_offline_run_writes_a_signed_image_that_verify_accepts(demo_models_dir, tmp_path):
    wf = json.loads((ROOT / "graphs" / "examples" / "txt2img.json").read_text())
    wf["3"]["inputs"]["steps"] = 3
    (tmp_path / "wf.json").write_text(json.dumps(wf))
    run = cli("run", "wf.json", "--models-dir", str(demo_models_dir), "--data-dir", "data", cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    path_str, artifact_id = run.stdout.strip().splitlines()[-1].split("\t")
    image = tmp_path / path_str
    assert image.is_file() and artifact_id.startswith("art_")
    ver = cli("verify", str(image), "--data-dir", "data", "--json", "--trust-dev-ca", cwd=tmp_path)
    assert ver.returncode == 0, ver.stderr[-3000:]
    report = json.loads(ver.stdout)
    assert report["c2pa"]["present"] and report["c2pa"]["valid"] and report["c2pa"]["trusted"]
    assert report["watermark"]["found"] and report["watermark"]["artifact_id"] == artifact_id
    table = cli("verify", str(image), "--data-dir", "data", cwd=tmp_path)
    assert table.returncode == 0 and "valid" in table.stdout


def test_offline_run_rejects_an_invalid_workflow_with_node_errors(demo_models_dir, tmp_path):
    wf = json.loads((ROOT / "graphs" / "examples" / "txt2img.json").read_text())
    wf["3"]["inputs"]["steps"] = -5
    (tmp_path / "bad.json").write_text(json.dumps(wf))
    run = cli("run", "bad.json", "--models-dir", str(demo_models_dir), "--data-dir", "data", cwd=tmp_path)
    assert run.returncode == 2
    assert "value_smaller_than_min" in run.stdout + run.stderr


def test_verify_refuses_a_non_image(tmp_path):
    (tmp_path / "x.png").write_bytes(b"hello")
    run = cli("verify", "x.png", "--data-dir", "data", cwd=tmp_path)
    assert run.returncode == 2 and "not a readable" in run.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.own_cluster
def test_up_detach_serves_the_demo_and_down_stops_it(demo_models_dir, tmp_path):
    """README command (a) minus the install: `genserve up --detach`, then a ComfyUI request, then `genserve down`."""
    import ray
    from ray import serve

    if ray.is_initialized():  # free the session's shared cluster first
        serve.shutdown()
        ray.shutdown()
    port, dash, gcs = _free_port(), _free_port(), _free_port()
    env = {"RAY_USAGE_STATS_ENABLED": "0"}
    try:
        up = cli("up", "--detach", "--port", str(port), "--dashboard-port", str(dash), "--ray-port", str(gcs),
                 "--models-dir", str(demo_models_dir),
                 "--data-dir", "data", cwd=tmp_path, timeout=900, env=env)
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        assert "demo image:" in up.stderr  # the txt2img example ran once the app was healthy
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/v1/health", timeout=10).status_code == 200
        assert "KSampler" in httpx.get(f"{base}/object_info", timeout=10).json()
        hist = httpx.get(f"{base}/history", timeout=10).json()
        assert any(h["status"]["completed"] for h in hist.values())
        # Ray dashboard answers (Ray's token auth is on by default: 401 without ~/.ray/auth_token)
        assert httpx.get(f"http://127.0.0.1:{dash}/api/version", timeout=10).status_code in (200, 401)
    finally:
        down = cli("down", "--ray-port", str(gcs), cwd=tmp_path, timeout=300, env=env)
    assert down.returncode == 0, down.stderr[-2000:]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/v1/health", timeout=2)
        except httpx.HTTPError:
            break
        time.sleep(1)
    else:
        pytest.fail("server still answering after genserve down")


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__]))
