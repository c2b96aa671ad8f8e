"""KSampler math: schedules, request sigmas, noise, and samplers on an analytic problem.

The analytic problem: data ~ N(MU, SD^2) per element. Its exact denoiser is
``E[x0 | x] = MU + SD^2 / (SD^2 + sigma^2) (x - MU)`` and the probability-flow ODE has the
closed-form solution ``x(sigma) = MU + sqrt(SD^2 + sigma^2) / sqrt(SD^2 + sigma_T^2) (x_T - MU)``,
so sampler errors (and their convergence orders) can be measured exactly.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from deployments.sampler import k_sampling as ks
from graphs.constants import SAMPLER_NAMES as NODE_SAMPLER_NAMES
from graphs.constants import SCHEDULER_NAMES as NODE_SCHEDULER_NAMES

MS = ks.ModelSampling()
MU, SD = 0.3, 0.5
DETERMINISTIC = [n for n in ks.SAMPLERS if n not in ks.STOCHASTIC_SAMPLERS]


def gaussian_denoiser(x: torch.Tensor, sigma: float) -> torch.Tensor:
    return MU + SD**2 / (SD**2 + sigma**2) * (x - MU)


def exact_solution(x_t: torch.Tensor, sigma_t: float, sigma_end: float) -> torch.Tensor:
    return MU + math.sqrt(SD**2 + sigma_end**2) / math.sqrt(SD**2 + sigma_t**2) * (x_t - MU)


def start_point(sigmas: torch.Tensor, shape=(2, 4, 16, 16), seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (MU + noise * math.sqrt(SD**2 + float(sigmas[0]) ** 2)).to(dtype)


def run(name: str, x: torch.Tensor, sigmas: torch.Tensor, seed: int = 0, **kwargs) -> torch.Tensor:
    return ks.run_sampler(ks.SAMPLERS[name](x, sigmas, ks.sampler_generator(seed), **kwargs), gaussian_denoiser)


def sampler_error(name: str, steps: int, scheduler: str = "karras") -> float:
    sigmas = ks.calculate_sigmas_for_request(MS, scheduler, steps, sampler_name=name)
    x = start_point(sigmas)
    # uni_pc ends at sigma 0.001 instead of 0 (ComfyUI); compare with the exact value there.
    end = 0.001 if name.startswith("uni_pc") else 0.0
    exact = exact_solution(x.double(), float(sigmas[0]), end)
    return (run(name, x, sigmas).double() - exact).abs().mean().item()


# --------------------------------------------------------------------------- names


def test_names_match_the_node_specs():
    assert tuple(ks.SAMPLER_NAMES) == tuple(NODE_SAMPLER_NAMES)
    assert tuple(ks.SCHEDULER_NAMES) == tuple(NODE_SCHEDULER_NAMES)
    assert set(ks.SAMPLER_NAMES) <= set(ks.SAMPLERS)
    assert set(ks.SCHEDULER_NAMES) == set(ks.SCHEDULERS)


def test_unknown_names_are_rejected():
    with pytest.raises(ValueError, match="unknown scheduler"):
        ks.calculate_sigmas(MS, "nope", 10)
    with pytest.raises(ValueError, match="unknown sampler"):
        ks.get_sampler("nope")


# --------------------------------------------------------------------------- ModelSampling


def test_sd15_noise_levels():
    # The well-known SD1.5 range (scaled_linear betas 0.00085..0.012 over 1000 steps).
    assert MS.sigma_min == pytest.approx(math.sqrt(0.00085 / (1 - 0.00085)), rel=1e-6)
    assert MS.sigma_max == pytest.approx(14.6146, rel=1e-5)
    assert MS.sigmas.dtype == torch.float32 and MS.sigmas.shape == (1000,)
    assert torch.all(MS.sigmas[1:] > MS.sigmas[:-1])


def test_timestep_quantized_and_interpolated():
    interp = ks.ModelSampling(quantize_timesteps=False)
    for k in (0, 1, 250, 998, 999):
        assert float(MS.timestep(MS.sigmas[k])) == k
        assert float(interp.timestep(MS.sigmas[k])) == pytest.approx(k, abs=1e-3)
    t = torch.tensor([0.25, 10.5, 500.7, 998.2])
    sigmas = interp.sigma(t)
    assert torch.allclose(interp.timestep(sigmas), t, atol=1e-3)
    assert torch.equal(MS.timestep(sigmas), t.round())
    # sigma() interpolates log-sigma between neighbouring training sigmas
    mid = float(MS.sigma(torch.tensor(10.5)))
    assert mid == pytest.approx(math.sqrt(float(MS.sigmas[10]) * float(MS.sigmas[11])), rel=1e-5)


def test_percent_to_sigma_follows_comfyui():
    assert MS.percent_to_sigma(0.0) > 1e8
    assert MS.percent_to_sigma(1.0) == 0.0
    assert MS.percent_to_sigma(0.5) == pytest.approx(float(MS.sigma(torch.tensor(499.5))), rel=1e-6)
    assert MS.percent_to_sigma(0.2) > MS.percent_to_sigma(0.8)


def test_input_scaling_denoised_and_noise_scaling():
    x = torch.full((2, 4, 2, 2), 3.0)
    eps = torch.full((2, 4, 2, 2), 0.5)
    sigma = torch.tensor([1.0, 2.0])
    assert torch.allclose(MS.calculate_input(sigma, x)[1], x[1] / math.sqrt(5.0))
    assert torch.allclose(MS.calculate_denoised(sigma, eps, x)[1], torch.full((4, 2, 2), 2.0))
    noise, latent = torch.ones(1, 4, 2, 2), torch.full((1, 4, 2, 2), 0.25)
    assert torch.allclose(MS.noise_scaling(2.0, noise, latent), latent + 2.0)
    assert torch.allclose(MS.noise_scaling(2.0, noise, latent, max_denoise=True), latent + math.sqrt(5.0))
    assert MS.is_max_denoise(ks.calculate_sigmas(MS, "normal", 5))
    assert not MS.is_max_denoise(ks.calculate_sigmas_for_request(MS, "normal", 5, denoise=0.5))


def test_v_prediction_denoised():
    ms = ks.ModelSampling(prediction_type="v_prediction")
    x, v = torch.full((1, 1), 2.0), torch.full((1, 1), 1.0)
    # x0 = x / (s^2 + 1) - v * s / sqrt(s^2 + 1)
    assert float(ms.calculate_denoised(1.0, v, x)) == pytest.approx(1.0 - 1 / math.sqrt(2.0))


# --------------------------------------------------------------------------- schedulers


def _ddim_uniform_len(steps: int) -> int:
    return len(range(1, 1000, max(1000 // steps, 1))) + 1


@pytest.mark.parametrize("scheduler", ks.SCHEDULER_NAMES)
@pytest.mark.parametrize("steps", [1, 2, 5, 7, 20, 50])
def test_schedule_shape(scheduler, steps):
    sigmas = ks.calculate_sigmas(MS, scheduler, steps)
    expected = _ddim_uniform_len(steps) if scheduler == "ddim_uniform" else steps + 1
    assert sigmas.dtype == torch.float32
    assert len(sigmas) == expected
    assert float(sigmas[-1]) == 0.0
    assert torch.all(sigmas[:-1] > sigmas[1:]), "sigmas must strictly decrease"
    assert float(sigmas[0]) <= MS.sigma_max * (1 + 1e-5)
    assert float(sigmas[-2]) >= MS.sigma_min * (1 - 1e-5)
    if scheduler != "ddim_uniform":
        assert float(sigmas[0]) == pytest.approx(MS.sigma_max, rel=1e-5)


def test_ddim_uniform_step_count_follows_comfyui():
    # 1000 // 7 = 142 does not tile 1..999 in 7 strides: ComfyUI then runs 8 steps.
    assert len(ks.calculate_sigmas(MS, "ddim_uniform", 7)) == 9
    sigmas = ks.calculate_sigmas(MS, "ddim_uniform", 20)
    assert torch.equal(sigmas[:-1], MS.sigmas[torch.arange(951, 0, -50)])


def test_normal_spaces_timesteps_linearly():
    interp = ks.ModelSampling(quantize_timesteps=False)
    sigmas = ks.calculate_sigmas(interp, "normal", 10)
    assert torch.allclose(interp.timestep(sigmas[:-1]), torch.linspace(999, 0, 10), atol=1e-3)
    assert float(sigmas[-2]) == pytest.approx(MS.sigma_min, rel=1e-5)


def test_sgm_uniform_is_normal_without_t_min():
    for steps in (1, 4, 9):
        sgm = ks.calculate_sigmas(MS, "sgm_uniform", steps)
        normal = ks.calculate_sigmas(MS, "normal", steps + 1)
        assert torch.allclose(sgm[:-1], normal[:-2])
        assert float(sgm[-2]) > MS.sigma_min * 1.5


def test_karras_and_exponential_spacing():
    karras = ks.calculate_sigmas(MS, "karras", 12)[:-1].double()
    steps = karras ** (1 / 7)
    assert torch.allclose(steps[1:] - steps[:-1], (steps[1] - steps[0]).expand(11), rtol=1e-4)
    expo = ks.calculate_sigmas(MS, "exponential", 12)[:-1].double().log()
    assert torch.allclose(expo[1:] - expo[:-1], (expo[1] - expo[0]).expand(11), rtol=1e-4)
    assert float(karras[-1]) == pytest.approx(MS.sigma_min, rel=1e-5)


def test_simple_picks_training_sigmas():
    sigmas = ks.calculate_sigmas(MS, "simple", 8)
    idx = [999 - int(i * 1000 / 8) for i in range(8)]
    assert torch.equal(sigmas[:-1], MS.sigmas[idx])


# --------------------------------------------------------------------------- request sigmas


def test_denoise_keeps_the_tail_of_a_longer_schedule():
    sigmas = ks.calculate_sigmas_for_request(MS, "normal", 10, denoise=0.5)
    assert torch.equal(sigmas, ks.calculate_sigmas(MS, "normal", 20)[-11:])
    sigmas = ks.calculate_sigmas_for_request(MS, "karras", 6, denoise=0.3)
    assert torch.equal(sigmas, ks.calculate_sigmas(MS, "karras", 20)[-7:])
    assert len(ks.calculate_sigmas_for_request(MS, "normal", 10, denoise=0.0)) == 0


def test_start_end_and_leftover_noise():
    full = ks.calculate_sigmas(MS, "normal", 10)
    first = ks.calculate_sigmas_for_request(MS, "normal", 10, end_at_step=4, return_with_leftover_noise=True)
    assert torch.equal(first, full[:5])
    denoised = ks.calculate_sigmas_for_request(MS, "normal", 10, end_at_step=4)
    assert torch.equal(denoised[:-1], full[:4]) and float(denoised[-1]) == 0.0
    second = ks.calculate_sigmas_for_request(MS, "normal", 10, start_at_step=4, end_at_step=10000)
    assert torch.equal(second, full[4:])
    assert torch.equal(torch.cat([first[:-1], second]), full)
    assert len(ks.calculate_sigmas_for_request(MS, "normal", 10, start_at_step=10)) == 0
    assert len(ks.calculate_sigmas_for_request(MS, "normal", 10, start_at_step=5, end_at_step=5)) == 0


def test_uni_pc_discards_the_penultimate_sigma():
    sigmas = ks.calculate_sigmas_for_request(MS, "karras", 10, sampler_name="uni_pc")
    longer = ks.calculate_sigmas(MS, "karras", 11)
    assert len(sigmas) == 11
    assert torch.equal(sigmas, torch.cat([longer[:-2], longer[-1:]]))


# --------------------------------------------------------------------------- noise


def test_prepare_noise_is_the_seeded_cpu_stream_and_leaves_global_rng_alone():
    state = torch.get_rng_state()
    noise = ks.prepare_noise((2, 4, 8, 8), seed=1234)
    assert torch.equal(torch.get_rng_state(), state)
    expected = torch.randn((2, 4, 8, 8), generator=torch.Generator().manual_seed(1234))
    assert torch.equal(noise, expected)


def test_prepare_noise_with_batch_index():
    g = torch.Generator().manual_seed(7)
    singles = [torch.randn((1, 4, 4, 4), generator=g) for _ in range(4)]
    noise = ks.prepare_noise((2, 4, 4, 4), seed=7, batch_index=[3, 1])
    assert torch.equal(noise[0], singles[3][0]) and torch.equal(noise[1], singles[1][0])


# --------------------------------------------------------------------------- sampler protocol


@pytest.mark.parametrize("name", list(ks.SAMPLERS))
def test_every_step_makes_model_calls_in_order(name):
    sigmas = ks.calculate_sigmas_for_request(MS, "normal", 6, sampler_name=name)
    co = ks.SAMPLERS[name](start_point(sigmas), sigmas, ks.sampler_generator(0))
    steps = []
    try:
        call = next(co)
        while True:
            assert call.sigma == pytest.approx(float(sigmas[call.step])) or (
                name == "heun" and call.sigma == pytest.approx(float(sigmas[call.step + 1]))
            )
            steps.append(call.step)
            call = co.send(gaussian_denoiser(call.x, call.sigma))
    except StopIteration as stop:
        assert stop.value.shape == (2, 4, 16, 16)
    assert sorted(set(steps)) == list(range(6)) and steps == sorted(steps)
    expected_calls = 11 if name == "heun" else 6  # heun: 2 calls per step, 1 on the last
    assert len(steps) == expected_calls


def test_stochastic_samplers_require_a_generator():
    sigmas = ks.calculate_sigmas(MS, "normal", 3)
    co = ks.euler_ancestral(start_point(sigmas), sigmas, None)
    call = next(co)
    with pytest.raises(ValueError, match="(?i)generator"):
        co.send(gaussian_denoiser(call.x, call.sigma))


# --------------------------------------------------------------------------- analytic accuracy


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_deterministic_samplers_converge_and_are_reproducible(name):
    sigmas = ks.calculate_sigmas_for_request(MS, "karras", 30, sampler_name=name)
    x = start_point(sigmas)
    a, b = run(name, x, sigmas), run(name, x, sigmas)
    assert torch.equal(a, b)
    assert abs(a.mean().item() - MU) < 0.05 and abs(a.std().item() - SD) < 0.1
    tolerance = 0.1 if name in ("euler", "ddim") else 0.01
    assert sampler_error(name, 30) < tolerance


@pytest.mark.parametrize("name", ["heun", "dpmpp_2m", "lms", "uni_pc", "uni_pc_bh2"])
@pytest.mark.parametrize("steps", [8, 12])
def test_higher_order_samplers_beat_euler_at_few_steps(name, steps):
    assert sampler_error(name, steps) < 0.7 * sampler_error("euler", steps)


def _order(name: str, n: int, **kwargs) -> float:
    """Observed convergence order between n and 2n steps on a log-uniform grid (float64)."""
    errors = []
    for steps in (n, 2 * n):
        sigmas = torch.linspace(math.log(14.6), math.log(0.05), steps + 1, dtype=torch.float64).exp()
        x = start_point(sigmas, shape=(1000,), dtype=torch.float64)
        out = run(name, x, sigmas, **kwargs)
        errors.append((out - exact_solution(x, 14.6, 0.05)).abs().max().item())
    return math.log2(errors[0] / errors[1])


@pytest.mark.parametrize(
    ("name", "kwargs", "n", "order"),
    [
        ("euler", {}, 32, 1),
        ("heun", {}, 32, 2),
        ("dpmpp_2m", {}, 32, 2),
        ("lms", {}, 32, 3.3),
        # UniPC-p with its corrector has order p + 1 (Zhao et al. 2023, Thm 3.3).
        ("uni_pc", {"max_order": 1, "lower_order_final": False}, 64, 2),
        ("uni_pc", {"max_order": 2, "lower_order_final": False}, 64, 3),
        ("uni_pc", {"max_order": 3, "lower_order_final": False}, 64, 4),
        ("uni_pc", {"max_order": 3, "variant": "bh2", "lower_order_final": False}, 64, 4),
    ],
)
def test_convergence_orders(name, kwargs, n, order):
    assert _order(name, n, **kwargs) > order - 0.3


@pytest.mark.parametrize("name", sorted(ks.STOCHASTIC_SAMPLERS))
def test_stochastic_samplers_sample_the_data_distribution(name):
    sigmas = ks.calculate_sigmas(MS, "karras", 60)
    x = start_point(sigmas, shape=(4, 4, 32, 32))
    state = torch.get_rng_state()
    a, b, c = run(name, x, sigmas, seed=1), run(name, x, sigmas, seed=1), run(name, x, sigmas, seed=2)
    assert torch.equal(torch.get_rng_state(), state), "stochastic samplers must not touch the global RNG"
    assert torch.equal(a, b)
    assert (a - c).abs().mean().item() > 0.1
    for out in (a, c):
        assert abs(out.mean().item() - MU) < 0.02
        assert abs(out.std().item() - SD) < 0.05


def test_lms_coefficients_integrate_polynomials_exactly():
    t = [5.0, 3.0, 2.0, 1.2, 0.5]
    # Coefficients of order 3 at step 3 must integrate any quadratic in sigma exactly.
    coeffs = [ks._lms_coefficient(3, t, 3, j) for j in range(3)]
    poly = np.polynomial.Polynomial([0.3, -1.0, 2.0])
    integral = poly.integ()(t[4]) - poly.integ()(t[3])
    assert sum(c * poly(t[3 - j]) for j, c in enumerate(coeffs)) == pytest.approx(integral, rel=1e-12)


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__]))


# --------------------------------------------------------------------------- Brownian-tree noise


def test_brownian_noise_is_unit_gaussian_and_additive_across_steps():
    sigmas = ks.calculate_sigmas(MS, "karras", 10)
    x = torch.zeros(2, 4, 32, 32)
    noise = ks.BrownianTreeNoise(x, sigmas, seed=7)
    a, b, c = sigmas[2], sigmas[3], sigmas[4]
    n_ab, n_bc, n_ac = noise(a, b), noise(b, c), noise(a, c)
    assert n_ab.shape == x.shape and n_ab.dtype == x.dtype
    assert abs(n_ab.mean().item()) < 0.05 and abs(n_ab.std().item() - 1) < 0.05
    # A Brownian path: the increment over [c, a] is the sum of those over [c, b] and [b, a],
    # so the noise does not depend on how the schedule cuts the interval into steps.
    w = lambda n, s, t: n * (s - t).sqrt()  # noqa: E731 - undo the unit-variance scaling
    torch.testing.assert_close(w(n_ac, a, c), w(n_ab, a, b) + w(n_bc, b, c), atol=1e-4, rtol=1e-4)
    assert torch.equal(ks.BrownianTreeNoise(x, sigmas, seed=7)(a, b), n_ab)  # the seed fixes the path
    assert not torch.allclose(ks.BrownianTreeNoise(x, sigmas, seed=8)(a, b), n_ab)


def test_dpmpp_2m_sde_draws_its_noise_from_the_seeded_brownian_tree():
    sigmas = ks.calculate_sigmas(MS, "karras", 12)
    x = start_point(sigmas, shape=(1, 4, 16, 16))
    out = run("dpmpp_2m_sde", x, sigmas, seed=3)
    # Replaying the update with the tree's noise gives the same result; per-step Gaussian draws would not.
    noise = ks.BrownianTreeNoise(x, sigmas, seed=3)
    s = [float(v) for v in sigmas]
    y, old, h_last = x.clone(), None, None
    for i in range(len(s) - 1):
        d = gaussian_denoiser(y, s[i])
        if s[i + 1] == 0:
            y = d
            break
        h = math.log(s[i]) - math.log(s[i + 1])
        y = (s[i + 1] / s[i]) * math.exp(-h) * y + (-math.expm1(-2 * h)) * d
        if old is not None:
            r = h_last / h
            y = y + 0.5 * (-math.expm1(-2 * h)) / r * (d - old)
        y = y + noise(sigmas[i], sigmas[i + 1]) * (s[i + 1] * math.sqrt(-math.expm1(-2 * h)))
        old, h_last = d, h
    torch.testing.assert_close(out, y, atol=1e-5, rtol=1e-5)
