"""The composed Serve app: same pixels as in-process, cross-request batching, caching, cancellation."""

from __future__ import annotations

import asyncio
import base64
import io
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
        dep = node._bound_deployment
        names.add(dep.name)
        for arg in list(dep.init_args) + list(dep.init_kwargs.values()):
            if isinstance(arg, Application):
                walk(arg)

    walk(app)
    assert names == {"Ingress", "TextEncoder", "Sampler", "VAE", "LLM", "AgentRunner"}
    names.clear()
    walk(build_app({"models_dir": str(demo_models_dir), "agents": False}))
    assert names == {"Ingress", "TextEncoder", "Sampler", "VAE"}


def execute(backends, wf, prompt_id="t") -> np.ndarray:
    """Run a workflow with the given backends; return the raw decoded float pixels (before provenance)."""
    from graphs.executor import ExecutionContext, Executor
    from graphs.registry import default_registry
    from graphs.workflow import parse_workflow
    from tests.fakes.backends import MemorySinkDouble

    parsed = parse_workflow(wf)
    sink = MemorySinkDouble()
    ctx = ExecutionContext(prompt_id=prompt_id, workflow=parsed, backends=backends, sink=sink)
    asyncio.run(Executor(default_registry(), None).execute(parsed, ["9"], ctx))
    return sink.saved[0][1]


def execute_many(backends, wfs) -> list[np.ndarray]:
    from graphs.executor import ExecutionContext, Executor
    from graphs.registry import default_registry
    from graphs.workflow import parse_workflow
    from tests.fakes.backends import MemorySinkDouble

    async def one(i, wf):
        parsed = parse_workflow(wf)
        sink = MemorySinkDouble()
        ctx = ExecutionContext(prompt_id=f"many-{i}", workflow=parsed, backends=backends, sink=sink)
        await Executor(default_registry(), None).execute(parsed, ["9"], ctx)
        return sink.saved[0][1]

    async def main():
        return await asyncio.gather(*(one(i, wf) for i, wf in enumerate(wfs)))

    return asyncio.run(main())


def serve_backends(env):
    from serve.backends import build_serve_backends

    return build_serve_backends(env.handle("TextEncoder"), env.handle("Sampler"), env.handle("VAE"))


def test_same_workflow_same_pixels_inprocess_and_through_serve(serve_env, inprocess_service):
    wf = txt2img(seed=1234, steps=6, size=96, sampler="dpmpp_2m", scheduler="karras")
    served = execute(serve_backends(serve_env), wf)
    local = execute(inprocess_service.backends, wf)
    assert served.shape == local.shape == (1, 96, 96, 3) if served.ndim == 4 else served.shape == (96, 96, 3)
    # Through DeploymentHandles the float pixels match the in-process stages.
    np.testing.assert_allclose(served, local, atol=1e-4)
    assert served.std() > 0.01  # not a blank image


def test_same_workflow_over_http_differs_only_by_the_watermark(serve_env, inprocess_service):
    wf = txt2img(seed=4321, steps=4, size=256)
    served = pixels(run_sync(serve_env, wf)["images"][0]["data_base64"])
    local = np.clip(execute(inprocess_service.backends, wf) * 255 + 0.5, 0, 255).astype(np.int16)
    diff = np.abs(served - local)
    # The invisible watermark (about 41 dB PSNR) is the only change after decoding.
    psnr = 10 * np.log10(255**2 / max(float((diff.astype(np.float64) ** 2).mean()), 1e-9))
    assert psnr > 35, psnr


def test_concurrent_requests_share_unet_calls_and_match_solo_results(serve_env):
    sampler = serve_env.handle("Sampler")
    backends = serve_backends(serve_env)
    seeds = [101, 102, 103, 104, 105, 106, 107, 108]
    wfs = [txt2img(seed=s, steps=5, size=64, prompt="solo vs batch", sampler=("euler", "heun", "dpmpp_2m", "euler_ancestral")[i % 4],
                   cfg=5.0 + i) for i, s in enumerate(seeds)]
    solo = execute(backends, wfs[3])  # batch of 1
    sampler.reset_stats.remote().result()
    batched = execute_many(backends, wfs)  # 8 concurrent requests
    stats = sampler.stats.remote().result()
    max_requests = max(call["requests"] for call in stats["unet_calls"])
    assert max_requests >= 4, stats  # requests from different callers shared one UNet forward
    assert any(call["rows"] == 2 * call["requests"] and call["requests"] > 1 for call in stats["unet_calls"])
    np.testing.assert_allclose(batched[3], solo, atol=1e-4)  # same pixels alone or in a batch
    assert len({img.tobytes() for img in batched}) == len(seeds)  # every request got its own result


def test_concurrent_http_requests_are_batched(serve_env):
    sampler = serve_env.handle("Sampler")
    sampler.reset_stats.remote().result()
    seeds = [201, 202, 203, 204, 205, 206]
    with ThreadPoolExecutor(len(seeds)) as pool:
        results = list(pool.map(lambda s: run_sync(serve_env, txt2img(seed=s, steps=5, size=64, prompt="http batch")), seeds))
    assert all(r["status"] == "success" for r in results)
    stats = sampler.stats.remote().result()
    assert max(call["requests"] for call in stats["unet_calls"]) >= 2, stats


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
    serve_env.handle("Sampler").reset_stats.remote().result()
    # NOTE: the prompt to stop samples for far longer than its batch mate, so the interrupt
    # always lands mid-sampling however slow the machine is; its progress shows it stopped early.
    wf_keep = txt2img(seed=77, steps=40, size=128, prompt="keep me")
    wf_stop = txt2img(seed=78, steps=3000, size=128, prompt="stop me")
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
        steps_done = max(e["data"]["value"] for e in c.get(f"/v1/jobs/{stop_id}/events").json() if e["type"] == "progress")
        assert steps_done < 3000
    calls = serve_env.handle("Sampler").stats.remote().result()["unet_calls"]
    assert any(call["requests"] == 2 for call in calls)  # the two prompts did share a batch


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
