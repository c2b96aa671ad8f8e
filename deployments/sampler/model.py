"""The sampler stage's plain model class: UNet + ControlNet + KSampler, batched across requests.

No Ray here; :mod:`deployments.sampler.deployment` wraps this class. Read top to bottom:

1. event types (:class:`SamplerCancelled`, plus ``SamplerProgress``/``SamplerOutput`` from
   :mod:`graphs.types`),
2. :class:`SamplerModel`, whose :meth:`SamplerModel.iter_batch` steps many
   :class:`~graphs.types.SampleRequest` in lockstep and stacks all their pending model
   calls into as few UNet forwards as possible,
3. private helpers (per-request state, ControlNet hint preparation).

Batching model. Every sampler in :mod:`deployments.sampler.k_sampling` is a co-routine that
yields a ``ModelCall(x, sigma, step)`` and waits for the denoised prediction. One *tick*
collects the pending call of every live request, groups the calls that can share a forward
(same UNet, same latent height/width, same conditioning length), builds one row per
(latent row x conditioning entry) with rows ``[cond..., uncond...]`` and a per-row
sigma/timestep, runs the ControlNets and the UNet once per group, combines cond and uncond
with classifier-free guidance, and sends each request its x0. Nothing a request computes
depends on its batch-mates except through floating-point batching effects: initial and
ancestral noise come from the request's own seeded CPU generators.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from deployments.sampler import k_sampling
from deployments.sampler.config import SamplerConfig
from deployments.sampler.k_sampling import ModelCall, ModelSampling, SamplerCoroutine
from graphs.types import (
    ConditioningEntry,
    ControlNetRef,
    ModelRef,
    SampleRequest,
    SamplerOutput,
    SamplerProgress,
)

__all__ = ["ModelLoaderLike", "SamplerCancelled", "SamplerConfig", "SamplerEvent", "SamplerModel"]

logger = logging.getLogger(__name__)

# How many UNet/ControlNet call sizes a long-running model keeps for inspection.
CALL_HISTORY = 4096


@dataclass
class SamplerCancelled:
    """Emitted once for a request dropped from its batch at a step boundary.

    Attributes:
        step: steps it had finished when it was dropped.
        total: steps it would have run.
        request_id: the request's ``request_id``.
    """

    step: int
    total: int
    request_id: str = ""


SamplerEvent = SamplerProgress | SamplerOutput | SamplerCancelled | None


class ModelLoaderLike(Protocol):
    """What the sampler needs from the models folder (``deployments.checkpoints.ModelLoader``)."""

    def unet(self, ref: ModelRef) -> torch.nn.Module: ...

    def model_sampling(self, checkpoint: str) -> dict[str, Any]: ...

    def controlnet(self, ref: ControlNetRef) -> torch.nn.Module: ...


class SamplerModel:
    """Runs KSampler requests on a diffusers UNet (and ControlNets), batching across requests.

    Usage:

    1. One request: ``SamplerModel(cfg, loader).sample(request) -> SamplerOutput``.
    2. Many requests with per-step events (what the Serve deployment does)::

           for events in model.iter_batch(requests, is_cancelled=lambda i: cancelled[i]):
               ...  # one entry per request: SamplerProgress | SamplerOutput | SamplerCancelled | None

    3. Tests inject a small loader: ``SamplerModel(SamplerConfig(), TinyModelLoader())``
       (``tests/fakes/tiny_models.py``) with seeded tiny diffusers models.

    Args:
        config (`SamplerConfig`): stage settings.
        loader (`ModelLoaderLike`): gives UNets, ControlNets and noise-schedule settings by
            reference; expected to cache what it loads.
        on_unet_call (`Callable[[int, int], None]`, *optional*): called after every UNet
            forward with ``(rows, requests)`` (e.g. to feed a batch-size metric).

    Attributes:
        unet_calls (`deque[int]`): row count of each UNet forward, the last ``CALL_HISTORY``.
        controlnet_calls (`deque[int]`): row count of each ControlNet forward, likewise.
    """

    def __init__(
        self,
        config: SamplerConfig,
        loader: ModelLoaderLike,
        on_unet_call: Callable[[int, int], None] | None = None,
    ) -> None:
        self.config = config
        self.loader = loader
        self.on_unet_call = on_unet_call
        self.device = torch.device(config.device)
        self.dtype = getattr(torch, config.dtype)
        self.unet_calls: deque[int] = deque(maxlen=CALL_HISTORY)
        self.controlnet_calls: deque[int] = deque(maxlen=CALL_HISTORY)
        self._schedules: dict[str, tuple[ModelSampling, float]] = {}

    # ------------------------------------------------------------------ public API

    def sample(self, request: SampleRequest) -> SamplerOutput:
        """Run one request to the end.

        Args:
            request (`SampleRequest`): the KSampler inputs.

        Returns:
            SamplerOutput: final latents, in the same space as ``request.latent``.

        Raises:
            ValueError: invalid request (see :meth:`check_request`).
        """
        for events in self.iter_batch([request]):
            if isinstance(events[0], SamplerOutput):
                return events[0]
        raise RuntimeError("sampler finished without an output")  # unreachable without cancellation

    def check_request(self, request: SampleRequest) -> None:
        """Validate one request without running it (the deployment calls this before batching).

        Raises:
            ValueError: unknown sampler or scheduler, bad latent or conditioning shapes.
        """
        if request.sampler_name not in k_sampling.SAMPLERS:
            raise ValueError(
                f"unknown sampler_name {request.sampler_name!r}; expected one of {', '.join(k_sampling.SAMPLERS)}"
            )
        if request.scheduler not in k_sampling.SCHEDULERS:
            raise ValueError(
                f"unknown scheduler {request.scheduler!r}; expected one of {', '.join(k_sampling.SCHEDULER_NAMES)}"
            )
        if request.steps < 1:
            raise ValueError(f"steps must be >= 1, got {request.steps}")
        latent = np.asarray(request.latent)
        if latent.ndim != 4 or latent.shape[0] < 1:
            raise ValueError(f"latent must be (B, C, H/8, W/8) with B >= 1, got shape {latent.shape}")
        for name, cond in (("positive", request.positive), ("negative", request.negative)):
            if not cond:
                raise ValueError(f"{name} conditioning is empty; connect a CLIPTextEncode output")
            for entry in cond:
                emb = np.asarray(entry.embedding)
                if emb.ndim not in (2, 3):
                    raise ValueError(f"{name} embedding must be (1, T, D) or (T, D), got shape {emb.shape}")
                for hint in entry.controls:
                    img = np.asarray(hint.image)
                    if img.ndim != 4 or img.shape[-1] != 3:
                        raise ValueError(f"control image must be an IMAGE (B, H, W, 3), got shape {img.shape}")

    def iter_batch(
        self,
        requests: list[SampleRequest],
        is_cancelled: Callable[[int], bool] | None = None,
    ) -> Iterator[list[SamplerEvent]]:
        """Step all ``requests`` in lockstep, yielding one event list per tick.

        Each yielded list has one entry per request, in order:

        * :class:`~graphs.types.SamplerProgress` ``(step, total)`` when the request finished
          step ``step`` (1-based count) on this tick,
        * :class:`~graphs.types.SamplerOutput` on the tick it finishes its last step (this
          also stands for the final progress ``total/total``),
        * :class:`SamplerCancelled` on the tick it is dropped,
        * ``None`` otherwise, and forever after its output or cancellation.

        Args:
            requests (`list[SampleRequest]`): the batch.
            is_cancelled (`Callable[[int], bool]`, *optional*): polled with a request's index
                at each of its step boundaries; True drops it from the batch. Its batch-mates
                continue unaffected.

        Yields:
            list[SamplerEvent]: the events of one tick.

        Raises:
            ValueError: an invalid request (before any work starts); the message names its index.
        """
        # 1. Check inputs
        for i, request in enumerate(requests):
            try:
                self.check_request(request)
            except ValueError as exc:
                raise ValueError(f"request {i} ({request.request_id or 'no id'}): {exc}") from exc

        # 2. Timesteps, 3. latents and noise, conditioning and control hints, per request
        unets: dict[str, torch.nn.Module] = {}
        controlnets: dict[str, torch.nn.Module] = {}
        jobs = [self._prepare_job(i, r, unets, controlnets) for i, r in enumerate(requests)]

        # 4. Denoising loop: one tick per iteration
        while any(not job.done for job in jobs):
            events: list[SamplerEvent] = [None] * len(jobs)
            live: list[_Job] = []
            for job in jobs:
                if job.done:
                    continue
                if job.call is None:
                    # Nothing to sample (denoise=0, start_at_step past the end): done at once.
                    events[job.index] = self._finish(job)
                    continue
                if job.call.step != job.checked_step:
                    job.checked_step = job.call.step
                    if is_cancelled is not None and is_cancelled(job.index):
                        events[job.index] = self._cancel(job)
                        continue
                live.append(job)
            if live:
                # 5. Typed outputs: progress, output or nothing for each request of the tick
                for job, event in self._tick(live, unets, controlnets):
                    events[job.index] = event
            yield events

    # ------------------------------------------------------------------ preparation

    def _schedule(self, checkpoint: str) -> tuple[ModelSampling, float]:
        if checkpoint not in self._schedules:
            settings = dict(self.loader.model_sampling(checkpoint))
            ms = ModelSampling.from_config(settings, quantize_timesteps=self.config.quantize_timesteps)
            self._schedules[checkpoint] = (ms, float(self.config.latent_scale_factor))
        return self._schedules[checkpoint]

    def _module(self, module: torch.nn.Module) -> torch.nn.Module:
        param = next(module.parameters(), None)
        if param is not None and (param.device != self.device or param.dtype != self.dtype):
            module.to(device=self.device, dtype=self.dtype)
        return module.eval()

    @torch.inference_mode()
    def _prepare_job(
        self,
        index: int,
        request: SampleRequest,
        unets: dict[str, torch.nn.Module],
        controlnets: dict[str, torch.nn.Module],
    ) -> "_Job":
        model_key = request.model.key()
        if model_key not in unets:
            unets[model_key] = self._module(self.loader.unet(request.model))
        ms, scale = self._schedule(request.model.checkpoint)

        # 2. Timesteps (ComfyUI's denoise / start / end / leftover-noise rules)
        sigmas = k_sampling.calculate_sigmas_for_request(
            ms,
            request.scheduler,
            request.steps,
            denoise=request.denoise,
            start_at_step=request.start_at_step,
            end_at_step=request.end_at_step,
            return_with_leftover_noise=request.return_with_leftover_noise,
            sampler_name=request.sampler_name,
        )
        latent_np = np.ascontiguousarray(request.latent, dtype=np.float32)
        batch, channels, height, width = latent_np.shape
        expected = getattr(getattr(unets[model_key], "config", None), "in_channels", None)
        if expected is not None and channels != expected:
            raise ValueError(
                f"request {index}: latent has {channels} channels but {request.model.checkpoint} expects {expected}"
            )
        job = _Job(
            index=index,
            request=request,
            model_key=model_key,
            ms=ms,
            scale=scale,
            sigmas=sigmas,
            total=max(len(sigmas) - 1, 0),
            latent_np=latent_np,
            batch=batch,
            height=height,
            width=width,
        )
        if job.total == 0:
            return job

        # 3. Latents: noise from the request's own seeded CPU generator (see SamplerConfig
        # .latent_scale_factor for the space LATENT values live in)
        latent = torch.from_numpy(latent_np.copy()) * scale
        if request.add_noise:
            noise = k_sampling.prepare_noise(latent.shape, request.seed, request.batch_index)
        else:
            noise = torch.zeros_like(latent)
        x = ms.noise_scaling(float(sigmas[0]), noise, latent, max_denoise=ms.is_max_denoise(sigmas))
        x = x.to(self.device)

        # Conditioning rows: repeat token sequences to a common length (exact for attention:
        # duplicating every key/value leaves softmax-weighted averages unchanged).
        entries = list(request.positive) + list(request.negative)
        lengths = [_context(entry).shape[1] for entry in entries]
        job.context_len = math.lcm(*lengths)
        job.positive = [self._prepare_cond(e, job, ms, controlnets) for e in request.positive]
        job.negative = [self._prepare_cond(e, job, ms, controlnets) for e in request.negative]
        job.use_uncond = not math.isclose(request.cfg, 1.0)

        sampler = k_sampling.get_sampler(request.sampler_name)
        generator = k_sampling.sampler_generator(request.seed)
        job.coroutine = sampler(x, sigmas.to(self.device), generator)
        try:
            job.call = next(job.coroutine)
        except StopIteration as stop:  # a sampler with nothing to do
            job.final = stop.value
            job.coroutine = None
        return job

    def _prepare_cond(
        self,
        entry: ConditioningEntry,
        job: "_Job",
        ms: ModelSampling,
        controlnets: dict[str, torch.nn.Module],
    ) -> "_Cond":
        context = _context(entry)
        context = context.repeat(1, job.context_len // context.shape[1], 1).to(self.device)
        controls: list[_Control] = []
        for hint in entry.controls:
            if hint.strength == 0:
                continue  # ComfyUI skips a zero-strength ControlNet entirely
            if hint.control_net.name not in controlnets:
                controlnets[hint.control_net.name] = self._module(self.loader.controlnet(hint.control_net))
            image = _prepare_hint(np.asarray(hint.image), job.height * 8, job.width * 8).to(self.device)
            controls.append(
                _Control(
                    name=hint.control_net.name,
                    image=image,
                    strength=float(hint.strength),
                    sigma_start=ms.percent_to_sigma(hint.start_percent),
                    sigma_end=ms.percent_to_sigma(hint.end_percent),
                )
            )
        return _Cond(context=context, controls=controls)

    # ------------------------------------------------------------------ one tick

    @torch.inference_mode()
    def _tick(
        self,
        jobs: list["_Job"],
        unets: dict[str, torch.nn.Module],
        controlnets: dict[str, torch.nn.Module],
    ) -> list[tuple["_Job", SamplerEvent]]:
        """Evaluate every pending model call once, batched per compatible group, and advance."""
        groups: dict[tuple, list[_Job]] = {}
        for job in jobs:
            groups.setdefault((job.model_key, job.height, job.width, job.context_len), []).append(job)

        denoised: dict[int, torch.Tensor] = {}
        for (model_key, _, _, _), members in groups.items():
            denoised.update(self._denoise_group(unets[model_key], members, controlnets))

        out: list[tuple[_Job, SamplerEvent]] = []
        for job in jobs:
            previous_step = job.call.step
            try:
                job.call = job.coroutine.send(denoised[job.index])
            except StopIteration as stop:
                job.final = stop.value
                job.coroutine = None
                out.append((job, self._finish(job)))
                continue
            if job.call.step > previous_step:
                out.append((job, SamplerProgress(step=job.call.step, total=job.total)))
            else:
                out.append((job, None))
        return out

    def _denoise_group(
        self, unet: torch.nn.Module, jobs: list["_Job"], controlnets: dict[str, torch.nn.Module]
    ) -> dict[int, torch.Tensor]:
        """x0 predictions (after CFG) for jobs sharing one UNet and shape."""
        # Rows [cond..., uncond...]; each row is (job, branch, entry, latent row b).
        rows: list[tuple[_Job, int, int, int]] = []
        for branch in (0, 1):
            for job in jobs:
                if branch == 1 and not job.use_uncond:
                    continue
                conds = job.positive if branch == 0 else job.negative
                for e in range(len(conds)):
                    for b in range(job.batch):
                        rows.append((job, branch, e, b))

        preds: list[torch.Tensor] = []
        step = self.config.max_batch_rows
        for start in range(0, len(rows), step):
            preds.append(self._forward(unet, rows[start : start + step], controlnets))
        pred_rows = torch.cat(preds, dim=0)

        # Mean over conditioning entries (ComfyUI averages unmasked entries), then CFG on x0:
        # x0 = uncond + cfg * (cond - uncond) (Ho & Salimans 2022, written on the x0 prediction).
        sums: dict[tuple[int, int], torch.Tensor] = {}
        for r, (job, branch, _, b) in enumerate(rows):
            key = (job.index, branch)
            if key not in sums:
                sums[key] = torch.zeros_like(job.call.x)
            sums[key][b] += pred_rows[r]
        result: dict[int, torch.Tensor] = {}
        for job in jobs:
            cond = sums[(job.index, 0)] / len(job.positive)
            if job.use_uncond:
                uncond = sums[(job.index, 1)] / len(job.negative)
                result[job.index] = uncond + (cond - uncond) * job.request.cfg
            else:
                result[job.index] = cond
        return result

    def _forward(
        self,
        unet: torch.nn.Module,
        rows: list[tuple["_Job", int, int, int]],
        controlnets: dict[str, torch.nn.Module],
    ) -> torch.Tensor:
        """One UNet forward (plus its ControlNets) over ``rows``; returns x0 per row (float32)."""
        x = torch.cat([job.call.x[b : b + 1] for job, _, _, b in rows], dim=0)
        sigma = torch.tensor([job.call.sigma for job, _, _, _ in rows], dtype=torch.float32, device=x.device)
        ms = rows[0][0].ms  # one UNet per group, hence one noise schedule
        timesteps = ms.timestep(sigma.cpu()).to(x.device)
        x_in = ms.calculate_input(sigma, x)
        context = torch.cat([_branch(job, branch)[e].context_row(b) for job, branch, e, b in rows], dim=0)

        residuals = self._control_residuals(rows, x_in, timesteps, context, controlnets)
        kwargs: dict[str, Any] = {}
        if residuals is not None:
            kwargs["down_block_additional_residuals"] = tuple(r.to(self.dtype) for r in residuals[0])
            kwargs["mid_block_additional_residual"] = residuals[1].to(self.dtype)
        model_output = unet(
            x_in.to(self.dtype), timesteps.to(self.dtype), encoder_hidden_states=context.to(self.dtype),
            return_dict=False, **kwargs,
        )[0].float()

        n_requests = len({job.index for job, _, _, _ in rows})
        self.unet_calls.append(len(rows))
        for job in {job.index: job for job, _, _, _ in rows}.values():
            job.unet_batch_sizes.append(len(rows))
        if self.on_unet_call is not None:
            self.on_unet_call(len(rows), n_requests)
        return ms.calculate_denoised(sigma, model_output, x)

    def _control_residuals(
        self,
        rows: list[tuple["_Job", int, int, int]],
        x_in: torch.Tensor,
        timesteps: torch.Tensor,
        context: torch.Tensor,
        controlnets: dict[str, torch.nn.Module],
    ) -> tuple[list[torch.Tensor], torch.Tensor] | None:
        """Summed ControlNet residuals for every row; zeros for rows without an active control.

        One ControlNet forward per ControlNet model over all rows that use it on this tick.
        A control is active while ``sigma_end <= sigma <= sigma_start`` (ComfyUI's
        ``timestep_percent_range``); its residuals are scaled by its strength, and chained
        controls on one conditioning add up.
        """
        uses: dict[str, list[tuple[int, torch.Tensor, float]]] = {}
        for r, (job, branch, e, b) in enumerate(rows):
            for control in _branch(job, branch)[e].controls:
                if control.sigma_end <= job.call.sigma <= control.sigma_start:
                    image = control.image[b % control.image.shape[0]]
                    uses.setdefault(control.name, []).append((r, image, control.strength))
        if not uses:
            return None

        down: list[torch.Tensor] | None = None
        mid: torch.Tensor | None = None
        for name, items in uses.items():
            idx = torch.tensor([r for r, _, _ in items], dtype=torch.long, device=x_in.device)
            hint = torch.stack([image for _, image, _ in items]).to(self.dtype)
            strength = torch.tensor([s for _, _, s in items], dtype=torch.float32, device=x_in.device)
            strength = strength.view(-1, 1, 1, 1)
            # NOTE: conditioning_scale=1 and the per-row strength applied below, so rows with
            # different strengths share one forward (diffusers only scales the outputs).
            down_res, mid_res = controlnets[name](
                x_in[idx].to(self.dtype), timesteps[idx].to(self.dtype),
                encoder_hidden_states=context[idx].to(self.dtype), controlnet_cond=hint,
                conditioning_scale=1.0, return_dict=False,
            )
            self.controlnet_calls.append(len(items))
            if down is None or mid is None:
                down = [x_in.new_zeros((len(rows),) + tuple(t.shape[1:])) for t in down_res]
                mid = x_in.new_zeros((len(rows),) + tuple(mid_res.shape[1:]))
            for acc, res in zip(down, down_res):
                acc.index_add_(0, idx, res.float() * strength)
            mid.index_add_(0, idx, mid_res.float() * strength)
        if down is None or mid is None:
            return None
        return down, mid

    # ------------------------------------------------------------------ endings

    def _finish(self, job: "_Job") -> SamplerOutput:
        job.done = True
        if job.final is None:
            latents = job.latent_np.copy()  # nothing sampled: the input comes back unchanged
        else:
            latents = (job.final.float() / job.scale).cpu().numpy().astype(np.float32)
        return SamplerOutput(
            latents=latents,
            seed=job.request.seed,
            steps_run=job.total,
            unet_batch_sizes=list(job.unet_batch_sizes),
        )

    def _cancel(self, job: "_Job") -> SamplerCancelled:
        job.done = True
        step = job.call.step if job.call is not None else 0
        if job.coroutine is not None:
            job.coroutine.close()
            job.coroutine = None
        logger.info("sampler request %s cancelled after %d/%d steps", job.request.request_id, step, job.total)
        return SamplerCancelled(step=step, total=job.total, request_id=job.request.request_id)


# ---------------------------------------------------------------------- private helpers


@dataclass
class _Control:
    """A ControlHint prepared for one request: hint resized to the latent's pixel size."""

    name: str
    image: torch.Tensor  # (B_hint, 3, H*8, W*8), [0, 1]
    strength: float
    sigma_start: float
    sigma_end: float


