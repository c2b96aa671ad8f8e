"""Builder of the VAE deployment."""

from __future__ import annotations

import logging
from typing import Any

from ray.serve import Application

from deployments.common.runtime import merge_options

logger = logging.getLogger(__name__)

DEFAULT_VAE_OPTIONS: dict[str, Any] = {
    "name": "VAE",
    "ray_actor_options": {"num_cpus": 0.25},
    "autoscaling_config": {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 8},
    "max_ongoing_requests": 32,
    "user_config": {"max_batch_size": 8, "batch_wait_timeout_s": 0.01, "torch_threads": 1},
    "health_check_period_s": 10,
}


def build_vae_deployment(models_dir: str, overrides: dict[str, Any] | None = None) -> Application:
    """Bind the VAE (decode/encode).

    Args:
        models_dir: models folder.
        overrides: Serve options merged over :data:`DEFAULT_VAE_OPTIONS`.

    Returns:
        The bound application.
    """
    from deployments.vae.deployment import VaeDeployment

    options = merge_options(DEFAULT_VAE_OPTIONS, overrides)
    logger.info("VAE options: %s", options)
    return VaeDeployment.options(**options).bind({"models_dir": models_dir})
