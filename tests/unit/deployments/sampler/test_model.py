"""SamplerModel on tiny seeded diffusers models: batching, noise, cancellation, ControlNet."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deployments.sampler import k_sampling as ks
from deployments.sampler.model import SamplerCancelled, SamplerConfig, SamplerModel, _prepare_hint
from graphs.types import (
    ConditioningEntry,
    ControlHint,
    ControlNetRef,
    ModelRef,
    SampleRequest,
    SamplerOutput,
    SamplerProgress,
)
from tests.fakes.tiny_models import TINY_CROSS_ATTENTION_DIM, TinyModelLoader

CKPT = "tiny-sd15.safetensors"


@pytest.fixture(scope="module")
def loader() -> TinyModelLoader:
    return TinyModelLoader()


@pytest.fixture()
def model(loader) -> SamplerModel:
    return SamplerModel(SamplerConfig(max_batch_rows=256), loader)


def embedding(seed: int, length: int = 77) -> ConditioningEntry:
    rng = np.random.default_rng(seed)
    return ConditioningEntry(rng.standard_normal((1, length, TINY_CROSS_ATTENTION_DIM)).astype(np.float32))


def hint(strength: float = 1.0, start: float = 0.0, end: float = 1.0, name: str = "tiny-canny", seed: int = 5):
    image = np.random.default_rng(seed).random((1, 64, 64, 3)).astype(np.float32)
    return ControlHint(ControlNetRef(name), image, strength=strength, start_percent=start, end_percent=end)


def make_request(
    seed: int = 0,
    sampler_name: str = "euler",
    scheduler: str = "normal",
    cfg: float = 3.0,
    steps: int = 4,
    shape: tuple[int, int, int, int] = (1, 4, 8, 8),
    latent: np.ndarray | None = None,
    controls: tuple[ControlHint, ...] = (),
    prompt_seed: int = 100,
    prompt_length: int = 77,
    **kwargs,
) -> SampleRequest:
    positive = embedding(prompt_seed, prompt_length)
    for control in controls:
        positive = positive.with_control(control)
    return SampleRequest(
        model=ModelRef(CKPT),
        positive=[positive],
        negative=[embedding(prompt_seed + 1)],
        latent=np.zeros(shape, np.float32) if latent is None else latent,
        seed=seed,
        steps=steps,
        cfg=cfg,
        sampler_name=sampler_name,
        scheduler=scheduler,
        request_id=f"r{seed}",
        **kwargs,
    )


def run_all(model: SamplerModel, requests, is_cancelled=None):
    """Drive iter_batch; returns (per-tick event lists, final outputs by index)."""
    ticks = list(model.iter_batch(requests, is_cancelled))
    outputs = {}
    for events in ticks:
        for i, event in enumerate(events):
            if isinstance(event, SamplerOutput):
                outputs[i] = event
    return ticks, outputs


# --------------------------------------------------------------------------- batching


def test_batch_of_eight_matches_each_request_alone(model):
    requests = [
        make_request(seed=11, sampler_name="euler", cfg=3.0),
        make_request(seed=12, sampler_name="euler_ancestral", cfg=5.0, scheduler="karras"),
        make_request(seed=13, sampler_name="heun", cfg=1.0, steps=3),
        make_request(seed=14, sampler_name="dpmpp_2m", cfg=2.5, scheduler="exponential", steps=5),
        make_request(seed=15, sampler_name="dpmpp_2m_sde", cfg=4.0, scheduler="karras"),
        make_request(seed=16, sampler_name="uni_pc", cfg=2.0, steps=5, shape=(2, 4, 8, 8)),
        make_request(seed=17, sampler_name="lms", cfg=3.5, scheduler="simple", controls=(hint(0.8),)),
        make_request(seed=18, sampler_name="ddim", cfg=7.0, scheduler="ddim_uniform", prompt_seed=300),
    ]
    _, together = run_all(model, requests)
    assert sorted(together) == list(range(8))
    for i, request in enumerate(requests):
        alone = model.sample(request)
        assert alone.latents.shape == request.latent.shape
        assert np.allclose(together[i].latents, alone.latents, atol=1e-4), f"request {i} depends on its batch"
        assert np.isfinite(alone.latents).all()
    # different seeds give different pictures
    assert not np.allclose(together[0].latents, together[7].latents, atol=1e-2)


def test_compatible_requests_share_one_unet_call_per_tick(loader):
    seen = []
    model = SamplerModel(SamplerConfig(), loader, on_unet_call=lambda rows, n: seen.append((rows, n)))
    requests = [make_request(seed=s, cfg=2.0 + s) for s in range(4)]
    _, outputs = run_all(model, requests)
    assert list(model.unet_calls) == [8] * 4  # 4 ticks, rows = 2 * requests (cond + uncond)
    assert seen == [(8, 4)] * 4
    assert all(out.unet_batch_sizes == [8] * 4 and out.steps_run == 4 for out in outputs.values())


def test_cfg_one_skips_the_uncond_row(model):
    run_all(model, [make_request(seed=1, cfg=1.0), make_request(seed=2, cfg=1.0)])
    assert list(model.unet_calls) == [2] * 4
    model.unet_calls.clear()
    run_all(model, [make_request(seed=1, cfg=1.0), make_request(seed=2, cfg=4.0)])
    assert list(model.unet_calls) == [3] * 4


def test_cfg_combines_x0_predictions_linearly(model):
    # One euler step from sigma_max to 0 returns the guided x0 itself:
    # x0(cfg) = uncond + cfg * (cond - uncond), affine in cfg, and cfg=1 (no uncond row) is cond.
    out = {c: model.sample(make_request(seed=3, steps=1, cfg=c)).latents for c in (1.0, 2.0, 3.0)}
    assert np.allclose(out[3.0] - out[1.0], 2 * (out[2.0] - out[1.0]), atol=1e-4)
    assert not np.allclose(out[2.0], out[1.0], atol=1e-3)


def test_incompatible_requests_get_their_own_forward_on_the_same_tick(model):
    requests = [
        make_request(seed=1),
        make_request(seed=2, shape=(1, 4, 8, 16)),  # other latent size
        make_request(seed=3, prompt_length=154),  # other conditioning length (154 vs 77 -> lcm 154)
        make_request(seed=4),
    ]
    ticks, outputs = run_all(model, requests)
    assert len(ticks) == 4 and len(outputs) == 4
    assert sorted(model.unet_calls) == sorted([4, 2, 2] * 4)
    assert outputs[1].latents.shape == (1, 4, 8, 16)


def test_max_batch_rows_splits_a_tick_without_changing_results(loader):
    requests = [make_request(seed=s, cfg=3.0) for s in range(3)]
    small = SamplerModel(SamplerConfig(max_batch_rows=4), loader)
    _, split = run_all(small, requests)
    assert list(small.unet_calls) == [4, 2] * 4
    _, whole = run_all(SamplerModel(SamplerConfig(), loader), requests)
    for i in range(3):
        assert np.allclose(split[i].latents, whole[i].latents, atol=1e-4)


def test_progress_events_per_tick(model):
    ticks, _ = run_all(model, [make_request(seed=1, steps=4), make_request(seed=2, sampler_name="heun", steps=3)])
    first = [type(t[0]).__name__ if t[0] is not None else None for t in ticks]
    second = [type(t[1]).__name__ if t[1] is not None else None for t in ticks]
    # heun: 2 model calls in each step except the last -> 5 ticks for 3 steps
    assert first == ["SamplerProgress", "SamplerProgress", "SamplerProgress", "SamplerOutput", None]
    assert second == [None, "SamplerProgress", None, "SamplerProgress", "SamplerOutput"]
    assert ticks[0][0] == SamplerProgress(step=1, total=4)
    assert ticks[3][1] == SamplerProgress(step=2, total=3)


# --------------------------------------------------------------------------- cancellation


def test_cancelling_one_request_leaves_its_batch_mates_unchanged(model):
    requests = [make_request(seed=1), make_request(seed=2, sampler_name="euler_ancestral"), make_request(seed=3)]
    progress = {}

    def is_cancelled(i: int) -> bool:
        return i == 1 and progress.get(1, 0) >= 2

    ticks = []
    outputs = {}
    for events in model.iter_batch(requests, is_cancelled):
        ticks.append(events)
        for i, event in enumerate(events):
            if isinstance(event, SamplerProgress):
                progress[i] = event.step
            elif isinstance(event, SamplerOutput):
                outputs[i] = event
    column = [t[1] for t in ticks]
    assert column[:2] == [SamplerProgress(1, 4), SamplerProgress(2, 4)]
    assert column[2] == SamplerCancelled(step=2, total=4, request_id="r2")
    assert column[3:] == [None]
    assert sorted(outputs) == [0, 2]
    assert list(model.unet_calls) == [6, 6, 4, 4]
    for i in (0, 2):
        assert np.allclose(outputs[i].latents, model.sample(requests[i]).latents, atol=1e-4)


# --------------------------------------------------------------------------- noise and img2img


def test_latent_batch_draws_noise_for_the_whole_batch(model):
    out = model.sample(make_request(seed=9, shape=(3, 4, 8, 8)))
    assert out.latents.shape == (3, 4, 8, 8)
    assert not np.allclose(out.latents[0], out.latents[1], atol=1e-2)


def test_ancestral_sampling_depends_on_seed_only_and_not_on_global_rng(model):
    state = torch.get_rng_state()
    a = model.sample(make_request(seed=5, sampler_name="euler_ancestral"))
    torch.manual_seed(999)
    b = model.sample(make_request(seed=5, sampler_name="euler_ancestral"))
    c = model.sample(make_request(seed=6, sampler_name="euler_ancestral"))
    torch.set_rng_state(state)
    assert np.array_equal(a.latents, b.latents)
    assert not np.allclose(a.latents, c.latents, atol=1e-2)


def test_lower_denoise_keeps_more_of_the_input(model):
    rng = np.random.default_rng(3)
    source = rng.standard_normal((1, 4, 8, 8)).astype(np.float32)  # a VAE latent in UNet space
    distance = {}
    for denoise in (0.2, 0.5, 0.9):
        out = model.sample(make_request(seed=4, latent=source, denoise=denoise, steps=5, cfg=2.0))
        assert out.steps_run == 5
        distance[denoise] = float(np.abs(out.latents - source).mean())
    assert distance[0.2] < distance[0.5] < distance[0.9]


def test_latent_scale_factor_maps_comfyui_unscaled_latents(loader):
    scaled = SamplerModel(SamplerConfig(), loader)
    comfy = SamplerModel(SamplerConfig(latent_scale_factor=0.18215), loader)
    source = np.random.default_rng(4).standard_normal((1, 4, 8, 8)).astype(np.float32)
    a = scaled.sample(make_request(seed=2, latent=source, denoise=0.6))
    b = comfy.sample(make_request(seed=2, latent=source / 0.18215, denoise=0.6))
    assert np.allclose(b.latents * 0.18215, a.latents, atol=1e-4)


def test_zero_denoise_returns_the_input_without_a_unet_call(model):
    source = np.ones((1, 4, 8, 8), np.float32)
    out = model.sample(make_request(latent=source, denoise=0.0))
    assert np.array_equal(out.latents, source) and out.steps_run == 0
    assert list(model.unet_calls) == []


def test_advanced_split_with_leftover_noise_equals_one_run(model):
    full = model.sample(make_request(seed=21, steps=6))
    first = model.sample(make_request(seed=21, steps=6, end_at_step=3, return_with_leftover_noise=True))
    second = model.sample(
        make_request(seed=21, steps=6, latent=first.latents, add_noise=False, start_at_step=3)
    )
    assert first.steps_run == 3 and second.steps_run == 3
    assert np.allclose(second.latents, full.latents, atol=1e-3, rtol=1e-4)


# --------------------------------------------------------------------------- ControlNet


def test_controlnet_changes_the_output_and_strength_zero_is_no_control(model):
    plain = model.sample(make_request(seed=7))
    controlled = model.sample(make_request(seed=7, controls=(hint(1.0),)))
    assert list(model.controlnet_calls) == [1] * 4
    zero = model.sample(make_request(seed=7, controls=(hint(0.0),)))
    assert not np.allclose(plain.latents, controlled.latents, atol=1e-2)
    assert np.allclose(plain.latents, zero.latents, atol=1e-5)
    assert list(model.controlnet_calls) == [1] * 4  # strength 0 never runs the ControlNet


def test_controlnet_percent_window(model):
    plain = model.sample(make_request(seed=7, steps=6))
    never = model.sample(make_request(seed=7, steps=6, controls=(hint(1.0, 0.0, 0.0),)))
    assert list(model.controlnet_calls) == []
    assert np.allclose(plain.latents, never.latents, atol=1e-5)
    first_half = model.sample(make_request(seed=7, steps=6, controls=(hint(1.0, 0.0, 0.5),)))
    active_steps = len(model.controlnet_calls)
    assert 0 < active_steps < 6
    full = model.sample(make_request(seed=7, steps=6, controls=(hint(1.0),)))
    assert not np.allclose(first_half.latents, plain.latents, atol=1e-2)
    assert not np.allclose(first_half.latents, full.latents, atol=1e-2)
    # the window is computed from sigma exactly as ComfyUI's percent_to_sigma does
    ms = ks.ModelSampling()
    sigmas = ks.calculate_sigmas(ms, "normal", 6)[:-1]
    assert active_steps == int((sigmas >= ms.percent_to_sigma(0.5)).sum())


def test_chained_controls_add_up(model):
    single = model.sample(make_request(seed=8, controls=(hint(1.0),)))
    chained = model.sample(make_request(seed=8, controls=(hint(0.5), hint(0.5))))
    assert np.allclose(single.latents, chained.latents, atol=1e-3, rtol=1e-4)


def test_controlnet_calls_are_batched_across_requests(model):
    requests = [make_request(seed=s, controls=(hint(0.5 + 0.2 * s),)) for s in range(3)] + [make_request(seed=9)]
    _, outputs = run_all(model, requests)
    assert list(model.controlnet_calls) == [3] * 4  # one ControlNet forward per tick, cond rows only
    assert list(model.unet_calls) == [8] * 4
    assert len(outputs) == 4


def test_hint_is_center_cropped_and_resized_to_the_latent_pixels():
    image = np.zeros((1, 32, 64, 3), np.float32)
    image[:, :, 16:48] = 1.0  # the centre square is white
    out = _prepare_hint(image, 16, 16)
    assert out.shape == (1, 3, 16, 16)
    assert torch.all(out == 1.0)


# --------------------------------------------------------------------------- coverage and errors


def test_every_sampler_and_scheduler_runs_without_nan(loader):
    model = SamplerModel(SamplerConfig(max_batch_rows=256), loader)
    combos = [(s, sch) for s in ks.SAMPLERS for sch in ks.SCHEDULER_NAMES]
    requests = [make_request(seed=i, sampler_name=s, scheduler=sch, steps=3, cfg=2.0) for i, (s, sch) in enumerate(combos)]
    _, outputs = run_all(model, requests)
    ms = ks.ModelSampling()
    assert len(outputs) == len(combos)
    for i, (sampler_name, scheduler) in enumerate(combos):
        out = outputs[i]
        assert np.isfinite(out.latents).all(), (sampler_name, scheduler)
        sigmas = ks.calculate_sigmas_for_request(ms, scheduler, 3, sampler_name=sampler_name)
        assert out.steps_run == len(sigmas) - 1
    assert max(model.unet_calls) == 2 * len(combos)  # the first tick batches everything


def test_invalid_requests_fail_before_any_work(model):
    with pytest.raises(ValueError, match="request 1.*unknown sampler_name"):
        list(model.iter_batch([make_request(), make_request(sampler_name="nope")]))
    with pytest.raises(ValueError, match="unknown scheduler"):
        model.sample(make_request(scheduler="nope"))
    with pytest.raises(ValueError, match="latent"):
        model.sample(make_request(latent=np.zeros((4, 8, 8), np.float32)))
    with pytest.raises(ValueError, match="3 channels"):
        model.sample(make_request(shape=(1, 3, 8, 8)))
    assert list(model.unet_calls) == []


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__]))
