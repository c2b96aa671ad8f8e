"""The composed Serve app: same pixels as in-process, cross-request batching, caching, cancellation."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from tests.utils.workflows import txt2img


def pixels(png_b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(png_b64))).convert("RGB"), dtype=np.int16)


def run_sync(env, wf, **kw):
    with env.client(timeout=600) as c:
        r = c.post("/v1/workflows/run", json={"workflow": wf, **kw})
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture(scope="module")
def inprocess_service(demo_models_dir, tmp_path_factory):
    from deployments.inprocess import build_inprocess_backends
    from serve.config import AppArgs
    from serve.demo_inputs import write_example_inputs
    from serve.service import GenServeService

    data = tmp_path_factory.mktemp("inproc")
    write_example_inputs(data / "input")
    args = AppArgs(data_dir=str(data), models_dir=str(demo_models_dir))
    return GenServeService(args, build_inprocess_backends(demo_models_dir))


def run_inprocess(service, wf) -> np.ndarray:
    from graphs.executor import ExecutionContext
    from graphs.workflow import parse_workflow

    parsed, result = service.validate(wf)
    assert result.ok
    ctx = ExecutionContext(prompt_id="inproc", workflow=parsed, backends=service.backends, sink=service.sink,
                           inputs=service.inputs)
    out = asyncio.run(service.executor.execute(parsed, result.output_node_ids, ctx))
    img = out.outputs["9"]["images"][0]
    data, _ = service.artifacts.read(kind=img["type"], filename=img["filename"], subfolder=img["subfolder"])
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)


def test_build_app_returns_application_with_named_stages(demo_models_dir):
    from ray.serve import Application

    from serve.app import build_app

    app = build_app({"models_dir": str(demo_models_dir)})
    assert isinstance(app, Application)
    names = set()

    def walk(node):
        names.add(node._bound_deployment.name)
        for arg in list(node._bound_args) + list(node._bound_kwargs.values()):
            if isinstance(arg, Application):
                walk(arg)

    walk(app)
    assert names == {"Ingress", "TextEncoder", "Sampler", "VAE"}


def test_same_workflow_same_pixels_inprocess_and_through_serve(serve_env, inprocess_service):
    wf = txt2img(seed=1234, steps=6, size=96, sampler="dpmpp_2m", scheduler="karras")
    served = pixels(run_sync(serve_env, wf)["images"][0]["data_base64"])
    local = run_inprocess(inprocess_service, wf)
    assert served.shape == local.shape == (96, 96, 3)
    # Float paths are identical; allow one 8-bit level for rounding at PNG encoding.
    assert np.abs(served - local).max() <= 1
    assert served.std() > 1  # not a blank image


def test_concurrent_requests_share_unet_calls_and_match_solo_results(serve_env):
    sampler = serve_env.handle("Sampler")
    seeds = [101, 102, 103, 104, 105, 106, 107, 108]
    # Solo run of one seed first (batch of 1).
    solo = pixels(run_sync(serve_env, txt2img(seed=seeds[0], steps=5, size=64, prompt="solo vs batch"))["images"][0]["data_base64"])
    sampler.reset_stats.remote().result()
    with ThreadPoolExecutor(len(seeds)) as pool:
        results = list(pool.map(lambda s: run_sync(serve_env, txt2img(seed=s, steps=5, size=64, prompt="solo vs batch")), seeds))
    stats = sampler.stats.remote().result()
    max_requests = max(call["requests"] for call in stats["unet_calls"])
    assert max_requests >= 2, stats  # requests from different clients shared one UNet forward
    assert any(call["rows"] == 2 * call["requests"] for call in stats["unet_calls"])  # cond + uncond per request
    images = [pixels(r["images"][0]["data_base64"]) for r in results]
    assert np.abs(images[0] - solo).max() <= 1  # same seed: same pixels alone or in a batch
    assert len({img.tobytes() for img in images}) == len(seeds)  # every request got its own result


def test_seed_only_change_skips_text_encoder(serve_env):
    wf1 = txt2img(seed=1, steps=3, size=64, prompt="a unique prompt for the cache test")
    first = run_sync(serve_env, wf1)
    wf2 = txt2img(seed=2, steps=3, size=64, prompt="a unique prompt for the cache test")
    second = run_sync(serve_env, wf2)
    assert {"4", "5", "6", "7"} <= set(second["cached_nodes"])
    assert "3" not in second["cached_nodes"]
    assert first["images"][0]["data_base64"] != second["images"][0]["data_base64"]
    third = run_sync(serve_env, wf2)  # identical resubmission: everything cached, same outputs
    assert set(third["cached_nodes"]) == {"3", "4", "5", "6", "7", "8", "9"}
    assert third["outputs"] == second["outputs"]


def test_interrupting_one_prompt_leaves_its_batch_mate_intact(serve_env):
    wf_keep = txt2img(seed=77, steps=30, size=64, prompt="keep me")
    wf_stop = txt2img(seed=78, steps=30, size=64, prompt="stop me")
    with serve_env.client() as c:
        keep_id = c.post("/prompt", json={"prompt": wf_keep}).json()["prompt_id"]
        stop_id = c.post("/prompt", json={"prompt": wf_stop}).json()["prompt_id"]
        # wait until the one to stop is sampling
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            events = c.get(f"/v1/jobs/{stop_id}/events").json()
            if any(e["type"] == "progress" for e in events):
                break
            time.sleep(0.05)
        assert c.post("/interrupt", json={"prompt_id": stop_id}).json()["interrupted"] == [stop_id]
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            keep, stop = c.get(f"/v1/jobs/{keep_id}").json(), c.get(f"/v1/jobs/{stop_id}").json()
            if keep["status"] in ("success", "error", "interrupted") and stop["status"] in ("success", "error", "interrupted"):
                break
            time.sleep(0.1)
        assert stop["status"] == "interrupted"
        assert keep["status"] == "success"
        hist = c.get(f"/history/{stop_id}").json()[stop_id]
        assert hist["status"]["status_str"] == "error"
        assert any(m[0] == "execution_interrupted" for m in hist["status"]["messages"])
    solo = pixels(run_sync(serve_env, txt2img(seed=77, steps=30, size=64, prompt="keep me again"))["images"][0]["data_base64"])
    assert solo.shape == (64, 64, 3)


def test_queue_and_history_routes_have_comfyui_shape(serve_env):
    with serve_env.client() as c:
        q = c.get("/queue").json()
        assert set(q) == {"queue_running", "queue_pending"}
        hist = c.get("/history", params={"max_items": 2}).json()
        assert len(hist) <= 2
        for pid, entry in hist.items():
            assert entry["prompt"][1] == pid and "outputs" in entry and "status" in entry
        stats = c.get("/system_stats").json()
        assert "system" in stats and stats["devices"]
        info = c.get("/object_info").json()
        assert "genserve-demo-sd15.safetensors" in info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0]


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__]))
