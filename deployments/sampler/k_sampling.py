"""KSampler math: noise schedules, schedulers and samplers with ComfyUI's semantics.

This module is pure math on CPU-or-GPU tensors. It knows nothing about UNets, Ray or
workflows; :mod:`deployments.sampler.model` drives it.

What lives here, top to bottom:

1. :class:`ModelSampling`: the discrete DDPM noise schedule of an SD1.5-style checkpoint
   seen as a set of noise levels ``sigma`` (k-diffusion's "VE" view, Karras et al. 2022):
   ``x = x0 + sigma * eps``.
2. Schedulers (``normal``, ``karras``, ...): pick ``steps + 1`` sigmas, ending with 0.
3. :func:`calculate_sigmas_for_request`: KSampler / KSamplerAdvanced rules for
   ``denoise``, ``start_at_step``, ``end_at_step`` and ``return_with_leftover_noise``.
4. :func:`prepare_noise`: the initial noise of a request, from its own CPU generator.
5. Samplers (``euler``, ``heun``, ``uni_pc``, ...) written as generator co-routines.

Sampler co-routines
-------------------
A sampler never calls the model. It ``yield``\\ s a :class:`ModelCall` (the current ``x``
and ``sigma``) and receives the denoised prediction ``x0`` through ``.send()``; its
``return`` value (``StopIteration.value``) is the final ``x``. A driver can therefore step
many requests in lockstep and evaluate all of their pending model calls in one batched
UNet forward::

    co = SAMPLERS["heun"](x, sigmas, generator)
    call = next(co)
    try:
        while True:
            call = co.send(denoise(call.x, call.sigma))
    except StopIteration as stop:
        x = stop.value

:func:`run_sampler` does exactly that for one co-routine. ``ModelCall.step`` is the index of
the step the call belongs to (``heun`` makes two calls in most steps), so a driver knows a
step has finished when the next call carries a larger ``step`` or the co-routine returns.

The formulas are our own implementation of the published methods (Euler / Heun and
ancestral sampling from Karras et al. 2022 and k-diffusion's conventions, DPM-Solver++
from Lu et al. 2022, UniPC from Zhao et al. 2023, linear multistep from Adams-Bashforth),
arranged to reproduce ComfyUI's KSampler choices (which samplers exist under which
names, the schedulers' exact spacing, the ``denoise`` rule, the sigmas dropped for
``uni_pc``). Where we knowingly differ from ComfyUI it is written down next to the code.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass

import numpy as np
import torch

# Names exactly as ComfyUI spells them: one list, shared with the node specs.
from graphs.constants import SAMPLER_NAMES, SCHEDULER_NAMES  # noqa: E402,F401 - re-exported

# ComfyUI computes ``steps + 1`` sigmas for these samplers and drops the penultimate one
# (the smallest non-zero sigma), because their last step would otherwise be wasted on a
# tiny sigma interval.
DISCARD_PENULTIMATE_SIGMA_SAMPLERS: frozenset[str] = frozenset({"uni_pc", "uni_pc_bh2"})

# Samplers that draw fresh noise while sampling (need a generator; depend on the seed).
STOCHASTIC_SAMPLERS: frozenset[str] = frozenset({"euler_ancestral", "dpmpp_2m_sde"})

# ComfyUI's ``percent_to_sigma`` answer for percent <= 0: "larger than any sigma".
_SIGMA_INFINITY = 999999999.9


# ---------------------------------------------------------------------------------------
# 1. Noise schedule
# ---------------------------------------------------------------------------------------


class ModelSampling:
    """The noise levels of a discrete-time (DDPM) diffusion model, seen as sigmas.

    ``sigma_t = sqrt((1 - alphabar_t) / alphabar_t)`` for the 1000 training timesteps, so that
    a noisy latent is ``x = x0 + sigma * eps`` and the UNet sees ``x * c_in`` with
    ``c_in = 1 / sqrt(sigma^2 + 1)`` (the DDPM-scaled input).

    Construct it from a checkpoint's scheduler settings (diffusers' names)::

        ms = ModelSampling.from_config(loader.model_sampling("sd15.safetensors"))

    Args:
        num_train_timesteps (`int`, *optional*, defaults to 1000): number of training timesteps.
        beta_start (`float`, *optional*, defaults to 0.00085): first beta.
        beta_end (`float`, *optional*, defaults to 0.012): last beta.
        beta_schedule (`str`, *optional*, defaults to ``"scaled_linear"``): diffusers' name.
            ``scaled_linear`` (SD1.5; ComfyUI calls it ``linear``) spaces ``sqrt(beta)``
            linearly; ``linear`` spaces ``beta`` linearly.
        prediction_type (`str`, *optional*, defaults to ``"epsilon"``): ``epsilon`` or
            ``v_prediction``.
        quantize_timesteps (`bool`, *optional*, defaults to True): how :meth:`timestep`
            maps a sigma to the UNet's timestep. ``True`` is ComfyUI: the index of the
            nearest training sigma (in log space). ``False`` is k-diffusion's default:
            linear interpolation in log-sigma, a fractional timestep.

    Raises:
        ValueError: unknown ``beta_schedule`` or ``prediction_type``.
    """

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        beta_schedule: str = "scaled_linear",
        prediction_type: str = "epsilon",
        quantize_timesteps: bool = True,
    ) -> None:
        if beta_schedule == "scaled_linear":
            betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float64) ** 2
        elif beta_schedule == "linear":
            betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)
        else:
            raise ValueError(
                f"unsupported beta_schedule {beta_schedule!r}; expected 'scaled_linear' (SD1.5) or 'linear'"
            )
        if prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"unsupported prediction_type {prediction_type!r}; expected 'epsilon' or 'v_prediction'")
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        # NOTE: computed in float64, stored in float32, like ComfyUI, so schedules match bit for bit.
        sigmas = ((1.0 - alphas_cumprod) / alphas_cumprod) ** 0.5
        self.sigmas: torch.Tensor = sigmas.float()
        self.log_sigmas: torch.Tensor = sigmas.log().float()
        self.prediction_type = prediction_type
        self.quantize_timesteps = quantize_timesteps
        self.sigma_data = 1.0

    @classmethod
    def from_config(cls, config: Mapping, quantize_timesteps: bool = True) -> "ModelSampling":
        """Build from a loader's ``model_sampling(checkpoint)`` dict (diffusers key names).

        Args:
            config (`Mapping`): keys ``num_train_timesteps``, ``beta_start``, ``beta_end``,
                ``beta_schedule``, ``prediction_type``; missing keys take SD1.5 defaults,
                unknown keys are ignored.
            quantize_timesteps (`bool`, *optional*, defaults to True): see the class docstring.

        Returns:
            ModelSampling: the schedule.
        """
        return cls(
            num_train_timesteps=int(config.get("num_train_timesteps", 1000)),
            beta_start=float(config.get("beta_start", 0.00085)),
            beta_end=float(config.get("beta_end", 0.012)),
            beta_schedule=str(config.get("beta_schedule", "scaled_linear")),
            prediction_type=str(config.get("prediction_type", "epsilon")),
            quantize_timesteps=quantize_timesteps,
        )

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    @property
    def num_timesteps(self) -> int:
        return int(self.sigmas.shape[0])

    def timestep(self, sigma: torch.Tensor | float) -> torch.Tensor:
        """Map sigma(s) to the UNet's (float) timestep(s).

        Args:
            sigma (`torch.Tensor` or `float`): noise level(s), any shape.

        Returns:
            torch.Tensor: float32 timesteps of the same shape as ``sigma``; whole numbers when
            ``quantize_timesteps`` (ComfyUI), otherwise log-sigma interpolation.
        """
        sigma_t = torch.as_tensor(sigma, dtype=torch.float32)
        log_sigma = sigma_t.clamp(min=1e-10).log().reshape(-1)
        if self.quantize_timesteps:
            t = (log_sigma[None, :] - self.log_sigmas[:, None]).abs().argmin(dim=0).float()
            return t.reshape(sigma_t.shape)
        log_sigma = log_sigma.clamp(float(self.log_sigmas[0]), float(self.log_sigmas[-1]))
        # log_sigmas increases with t; find the interval [low, low + 1] holding log_sigma.
        low = (torch.searchsorted(self.log_sigmas, log_sigma, right=True) - 1).clamp(0, self.num_timesteps - 2)
        lo, hi = self.log_sigmas[low], self.log_sigmas[low + 1]
        w = ((log_sigma - lo) / (hi - lo)).clamp(0.0, 1.0)
        return (low.float() + w).reshape(sigma_t.shape)

    def sigma(self, timestep: torch.Tensor | float) -> torch.Tensor:
        """Map (fractional) timestep(s) to sigma(s), interpolating linearly in log-sigma.

        Args:
            timestep (`torch.Tensor` or `float`): timesteps in ``[0, num_timesteps - 1]`` (clamped).

        Returns:
            torch.Tensor: float32 sigmas of the same shape.
        """
        t = torch.as_tensor(timestep, dtype=torch.float32).clamp(0, self.num_timesteps - 1)
        low, high = t.floor().long(), t.ceil().long()
        w = t.frac()
        return ((1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]).exp()

    def percent_to_sigma(self, percent: float) -> float:
        """Sigma at ``percent`` of the way through the full schedule (ComfyUI's rule).

        ``0`` maps to "above any sigma" and ``1`` to 0, so a window
        ``[percent_to_sigma(start), percent_to_sigma(end)]`` of 0..1 covers every step.

        Args:
            percent (`float`): position in the schedule, 0 = first step, 1 = last.

        Returns:
            float: the sigma.
        """
        if percent <= 0.0:
            return _SIGMA_INFINITY
        if percent >= 1.0:
            return 0.0
        return float(self.sigma(torch.tensor((1.0 - percent) * (self.num_timesteps - 1))))

    @staticmethod
    def _as_rows(sigma: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
        s = torch.as_tensor(sigma, dtype=like.dtype, device=like.device)
        if s.ndim == 0:
            return s
        return s.reshape(s.shape[:1] + (1,) * (like.ndim - 1))

    def c_in(self, sigma: torch.Tensor | float) -> torch.Tensor:
        """Input scaling ``1 / sqrt(sigma^2 + sigma_data^2)``."""
        s = torch.as_tensor(sigma, dtype=torch.float32)
        return 1.0 / (s**2 + self.sigma_data**2) ** 0.5

    def calculate_input(self, sigma: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
        """The UNet's input ``x * c_in`` (``sigma`` a scalar or one value per row of ``x``)."""
        s = self._as_rows(sigma, x)
        return x / (s**2 + self.sigma_data**2) ** 0.5

    def calculate_denoised(self, sigma: torch.Tensor | float, model_output: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The x0 prediction from the UNet output (``x - eps * sigma`` for eps-prediction).

        Args:
            sigma (`torch.Tensor` or `float`): scalar or one sigma per row.
            model_output (`torch.Tensor`): the UNet's output (eps or v).
            x (`torch.Tensor`): the *unscaled* noisy input.

        Returns:
            torch.Tensor: the denoised prediction.
        """
        s = self._as_rows(sigma, model_output)
        if self.prediction_type == "v_prediction":
            sd = self.sigma_data
            return x * sd**2 / (s**2 + sd**2) - model_output * s * sd / (s**2 + sd**2) ** 0.5
        return x - model_output * s

    def noise_scaling(
        self, sigma: torch.Tensor | float, noise: torch.Tensor, latent: torch.Tensor, max_denoise: bool = False
    ) -> torch.Tensor:
        """The starting point ``latent + noise * sigma``.

        Args:
            sigma (`torch.Tensor` or `float`): first sigma of the schedule.
            noise (`torch.Tensor`): unit Gaussian noise (zeros when noise is disabled).
            latent (`torch.Tensor`): the (scaled) input latent.
            max_denoise (`bool`, *optional*, defaults to False): ComfyUI scales the noise by
                ``sqrt(1 + sigma^2)`` instead of ``sigma`` when the schedule starts at the model's
                largest sigma (txt2img or denoise=1), i.e. it starts from the DDPM prior.

        Returns:
            torch.Tensor: the noisy starting latent.
        """
        s = self._as_rows(sigma, noise)
        scale = torch.sqrt(1.0 + s**2) if max_denoise else s
        return latent + noise * scale

    def is_max_denoise(self, sigmas: torch.Tensor) -> bool:
        """True when a schedule starts at (or above) the model's largest sigma (ComfyUI's rule)."""
        first = float(sigmas[0])
        return math.isclose(self.sigma_max, first, rel_tol=1e-05) or first > self.sigma_max


# ---------------------------------------------------------------------------------------
# 2. Schedulers: each returns float32 sigmas, largest first, ending with 0
# ---------------------------------------------------------------------------------------


def _append_zero(values: torch.Tensor) -> torch.Tensor:
    return torch.cat([values.float(), values.new_zeros(1).float()])


def _normal(ms: ModelSampling, steps: int, sgm: bool = False) -> torch.Tensor:
    start = float(ms.timestep(ms.sigma_max))
    end = float(ms.timestep(ms.sigma_min))
    append_zero = True
    if sgm:
        # sgm_uniform: steps + 1 evenly spaced timesteps, drop the last (t_min) one.
        timesteps = torch.linspace(start, end, steps + 1)[:-1]
    else:
        if math.isclose(float(ms.sigma(end)), 0.0, abs_tol=1e-5):
            # A schedule that already reaches sigma 0 spends one more point instead of appending 0.
            steps += 1
            append_zero = False
        timesteps = torch.linspace(start, end, steps)
    sigmas = ms.sigma(timesteps)
    return _append_zero(sigmas) if append_zero else sigmas.float()


def normal_scheduler(ms: ModelSampling, steps: int) -> torch.Tensor:
    """Timesteps spaced linearly from t_max to t_min (both included), then sigma 0."""
    return _normal(ms, steps)


def sgm_uniform_scheduler(ms: ModelSampling, steps: int) -> torch.Tensor:
    """``steps + 1`` linear timesteps from t_max to t_min with t_min dropped, then sigma 0."""
    return _normal(ms, steps, sgm=True)


def karras_scheduler(ms: ModelSampling, steps: int, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. (2022) eq. 5: linear in ``sigma^(1/rho)`` from sigma_max to sigma_min, then 0."""
    ramp = torch.linspace(0, 1, steps)
    min_inv_rho = ms.sigma_min ** (1 / rho)
    max_inv_rho = ms.sigma_max ** (1 / rho)
    return _append_zero((max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho)


def exponential_scheduler(ms: ModelSampling, steps: int) -> torch.Tensor:
    """Linear in log-sigma from sigma_max to sigma_min, then 0."""
    return _append_zero(torch.linspace(math.log(ms.sigma_max), math.log(ms.sigma_min), steps).exp())


def simple_scheduler(ms: ModelSampling, steps: int) -> torch.Tensor:
    """Every ``1000 / steps``-th training sigma counted down from the largest (truncating), then 0."""
    stride = ms.num_timesteps / steps
    picks = [float(ms.sigmas[-(1 + int(i * stride))]) for i in range(steps)]
    return torch.tensor(picks + [0.0], dtype=torch.float32)


def ddim_uniform_scheduler(ms: ModelSampling, steps: int) -> torch.Tensor:
    """DDIM's uniform timesteps 1, 1 + k, 1 + 2k, ... (``k = 1000 // steps``), largest first, then 0.

    NOTE: like ComfyUI, the number of sigmas follows from the stride, so it is ``steps + 1``
    only when ``1000 // steps`` tiles the range evenly (e.g. 20 steps); 7 steps give 8 steps.
    """
    picks: list[float] = []
    n = steps
    if math.isclose(float(ms.sigmas[1]), 0.0, abs_tol=1e-5):
        n += 1
    else:
        picks = [0.0]
    stride = max(ms.num_timesteps // n, 1)
    for i in range(1, ms.num_timesteps, stride):
        picks.append(float(ms.sigmas[i]))
    return torch.tensor(picks[::-1], dtype=torch.float32)


SCHEDULERS: dict[str, Callable[[ModelSampling, int], torch.Tensor]] = {
    "normal": normal_scheduler,
    "karras": karras_scheduler,
    "exponential": exponential_scheduler,
    "simple": simple_scheduler,
    "sgm_uniform": sgm_uniform_scheduler,
    "ddim_uniform": ddim_uniform_scheduler,
}


def calculate_sigmas(ms: ModelSampling, scheduler: str, steps: int) -> torch.Tensor:
    """The full schedule of ``scheduler`` for ``steps`` steps.

    Args:
        ms (`ModelSampling`): the model's noise schedule.
        scheduler (`str`): one of :data:`SCHEDULER_NAMES`.
        steps (`int`): number of steps (>= 1).

    Returns:
        torch.Tensor: float32 sigmas, decreasing, ending with 0.

    Raises:
        ValueError: unknown scheduler or ``steps < 1``.
    """
    if scheduler not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {scheduler!r}; expected one of {', '.join(SCHEDULER_NAMES)}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return SCHEDULERS[scheduler](ms, steps)


# ---------------------------------------------------------------------------------------
# 3. The schedule of one KSampler / KSamplerAdvanced call
# ---------------------------------------------------------------------------------------


def _schedule_for_sampler(ms: ModelSampling, scheduler: str, steps: int, sampler_name: str) -> torch.Tensor:
    if sampler_name in DISCARD_PENULTIMATE_SIGMA_SAMPLERS:
        sigmas = calculate_sigmas(ms, scheduler, steps + 1)
        return torch.cat([sigmas[:-2], sigmas[-1:]])
    return calculate_sigmas(ms, scheduler, steps)


def calculate_sigmas_for_request(
    ms: ModelSampling,
    scheduler: str,
    steps: int,
    denoise: float = 1.0,
    start_at_step: int | None = None,
    end_at_step: int | None = None,
    return_with_leftover_noise: bool = False,
    sampler_name: str = "euler",
) -> torch.Tensor:
    """The sigmas one KSampler(Advanced) call walks through, with ComfyUI's rules.

    1. ``denoise < 1`` (img2img): compute ``int(steps / denoise)`` steps and keep only the
       last ``steps + 1`` sigmas, so the call starts part-way down the schedule.
       ``denoise <= 0`` gives no sigmas at all.
    2. ``end_at_step`` (KSamplerAdvanced) cuts the schedule after that step; unless
       ``return_with_leftover_noise``, the last kept sigma is set to 0 so the result is fully
       denoised.
    3. ``start_at_step`` drops the first steps; starting at or after the last step leaves
       nothing to do.

    Args:
        ms (`ModelSampling`): the model's noise schedule.
        scheduler (`str`): one of :data:`SCHEDULER_NAMES`.
        steps (`int`): the ``steps`` input.
        denoise (`float`, *optional*, defaults to 1.0): KSampler's ``denoise``.
        start_at_step (`int`, *optional*): KSamplerAdvanced's ``start_at_step`` (``None`` or 0: from the start).
        end_at_step (`int`, *optional*): KSamplerAdvanced's ``end_at_step`` (``None`` or >= steps: to the end).
        return_with_leftover_noise (`bool`, *optional*, defaults to False): keep the noise
            level at ``end_at_step`` instead of jumping to 0.
        sampler_name (`str`, *optional*, defaults to ``"euler"``): ``uni_pc`` drops the
            penultimate sigma (see :data:`DISCARD_PENULTIMATE_SIGMA_SAMPLERS`).

    Returns:
        torch.Tensor: float32 sigmas. An *empty* tensor means "nothing to sample": the caller
        returns the input latent unchanged (ComfyUI does the same).

    Raises:
        ValueError: unknown scheduler or ``steps < 1``.
    """
    if denoise is None or denoise > 0.9999:
        sigmas = _schedule_for_sampler(ms, scheduler, steps, sampler_name)
    elif denoise <= 0.0:
        return torch.zeros(0, dtype=torch.float32)
    else:
        total = int(steps / denoise)
        sigmas = _schedule_for_sampler(ms, scheduler, total, sampler_name)[-(steps + 1) :]
    sigmas = sigmas.clone()

    if end_at_step is not None and end_at_step < len(sigmas) - 1:
        sigmas = sigmas[: end_at_step + 1].clone()
        if not return_with_leftover_noise:
            sigmas[-1] = 0.0

    if start_at_step is not None and start_at_step > 0:
        if start_at_step < len(sigmas) - 1:
            sigmas = sigmas[start_at_step:].clone()
        else:
            return torch.zeros(0, dtype=torch.float32)
    if len(sigmas) < 2:
        return torch.zeros(0, dtype=torch.float32)
    return sigmas


# ---------------------------------------------------------------------------------------
# 4. Noise
# ---------------------------------------------------------------------------------------


def prepare_noise(latent_shape: tuple[int, ...], seed: int, batch_index: list[int] | None = None) -> torch.Tensor:
    """The initial noise of a request, drawn on the CPU from a generator seeded with ``seed``.

    Same stream as ComfyUI's ``prepare_noise`` (which seeds torch's global generator; we use
    a private one so concurrent requests never share RNG state). The whole ``(B, C, H, W)``
    block is drawn at once, so latent row ``b`` depends on ``B``.

    With ``batch_index`` (a latent picked out of a larger batch, e.g. by ``LatentFromBatch``),
    one ``(1, C, H, W)`` draw is made per index ``0..max(batch_index)`` and row ``b`` gets the
    draw numbered ``batch_index[b]``, so it matches that row of the full batch's noise.

    Args:
        latent_shape (`tuple[int, ...]`): ``(B, C, H, W)``.
        seed (`int`): the request's seed.
        batch_index (`list[int]`, *optional*): ComfyUI's ``batch_index`` of the latent.

    Returns:
        torch.Tensor: float32 CPU noise of shape ``latent_shape``.
    """
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    shape = tuple(int(d) for d in latent_shape)
    if batch_index is None:
        return torch.randn(shape, generator=generator, dtype=torch.float32)
    unique = sorted(set(int(i) for i in batch_index))
    draws: dict[int, torch.Tensor] = {}
    for i in range(unique[-1] + 1):
        noise = torch.randn((1,) + shape[1:], generator=generator, dtype=torch.float32)
        if i in unique:
            draws[i] = noise
    return torch.cat([draws[int(i)] for i in batch_index], dim=0)


def sampler_generator(seed: int) -> torch.Generator:
    """The generator a stochastic sampler draws its per-step noise from.

    ComfyUI seeds a fresh generator with the request's seed on the latent's device; on the
    CPU that is this generator, so ancestral results match ComfyUI run on a CPU. (Its first
    draw repeats the initial noise; that is ComfyUI's behaviour too.)
    """
    return torch.Generator(device="cpu").manual_seed(int(seed))


def _seed_of(generator: torch.Generator | None) -> int:
    if generator is None:
        raise ValueError("this sampler draws noise: pass the request's torch.Generator (never the global RNG)")
    return int(generator.initial_seed())


class BrownianTreeNoise:
    """SDE noise from a Brownian tree seeded with the request's seed (ComfyUI's construction for ``dpmpp_2m_sde``).

    One torchsde Brownian tree of the latent's shape spans ``[sigma_min, sigma_max]`` (the
    smallest positive and the largest sigma of the schedule) on the CPU in float32, with the
    seed as its entropy. The noise between ``sigma`` and ``sigma_next`` is the tree's
    increment over that interval scaled to unit variance, so increments over adjacent
    intervals add up to the increment over their union: the noise path does not depend on
    how the interval is cut into steps. Each request has its own tree, so results do not
    depend on batch composition.

    Args:
        x (`torch.Tensor`): the latent (its shape, device and dtype).
        sigmas (`torch.Tensor`): the schedule (only its positive range is used).
        seed (`int`): the request's seed.
    """

    def __init__(self, x: torch.Tensor, sigmas: torch.Tensor, seed: int):
        import torchsde  # NOTE: lazily; only SDE samplers need it

        # NOTE: torchsde rounds the tree's ends to its tolerance (1e-6), so querying exactly at
        # sigma_min/sigma_max warns "Should have tb<=t1" and clamps: expected here, not a problem.
        # Set per tree, not once at import: callers (and pytest) may reset the warning filters;
        # filterwarnings replaces an identical entry, so the list does not grow.
        warnings.filterwarnings("ignore", message=r"Should have t[ab]", category=UserWarning,
                                module=r"torchsde\._brownian")
        positive = sigmas.detach().float().cpu()
        positive = positive[positive > 0]
        self.t_min, self.t_max = positive.min(), positive.max()
        self.shape, self.device, self.dtype = tuple(x.shape), x.device, x.dtype
        self.tree = torchsde.BrownianTree(self.t_min, torch.zeros(self.shape, dtype=torch.float32), self.t_max,
                                          entropy=int(seed))

    def __call__(self, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        a, b = sigma.detach().float().cpu(), sigma_next.detach().float().cpu()
        # The tree is queried low -> high; going down in sigma flips the increment's sign.
        low, high, sign = (a, b, 1.0) if a < b else (b, a, -1.0)
        w = self.tree(low, high) * sign
        return (w / (high - low).sqrt()).to(device=self.device, dtype=self.dtype)


def _randn_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    if generator is None:
        raise ValueError("this sampler draws noise: pass the request's torch.Generator (never the global RNG)")
    return torch.randn(tuple(x.shape), generator=generator, dtype=torch.float32).to(device=x.device, dtype=x.dtype)


# ---------------------------------------------------------------------------------------
# 5. Samplers
# ---------------------------------------------------------------------------------------


@dataclass
class ModelCall:
    """A sampler's request for the denoised prediction ``x0 = D(x, sigma)``.

    Attributes:
        x: the noisy latent, unscaled (the driver applies ``c_in``).
        sigma: its noise level.
        step: the index of the sampler step this call belongs to (0-based).
    """

    x: torch.Tensor
    sigma: float
    step: int


SamplerCoroutine = Generator[ModelCall, torch.Tensor, torch.Tensor]
SamplerFn = Callable[..., SamplerCoroutine]


def _to_d(x: torch.Tensor, sigma: float, denoised: torch.Tensor) -> torch.Tensor:
    """The probability-flow ODE derivative dx/dsigma = (x - x0) / sigma (Karras et al. 2022, eq. 3)."""
    return (x - denoised) / sigma


def _ancestral_step(sigma_from: float, sigma_to: float, eta: float = 1.0) -> tuple[float, float]:
    """Split a step into a deterministic move to ``sigma_down`` plus fresh noise of std ``sigma_up``.

    ``sigma_down^2 + sigma_up^2 = sigma_to^2``; eta = 1 is DDPM-like ancestral sampling.
    """
    if not eta:
        return sigma_to, 0.0
    sigma_up = min(sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
    sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
    return sigma_down, sigma_up


def _sigma_list(sigmas: torch.Tensor) -> list[float]:
    return [float(s) for s in sigmas]


def euler(x: torch.Tensor, sigmas: torch.Tensor, generator: torch.Generator | None = None) -> SamplerCoroutine:
    """Euler's method on the probability-flow ODE (one model call per step).

    ComfyUI's ``ddim`` sampler is this same update over the chosen sigmas.
    """
    s = _sigma_list(sigmas)
    for i in range(len(s) - 1):
        denoised = yield ModelCall(x, s[i], i)
        x = x + _to_d(x, s[i], denoised) * (s[i + 1] - s[i])
    return x


def euler_ancestral(
    x: torch.Tensor,
    sigmas: torch.Tensor,
    generator: torch.Generator | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
) -> SamplerCoroutine:
    """Euler down to ``sigma_down``, then add fresh noise of std ``sigma_up`` (no noise on the last step)."""
    s = _sigma_list(sigmas)
    for i in range(len(s) - 1):
        denoised = yield ModelCall(x, s[i], i)
        sigma_down, sigma_up = _ancestral_step(s[i], s[i + 1], eta)
        if sigma_down == 0:
            x = denoised
        else:
            x = x + _to_d(x, s[i], denoised) * (sigma_down - s[i])
            x = x + _randn_like(x, generator) * (s_noise * sigma_up)
    return x


def heun(x: torch.Tensor, sigmas: torch.Tensor, generator: torch.Generator | None = None) -> SamplerCoroutine:
    """Heun's 2nd-order method (Karras et al. 2022, Alg. 1): Euler predictor, trapezoid corrector.

    Two model calls per step, except the last step to sigma 0 which is plain Euler.
    """
    s = _sigma_list(sigmas)
    for i in range(len(s) - 1):
        denoised = yield ModelCall(x, s[i], i)
        d = _to_d(x, s[i], denoised)
        dt = s[i + 1] - s[i]
        if s[i + 1] == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            denoised_2 = yield ModelCall(x_2, s[i + 1], i)
            d_2 = _to_d(x_2, s[i + 1], denoised_2)
            x = x + (d + d_2) / 2 * dt
    return x


def dpmpp_2m(x: torch.Tensor, sigmas: torch.Tensor, generator: torch.Generator | None = None) -> SamplerCoroutine:
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2), multistep in ``t = -log(sigma)``.

    Step i goes from ``t_i`` to ``t_{i+1}`` with ``h = t_{i+1} - t_i``:
    ``x <- (sigma_{i+1}/sigma_i) x - expm1(-h) D``, where D is the current x0 (first step and
    the final step to sigma 0) or the second-order extrapolation
    ``(1 + 1/(2r)) x0_i - 1/(2r) x0_{i-1}`` with ``r = h_{i-1} / h``.
    """
    s = _sigma_list(sigmas)
    old_denoised: torch.Tensor | None = None
    for i in range(len(s) - 1):
        denoised = yield ModelCall(x, s[i], i)
        if s[i + 1] == 0:
            x = denoised
        else:
            h = math.log(s[i]) - math.log(s[i + 1])
            if old_denoised is None:
                d = denoised
            else:
                h_last = math.log(s[i - 1]) - math.log(s[i])
                r = h_last / h
                d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (s[i + 1] / s[i]) * x - math.expm1(-h) * d
        old_denoised = denoised
    return x


def dpmpp_2m_sde(
    x: torch.Tensor,
    sigmas: torch.Tensor,
    generator: torch.Generator | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
) -> SamplerCoroutine:
    """DPM-Solver++(2M) SDE, midpoint variant (as ComfyUI's default ``solver_type``).

    Exact integration of the linear part of the reverse SDE in ``t = -log(sigma)`` with
    ``eta * h`` of extra noise injection, plus the 2M correction
    ``0.5 * (1 - e^{-h - eta h}) / r * (x0_i - x0_{i-1})``.

    The injected noise comes from a :class:`BrownianTreeNoise` seeded with the request's seed
    (the seed of ``generator``), as ComfyUI draws it.
    """
    s = _sigma_list(sigmas)
    seed = _seed_of(generator) if eta and len(s) > 2 else 0
    noise: BrownianTreeNoise | None = None
    old_denoised: torch.Tensor | None = None
    h_last: float | None = None
    for i in range(len(s) - 1):
        denoised = yield ModelCall(x, s[i], i)
        h = None
        if s[i + 1] == 0:
            x = denoised
        else:
            h = math.log(s[i]) - math.log(s[i + 1])
            eta_h = eta * h
            x = (s[i + 1] / s[i]) * math.exp(-eta_h) * x + (-math.expm1(-h - eta_h)) * denoised
            if old_denoised is not None and h_last is not None:
                r = h_last / h
                x = x + 0.5 * (-math.expm1(-h - eta_h)) * (1 / r) * (denoised - old_denoised)
            if eta and eta_h > 0:
                if noise is None:
                    noise = BrownianTreeNoise(x, sigmas, seed)
                x = x + noise(sigmas[i], sigmas[i + 1]) * (s[i + 1] * math.sqrt(-math.expm1(-2 * eta_h)) * s_noise)
        old_denoised = denoised
        h_last = h
    return x


def ddim(x: torch.Tensor, sigmas: torch.Tensor, generator: torch.Generator | None = None) -> SamplerCoroutine:
    """ComfyUI's ``ddim``: the Euler update (deterministic DDIM, eta=0, in sigma space)."""
    return (yield from euler(x, sigmas, generator))


def _lms_coefficient(order: int, t: list[float], i: int, j: int) -> float:
    """Integral over [t_i, t_{i+1}] of the Lagrange basis polynomial of node t_{i-j} (nodes t_i..t_{i-order+1})."""
    poly = np.polynomial.Polynomial([1.0])
    for k in range(order):
        if k == j:
            continue
        poly = poly * np.polynomial.Polynomial([-t[i - k], 1.0]) / (t[i - j] - t[i - k])
    antiderivative = poly.integ()
    return float(antiderivative(t[i + 1]) - antiderivative(t[i]))


def lms(
    x: torch.Tensor, sigmas: torch.Tensor, generator: torch.Generator | None = None, order: int = 4
) -> SamplerCoroutine:
    """Linear multistep (Adams-Bashforth in sigma), order up to 4 from the last derivatives.

    The derivative history is interpolated by a polynomial in sigma and integrated exactly
    over the step (k-diffusion integrates numerically; for polynomials both are exact).
    """
    s = _sigma_list(sigmas)
    ds: list[torch.Tensor] = []
    for i in range(len(s) - 1):
        denoised = yield ModelCall(x, s[i], i)
        ds.append(_to_d(x, s[i], denoised))
        if len(ds) > order:
            ds.pop(0)
        cur_order = min(i + 1, order)
        coeffs = [_lms_coefficient(cur_order, s, i, j) for j in range(cur_order)]
        x = x + sum(c * d for c, d in zip(coeffs, reversed(ds)))
    return x


def _solve(matrix: list[list[float]], rhs: list[float]) -> list[float]:
    return [float(v) for v in np.linalg.solve(np.asarray(matrix, dtype=np.float64), np.asarray(rhs, dtype=np.float64))]


def uni_pc(
    x: torch.Tensor,
    sigmas: torch.Tensor,
    generator: torch.Generator | None = None,
    variant: str = "bh1",
    max_order: int = 3,
    lower_order_final: bool = True,
) -> SamplerCoroutine:
    """UniPC (Zhao et al. 2023): multistep predictor (UniP) + corrector (UniC), data prediction.

    Works in ``lambda = -log(sigma)`` (the log-SNR of the equivalent VP model; the x0
    formulation is invariant to the VP/VE rescaling, so we stay in sigma space). For the
    move from ``sigma_{k-1}`` to ``sigma_k`` with ``h = lambda_k - lambda_{k-1}`` and order p:

    * base (DPM-Solver++ 1st order): ``x_ = (sigma_k/sigma_{k-1}) x - expm1(-h) m_{k-1}``
    * predictor: ``x_pred = x_ - B(h) * sum_j rho^p_j D_j`` with
      ``D_j = (m_{k-1-j} - m_{k-1}) / r_j`` over earlier x0 predictions ``m``,
      ``r_j = (lambda_{k-1-j} - lambda_{k-1}) / h``
    * the model is evaluated once at ``x_pred`` (that call is reused for the next step)
    * corrector: ``x = x_ - B(h) * (sum_j rho^c_j D_j + rho^c_p (m_k - m_{k-1}))``

    The rho are solved from ``R rho = b`` where ``R[i][j] = r_j^i`` and ``b`` comes from the
    ``phi`` functions of ``-h``; ``B(h) = -h`` (bh1) or ``expm1(-h)`` (bh2). Orders ramp up over
    the first steps and down over the last ones (``lower_order_final``); the final step has no
    corrector (it would need a model call after the last step).

    ComfyUI details kept: order ``min(3, steps - 1)``; a final sigma of 0 is replaced by 0.001
    (log-SNR must stay finite), so the result is the sample at sigma 0.001. Differs from
    ComfyUI in one edge case: with a single step ComfyUI's UniPC returns its input
    unchanged; here it takes one first-order step.

    Args:
        variant (`str`, *optional*, defaults to ``"bh1"``): ``bh1`` or ``bh2``.
        max_order (`int`, *optional*, defaults to 3): highest order used.
        lower_order_final (`bool`, *optional*, defaults to True): drop the order over the last
            steps (ComfyUI always does; it is more stable at few steps).
    """
    if variant not in ("bh1", "bh2"):
        raise ValueError(f"unknown UniPC variant {variant!r}; expected 'bh1' or 'bh2'")
    s = _sigma_list(sigmas)
    n = len(s) - 1
    if n < 1:
        return x
    if s[-1] == 0:
        s[-1] = 0.001
    lam = [-math.log(v) for v in s]
    order = max(1, min(max_order, n - 1))

    model_prev = [(yield ModelCall(x, s[0], 0))]
    lambda_prev = [lam[0]]
    for k in range(1, n + 1):
        if k < order:
            p = k
        elif lower_order_final:
            p = min(order, n + 1 - k)
        else:
            p = order
        m0 = model_prev[-1]
        h = lam[k] - lambda_prev[-1]
        hh = -h  # data prediction works with -h
        h_phi_1 = math.expm1(hh)
        b_h = hh if variant == "bh1" else math.expm1(hh)

        rks = [(lambda_prev[-(j + 1)] - lambda_prev[-1]) / h for j in range(1, p)]
        d1s = [(model_prev[-(j + 1)] - m0) / rk for j, rk in zip(range(1, p), rks)]
        rks.append(1.0)
        rows = [[rk ** (i - 1) for rk in rks] for i in range(1, p + 1)]
        b: list[float] = []
        h_phi_k = h_phi_1 / hh - 1
        factorial = 1
        for i in range(1, p + 1):
            b.append(h_phi_k * factorial / b_h)
            factorial *= i + 1
            h_phi_k = h_phi_k / hh - 1 / factorial

        x_base = (s[k] / s[k - 1]) * x - h_phi_1 * m0
        if d1s:
            rhos_p = [0.5] if p == 2 else _solve([r[:-1] for r in rows[:-1]], b[:-1])
            x_pred = x_base - b_h * sum(r * d for r, d in zip(rhos_p, d1s))
        else:
            x_pred = x_base
        if k == n:
            x = x_pred
            break

        model_t = yield ModelCall(x_pred, s[k], k)
        rhos_c = [0.5] if p == 1 else _solve(rows, b)
        corr = rhos_c[-1] * (model_t - m0)
        for r, d in zip(rhos_c[:-1], d1s):
            corr = corr + r * d
        x = x_base - b_h * corr

        model_prev.append(model_t)
        lambda_prev.append(lam[k])
        model_prev, lambda_prev = model_prev[-order:], lambda_prev[-order:]
    return x


def uni_pc_bh2(x: torch.Tensor, sigmas: torch.Tensor, generator: torch.Generator | None = None) -> SamplerCoroutine:
    """UniPC with the bh2 coefficient function ``B(h) = expm1(-h)`` (ComfyUI's ``uni_pc_bh2``)."""
    return (yield from uni_pc(x, sigmas, generator, variant="bh2"))


# Every sampler the stage accepts. ``uni_pc_bh2`` is ComfyUI's too but not (yet) in the
# node spec's list (graphs.constants.SAMPLER_NAMES).
SAMPLERS: dict[str, SamplerFn] = {
    "euler": euler,
    "euler_ancestral": euler_ancestral,
    "heun": heun,
    "dpmpp_2m": dpmpp_2m,
    "dpmpp_2m_sde": dpmpp_2m_sde,
    "ddim": ddim,
    "lms": lms,
    "uni_pc": uni_pc,
    "uni_pc_bh2": uni_pc_bh2,
}


def get_sampler(name: str) -> SamplerFn:
    """The sampler co-routine function called ``name``.

    Raises:
        ValueError: unknown name.
    """
    try:
        return SAMPLERS[name]
    except KeyError:
        raise ValueError(f"unknown sampler {name!r}; expected one of {', '.join(SAMPLERS)}") from None


def run_sampler(coroutine: SamplerCoroutine, denoise: Callable[[torch.Tensor, float], torch.Tensor]) -> torch.Tensor:
    """Drive one sampler co-routine with a plain denoiser function (tests, offline use).

    Args:
        coroutine (`SamplerCoroutine`): a started-or-fresh sampler co-routine.
        denoise (`Callable[[Tensor, float], Tensor]`): ``D(x, sigma) -> x0``.

    Returns:
        torch.Tensor: the sampler's final ``x``.
    """
    try:
        call = next(coroutine)
        while True:
            call = coroutine.send(denoise(call.x, call.sigma))
    except StopIteration as stop:
        return stop.value