@dataclass
class _Cond:
    context: torch.Tensor  # (E, T, D) with E = 1 or the latent batch size
    controls: list[_Control]

    def context_row(self, b: int) -> torch.Tensor:
        """The context for latent row ``b`` (``(1, T, D)``), repeating a shorter batch like ComfyUI."""
        i = b % self.context.shape[0]
        return self.context[i : i + 1]


@dataclass
class _Job:
    """The state of one request inside :meth:`SamplerModel.iter_batch`."""

    index: int
    request: SampleRequest
    model_key: str
    ms: ModelSampling
    scale: float
    sigmas: torch.Tensor
    total: int
    latent_np: np.ndarray
    batch: int
    height: int
    width: int
    context_len: int = 0
    positive: list[_Cond] = field(default_factory=list)
    negative: list[_Cond] = field(default_factory=list)
    use_uncond: bool = True
    coroutine: SamplerCoroutine | None = None
    call: ModelCall | None = None
    checked_step: int = -1
    final: torch.Tensor | None = None
    done: bool = False
    unet_batch_sizes: list[int] = field(default_factory=list)


def _branch(job: _Job, branch: int) -> list[_Cond]:
    return job.positive if branch == 0 else job.negative


def _context(entry: ConditioningEntry) -> torch.Tensor:
    emb = torch.from_numpy(np.ascontiguousarray(entry.embedding, dtype=np.float32))
    return emb[None] if emb.ndim == 2 else emb


def _prepare_hint(image: np.ndarray, height: int, width: int) -> torch.Tensor:
    """IMAGE ``(B, H, W, 3)`` -> ``(B, 3, height, width)`` in [0, 1], center-cropped to the
    target aspect ratio and resized with ``nearest-exact`` (ComfyUI's ControlNet default).

    Same rule as graphs.nodes.resize.resize_nchw(..., "nearest-exact", "center"), in torch.
    """
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).movedim(-1, 1)
    h, w = x.shape[2], x.shape[3]
    old_aspect, new_aspect = w / h, width / height
    if old_aspect > new_aspect:
        cut = round((w - w * (new_aspect / old_aspect)) / 2)
        x = x[:, :, :, cut : w - cut] if cut > 0 else x
    elif old_aspect < new_aspect:
        cut = round((h - h * (old_aspect / new_aspect)) / 2)
        x = x[:, :, cut : h - cut, :] if cut > 0 else x
    if (x.shape[2], x.shape[3]) != (height, width):
        x = F.interpolate(x, size=(height, width), mode="nearest-exact")
    return x
