"""Executor behaviour with test-double backends: order, caching, events, errors, cancellation."""

from __future__ import annotations

import asyncio
import copy

import numpy as np
import pytest


from graphs.errors import ExecutionInterrupted, NodeExecutionError
from graphs.executor import ExecutionContext, Executor, OutputCache
from graphs.registry import default_registry
from graphs.workflow import parse_workflow
from tests.fakes.backends import MemoryInputsDouble, MemorySinkDouble, fake_backends
from tests.utils.workflows import example, txt2img

REG = default_registry()


class Recorder:
    def __init__(self):
        self.events = []

    async def __call__(self, event, data):
        self.events.append((event, data))

    def types(self):
        return [e for e, _ in self.events]

    def of(self, kind):
        return [d for e, d in self.events if e == kind]


def make_ctx(wf, backends, sink=None, inputs=None, prompt_id="p1"):
    rec = Recorder()
    ctx = ExecutionContext(prompt_id=prompt_id, workflow=parse_workflow(wf), backends=backends,
                           sink=sink or MemorySinkDouble(), inputs=inputs or MemoryInputsDouble(), emit=rec)
    return ctx, rec


async def run(executor, wf, backends, **kw):
    ctx, rec = make_ctx(wf, backends, **kw)
    result = await executor.execute(ctx.workflow, ["9"], ctx)
    return result, rec, ctx


async def test_runs_txt2img_and_emits_comfyui_events_in_order():
    backends = fake_backends()
    result, rec, ctx = await run(Executor(REG, OutputCache()), txt2img(), backends)
    types = rec.types()
    assert types[0] == "execution_start" and types[1] == "execution_cached"
    assert types[-2:] == ["execution_success", "executing"]
    assert rec.events[-1][1]["node"] is None
    assert rec.of("progress")[-1]["value"] == 4 and rec.of("progress")[-1]["max"] == 4
    assert rec.of("executed")[0]["node"] == "9"
    assert result.outputs["9"]["images"][0]["filename"].startswith("txt2img_")
    # dependency order: loader before encoders before sampler before decode before save
    executing = [d["node"] for d in rec.of("executing") if d["node"]]
    assert executing.index("4") < executing.index("6") < executing.index("3") < executing.index("8") < executing.index("9")
    assert all(d["prompt_id"] == "p1" for _, d in rec.events)


async def test_seed_only_change_reuses_loader_and_text_encodings():
    backends = fake_backends()
    ex = Executor(REG, OutputCache())
    await run(ex, txt2img(seed=1), backends)
    calls_before = len(backends.text_encoder.calls)
    result, rec, _ = await run(ex, txt2img(seed=2), backends)
    assert len(backends.text_encoder.calls) == calls_before  # no new encodes
    cached = rec.of("execution_cached")[0]["nodes"]
    assert set(cached) >= {"4", "5", "6", "7"}
    assert set(result.executed) == {"3", "8", "9"}


async def test_identical_resubmission_executes_nothing_and_returns_same_outputs():
    backends = fake_backends()
    ex = Executor(REG, OutputCache())
    first, _, _ = await run(ex, txt2img(), backends)
    samples = len(backends.sampler.calls)
    second, rec, _ = await run(ex, txt2img(), backends)
    assert second.executed == []
    assert len(backends.sampler.calls) == samples
    assert second.outputs == first.outputs
    assert rec.of("executed")[0]["output"] == first.outputs["9"]


async def test_without_cache_everything_runs_again():
    backends = fake_backends()
    ex = Executor(REG, None)
    await run(ex, txt2img(), backends)
    result, _, _ = await run(ex, txt2img(), backends)
    assert "3" in result.executed


async def test_independent_branches_run_concurrently():
    backends = fake_backends(step_delay=0.1)
    wf = txt2img(steps=5)
    # second branch: its own sampler and save
    wf["13"] = copy.deepcopy(wf["3"]); wf["13"]["inputs"]["seed"] = 99
    wf["18"] = {"class_type": "VAEDecode", "inputs": {"samples": ["13", 0], "vae": ["4", 2]}}
    wf["19"] = {"class_type": "SaveImage", "inputs": {"images": ["18", 0], "filename_prefix": "b"}}
    ctx, rec = make_ctx(wf, backends)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await Executor(REG, None).execute(ctx.workflow, ["9", "19"], ctx)
    elapsed = loop.time() - t0
    assert elapsed < 2 * 5 * 0.1 * 0.85  # both samplers overlapped (serial would take 1.0 s, overlapped 0.5 s)
    progress_nodes = [d["node"] for d in rec.of("progress")]
    first_3, last_3 = progress_nodes.index("3"), len(progress_nodes) - 1 - progress_nodes[::-1].index("3")
    assert any(n == "13" for n in progress_nodes[first_3:last_3])  # interleaved


