"""Builder of the text-encoder deployment."""

from __future__ import annotations

import logging
from typing import Any

from ray.serve import Application

from deployments.common.runtime import merge_options

logger = logging.getLogger(__name__)

DEFAULT_TEXT_ENCODER_OPTIONS: dict[str, Any] = {
    "name": "TextEncoder",
    "ray_actor_options": {"num_cpus": 0.25},
    "autoscaling_config": {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 16},
    "max_ongoing_requests": 64,
    "user_config": {"max_batch_size": 16, "batch_wait_timeout_s": 0.01, "torch_threads": 1},
    "health_check_period_s": 10,
}


def build_text_encoder_deployment(models_dir: str, overrides: dict[str, Any] | None = None) -> Application:
    """Bind the CLIP text encoder.

    Args:
        models_dir: models folder.
        overrides: Serve options merged over :data:`DEFAULT_TEXT_ENCODER_OPTIONS`.

    Returns:
        The bound application (a DeploymentHandle once deployed).
    """
    from deployments.clip_text.deployment import ClipTextDeployment

    options = merge_options(DEFAULT_TEXT_ENCODER_OPTIONS, overrides)
    logger.info("TextEncoder options: %s", options)
    return ClipTextDeployment.options(**options).bind({"models_dir": models_dir})
