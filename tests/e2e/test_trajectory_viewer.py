"""The trajectory viewer page in headless Chromium, against a real uvicorn server on 127.0.0.1.

A tiny FastAPI app mounts the agent router; a run (scripted policy double) goes through an
image generation (with an inline image), a parse error, a tool error and a final answer. Chromium
loads ``/v1/agent/runs/{id}/view``, and the test reads the rendered DOM (``--dump-dom``) and
takes a screenshot. Skipped only when no Chromium binary is installed.
"""

from __future__ import annotations

import io
import re
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.responses import Response
from PIL import Image
from pydantic import BaseModel

from deployments.agent.pricing import ModelPrice, PriceTable
from deployments.agent.profiles import AgentProfile
from deployments.agent.routes import router
from deployments.agent.runner import AgentRunner
from deployments.agent.service import AgentService
from deployments.agent.tools import Observation, Tool, ToolContext, default_registry
from serve.stores.agents import AgentStore
from tests.fakes.scripted_policy import ScriptedPolicyDouble

CHROMIUM = next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (apt-get install -y chromium)")


def red_png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (96, 96), (220, 40, 40)).save(buf, format="PNG")
    return buf.getvalue()


class ImageClientDouble:
    """Test double of `ImageEngineClient`: every run produces ``fox.png``, served by the app's ``/view``."""

    async def run_workflow(self, name: str, version: str | None, params: dict[str, Any]) -> dict[str, Any]:
        return {"artifact_ids": ["fox.png"], "prompt_id": "p1", "workflow": name, "workflow_version": "0123456789ab",
                "images": [{"artifact_id": "fox.png", "url": "/view?filename=fox.png&subfolder=&type=output"}]}

    async def get_artifact(self, artifact_id: str) -> dict[str, Any] | None:
        return None

    async def evaluate(self, artifact_id: str) -> dict[str, Any]:
        return {"sharpness": 0.0}


class BoomArgs(BaseModel):
    text: str


class BoomTool(Tool):
    name, version, description, args_model = "boom", "2.1.0", "Always fails.", BoomArgs

    async def run(self, args: BoomArgs, ctx: ToolContext) -> Observation:  # type: ignore[override]
        raise RuntimeError("the <b>tool</b> broke")


SCRIPT = [
    {"thought": "I should draw the fox first.", "action": "generate_image",
     "action_input": {"prompt": "a red fox in snow", "seed": 7}, "tokens_in": 120, "tokens_out": 30},
    "<script>alert('model output is text, not HTML')</script>",
    {"thought": "Try the other tool.", "action": "boom", "action_input": {"text": "x"}},
    {"thought": "The image is ready.", "final_answer": "Here is your fox: fox.png"},
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    registry = default_registry(ImageClientDouble(), freeze=False)
    registry.register(BoomTool())
    profile = AgentProfile(name="default", model="scripted-double", system_prompt="Test.",
                           allowed_tools=["generate_image", "boom", "calculator"], max_steps=8)
    prices = PriceTable(models={"scripted-double": ModelPrice(input_per_mtok=1000, output_per_mtok=2000)})
    store = AgentStore(f"sqlite:///{tmp_path}/genserve.db")
    runner = AgentRunner(registry, lambda p: ScriptedPolicyDouble(SCRIPT, model_name="scripted-double"), store,
                         {"default": profile}, prices)
    app = FastAPI()
    app.include_router(router)
    app.state.agent_service = AgentService(store, runner)
    png = red_png()

    @app.get("/view")
    def view(filename: str, subfolder: str = "", type: str = "output") -> Response:  # noqa: A002
        return Response(png, media_type="image/png")

    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(10)


def chromium(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--no-first-run", "--hide-scrollbars", "--virtual-time-budget=8000", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def test_viewer_renders_every_step(server, tmp_path):
    run = httpx.post(f"{server}/v1/agent/runs?wait=true", json={"profile": "default", "input": "Draw a fox"},
                     timeout=30).json()
    assert run["status"] == "succeeded"
    url = f"{server}/v1/agent/runs/{run['id']}/view"

    dom = chromium("--dump-dom", url).stdout
    assert 'data-loaded="true"' in dom, dom[-2000:]
    assert re.search(r'id="run-status" class="status succeeded">succeeded<', dom)
    cards = re.findall(r'<section class="step k-(\w+)[^"]*" data-index="(\d)"', dom)
    assert cards == [("tool", "0"), ("parse_error", "1"), ("tool", "2"), ("final_answer", "3")]
    # thought, action with version and arguments, observation, tokens, cost, latency
    assert "I should draw the fox first." in dom and "generate_image@1.0.0" in dom
    assert "a red fox in snow" in dom and "tokens 120 in / 30 out" in dom and "$0.180000" in dom
    assert re.search(r"\d+ ms \(model \d+ ms, tool \d+ ms\)", dom)
    # the image is inline, from the observation's URL
    assert re.search(r'<img src="http://127\.0\.0\.1:\d+/view\?filename=fox\.png[^"]*" alt="artifact fox\.png"', dom)
    # model and tool text are shown as text, never interpreted as HTML
    assert "&lt;script&gt;alert(" in dom and "<script>alert(" not in dom
    assert "tool_error: boom@2.1.0 raised RuntimeError: the &lt;b&gt;tool&lt;/b&gt; broke" in dom
    assert "Here is your fox: fox.png" in dom and "boom@2.1.0" in dom

    shot = tmp_path / "viewer.png"
    chromium(f"--screenshot={shot}", "--window-size=1100,1800", url)
    assert shot.is_file() and shot.stat().st_size > 20_000
    with Image.open(shot) as img:
        rgb = img.convert("RGB")
        # the inline 96x96 red image is on the page
        reds = sum(1 for px in rgb.getdata() if px[0] > 200 and px[1] < 60 and px[2] < 60)
    assert reds > 96 * 96 * 0.8
    keep = Path(__file__).with_name("_artifacts")
    if keep.is_dir():  # opt-in: create tests/e2e/_artifacts to keep the screenshot for a look
        shutil.copy(shot, keep / "trajectory_viewer.png")


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__]))
