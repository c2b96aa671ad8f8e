"""Builder of the LLM deployment."""

from __future__ import annotations

import logging
from typing import Any

from ray.serve import Application

from deployments.common.runtime import merge_options

logger = logging.getLogger(__name__)

#: Serve options of the LLM deployment; ``overrides`` are merged over them (dicts one level deep).
DEFAULT_LLM_OPTIONS: dict[str, Any] = {
    "name": "LLM",
    # NOTE: half a CPU and one torch thread: decoding a 135M model is memory-bound, and with
    # 2 threads on a shared 2-core box OpenMP spin-waits made it ~5x slower (measured).
    "ray_actor_options": {"num_cpus": 0.5},
    "autoscaling_config": {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 8},
    "max_ongoing_requests": 32,
    "user_config": {"max_batch_size": 8, "batch_wait_timeout_s": 0.02, "torch_threads": 1},
    "health_check_period_s": 10,
    "health_check_timeout_s": 30,
}


def build_llm_deployment(config: Any = None, overrides: dict[str, Any] | None = None, *, http: bool = True) -> Application:
    """Bind the LLM stage.

    Args:
        config (`LLMConfig`, `dict` or `None`): The stage config; ``None`` serves SmolLM2 on
            the CPU from ``$GENSERVE_MODELS_DIR``.
        overrides (`dict`, *optional*): Serve options merged over :data:`DEFAULT_LLM_OPTIONS`
            (``num_replicas``, ``ray_actor_options``, ``user_config``, ...).
        http (`bool`, *optional*, defaults to True): serve the OpenAI-compatible routes itself; False when the
            deployment is composed behind another ingress (Serve allows one ingress per application).

    Returns:
        The bound application (also an OpenAI-compatible HTTP app when run on its own).

    Raises:
        pydantic.ValidationError: ``config`` is invalid.
    """
    from deployments.llm.deployment import LLMDeployment, LLMIngressDeployment
    from deployments.llm.model import LLMConfig

    cfg = LLMConfig.model_validate(config or {})
    options = merge_options(DEFAULT_LLM_OPTIONS, overrides)
    actor = dict(options.get("ray_actor_options") or {})
    if cfg.engine == "vllm":
        actor.setdefault("num_gpus", 1)
    options["ray_actor_options"] = actor
    logger.info("LLM options: %s", options)
    deployment = LLMIngressDeployment if http else LLMDeployment
    return deployment.options(**options).bind(cfg)
