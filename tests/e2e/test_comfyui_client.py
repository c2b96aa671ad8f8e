"""End to end over HTTP: drive the server the way ComfyUI's websocket example client does."""

from __future__ import annotations

import io
import json
import urllib.parse
import urllib.request
import uuid

import pytest
import websocket  # websocket-client, the library ComfyUI's example uses
from PIL import Image

from tests.utils.workflows import example, txt2img


def queue_prompt(base: str, prompt: dict, client_id: str) -> dict:
    data = json.dumps({"prompt": prompt, "client_id": client_id}).encode()
    req = urllib.request.Request(f"{base}/prompt", data=data, headers={"Content-Type": "application/json"})
    return json.loads(urllib.request.urlopen(req).read())


def get_history(base: str, prompt_id: str) -> dict:
    with urllib.request.urlopen(f"{base}/history/{prompt_id}") as resp:
        return json.loads(resp.read())


def get_image(base: str, filename: str, subfolder: str, folder_type: str) -> bytes:
    query = urllib.parse.urlencode({"filename": filename, "subfolder": subfolder, "type": folder_type})
    with urllib.request.urlopen(f"{base}/view?{query}") as resp:
        return resp.read()


def run_like_comfyui_example(base: str, prompt: dict) -> tuple[dict, list[dict], dict[str, list[bytes]]]:
    client_id = str(uuid.uuid4())
    ws = websocket.WebSocket()
    ws.connect(f"ws://{base.removeprefix('http://')}/ws?clientId={client_id}", timeout=300)
    messages = []
    try:
        prompt_id = queue_prompt(base, prompt, client_id)["prompt_id"]
        while True:
            out = ws.recv()
            if isinstance(out, str):
                message = json.loads(out)
                messages.append(message)
                if message["type"] == "executing":
                    data = message["data"]
                    if data["node"] is None and data["prompt_id"] == prompt_id:
                        break
    finally:
        ws.close()
    history = get_history(base, prompt_id)[prompt_id]
    images: dict[str, list[bytes]] = {}
    for node_id, node_output in history["outputs"].items():
        images[node_id] = [get_image(base, i["filename"], i["subfolder"], i["type"]) for i in node_output.get("images", [])]
    return history, messages, images


def test_websocket_example_client_gets_a_valid_png(serve_env):
    history, messages, images = run_like_comfyui_example(serve_env.base_url, txt2img(seed=5, steps=4, size=128))
    png = images["9"][0]
    img = Image.open(io.BytesIO(png))
    assert img.format == "PNG" and img.size == (128, 128)
    types = [m["type"] for m in messages]
    assert types[0] == "status"
    for expected in ("execution_start", "execution_cached", "executing", "progress", "executed", "execution_success"):
        assert expected in types
    assert history["status"]["status_str"] == "success" and history["status"]["completed"] is True
    progress = [m["data"] for m in messages if m["type"] == "progress"]
    assert progress[-1]["value"] == progress[-1]["max"] == 4


def test_controlnet_example_runs_end_to_end(serve_env):
    wf = example("controlnet_pose")
    wf["3"]["inputs"]["steps"] = 4
    history, _, images = run_like_comfyui_example(serve_env.base_url, wf)
    assert history["status"]["status_str"] == "success"
    assert Image.open(io.BytesIO(images["9"][0])).size == (256, 256)


def test_api_prefix_routes_work(serve_env):
    with serve_env.client() as c:
        assert c.get("/api/object_info/KSampler").json()["KSampler"]["output"] == ["LATENT"]
        assert "exec_info" in c.get("/api/prompt").json()


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__]))
