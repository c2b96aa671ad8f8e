"""Builder of the sampler deployment."""

from __future__ import annotations

import logging
from typing import Any

from ray.serve import Application

from deployments.common.runtime import merge_options

logger = logging.getLogger(__name__)

DEFAULT_SAMPLER_OPTIONS: dict[str, Any] = {
    "name": "Sampler",
    "ray_actor_options": {"num_cpus": 0.5},
    "autoscaling_config": {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 8,
                           "upscale_delay_s": 5, "downscale_delay_s": 30},
    # NOTE: must be >= max_batch_size or a replica never sees enough requests to fill a batch.
    "max_ongoing_requests": 16,
    "user_config": {"max_batch_size": 8, "batch_wait_timeout_s": 0.05, "torch_threads": 2},
    "health_check_period_s": 10,
}


def build_sampler_deployment(models_dir: str, overrides: dict[str, Any] | None = None) -> Application:
    """Bind the UNet + ControlNet sampler.

    Args:
        models_dir: models folder.
        overrides: Serve options merged over :data:`DEFAULT_SAMPLER_OPTIONS`.

    Returns:
        The bound application.
    """
    from deployments.sampler.deployment import SamplerDeployment

    options = merge_options(DEFAULT_SAMPLER_OPTIONS, overrides)
    logger.info("Sampler options: %s", options)
    return SamplerDeployment.options(**options).bind({"models_dir": models_dir})