async def test_node_failure_emits_execution_error_with_node():
    backends = fake_backends(fail_on_seed=13)
    ctx, rec = make_ctx(txt2img(seed=13), backends)
    with pytest.raises(NodeExecutionError) as info:
        await Executor(REG, None).execute(ctx.workflow, ["9"], ctx)
    assert info.value.node_id == "3"
    err = rec.of("execution_error")[0]
    assert err["node_id"] == "3" and err["node_type"] == "KSampler"
    assert err["exception_type"] == "RuntimeError" and "exploded" in err["exception_message"]
    assert "traceback" in err and err["traceback"] == []  # tracebacks stay in the logs


async def test_cancel_mid_sampling_interrupts():
    backends = fake_backends(step_delay=0.02)
    ctx, rec = make_ctx(txt2img(steps=50), backends)

    async def interrupt_soon():
        await asyncio.sleep(0.1)
        ctx.cancel.cancel()

    asyncio.create_task(interrupt_soon())
    with pytest.raises(ExecutionInterrupted):
        await Executor(REG, None).execute(ctx.workflow, ["9"], ctx)
    assert rec.of("execution_interrupted")[0]["node_id"] == "3"
    assert "execution_success" not in rec.types()


async def test_controlnet_hint_is_attached_to_positive_only_for_apply():
    backends = fake_backends()
    pose = np.full((1, 64, 64, 3), 0.5, np.float32)
    wf = example("controlnet_pose")
    wf["5"]["inputs"].update(width=64, height=64)
    ctx, _ = make_ctx(wf, backends, inputs=MemoryInputsDouble({"example_pose.png": pose}))
    await Executor(REG, None).execute(ctx.workflow, ["9"], ctx)
    req = backends.sampler.calls[0]
    assert len(req.positive[0].controls) == 1 and req.negative[0].controls == ()
    assert req.positive[0].controls[0].control_net.name == "genserve-demo-controlnet"


async def test_controlnet_advanced_attaches_to_both_with_percent_window():
    backends = fake_backends()
    edges = np.zeros((1, 64, 64, 3), np.float32)
    wf = example("controlnet_edges")
    wf["5"]["inputs"].update(width=64, height=64)
    ctx, _ = make_ctx(wf, backends, inputs=MemoryInputsDouble({"example_edges.png": edges}))
    await Executor(REG, None).execute(ctx.workflow, ["9"], ctx)
    req = backends.sampler.calls[0]
    hint_pos, hint_neg = req.positive[0].controls[0], req.negative[0].controls[0]
    assert hint_pos.end_percent == 0.8 and hint_neg.strength == 0.8


async def test_changed_input_image_invalidates_cache():
    backends = fake_backends()
    ex = Executor(REG, OutputCache())
    wf = example("img2img")
    inputs = MemoryInputsDouble({"example_source.png": np.zeros((1, 64, 64, 3), np.float32)})
    ctx, _ = make_ctx(wf, backends, inputs=inputs)
    await ex.execute(ctx.workflow, ["9"], ctx)
    inputs.images["example_source.png"] = np.ones((1, 64, 64, 3), np.float32)
    ctx, rec = make_ctx(wf, backends, inputs=inputs)
    result = await ex.execute(ctx.workflow, ["9"], ctx)
    assert "10" in result.executed  # LoadImage ran again


async def test_lora_and_upscale_workflow_runs():
    backends = fake_backends()
    wf = example("lora_hires_fix")
    ctx, rec = make_ctx(wf, backends)
    result = await Executor(REG, None).execute(ctx.workflow, ["9", "24"], ctx)
    assert set(result.outputs) == {"9", "24"}
    assert result.outputs["24"]["images"][0]["type"] == "temp"
    advanced = backends.sampler.calls[1]
    assert advanced.model.loras[0].name == "genserve-demo-lora.safetensors"
    assert advanced.start_at_step == 6 and advanced.latent.shape[-1] == 32  # upscaled 192 -> 256 px
    saved = ctx.sink.saved[0][1]
    assert saved.shape == (320, 320, 3)


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__]))
