"""The app builder: validate args, bind the stage deployments and the ingress. Nothing else."""

from __future__ import annotations

import logging
from typing import Any

from ray.serve import Application

from deployments.clip_text.builder import build_text_encoder_deployment
from deployments.common.runtime import merge_options
from deployments.sampler.builder import build_sampler_deployment
from deployments.vae.builder import build_vae_deployment
from serve.config import AppArgs, StageOptions

logger = logging.getLogger(__name__)

DEFAULT_INGRESS_OPTIONS: dict[str, Any] = {
    "name": "Ingress",
    "ray_actor_options": {"num_cpus": 0.25},
    "num_replicas": 1,
    "max_ongoing_requests": 200,
    "health_check_period_s": 10,
}


DEFAULT_AGENT_OPTIONS: dict[str, Any] = {
    "name": "AgentRunner",
    "ray_actor_options": {"num_cpus": 0.1},
    "num_replicas": 1,
    "max_ongoing_requests": 64,
    "health_check_period_s": 10,
}


def _opts(stage: StageOptions, app_args: AppArgs | None = None) -> dict[str, Any]:
    opts = stage.model_dump(exclude_none=True)
    if app_args is not None:
        # JSON logs by default: Serve adds deployment, replica and request_id to every line, and
        # deployments.common.observability adds prompt_id (see README, "Operations").
        opts["logging_config"] = {"encoding": app_args.log_encoding, "log_level": app_args.log_level,
                                  **(opts.get("logging_config") or {})}
    return opts


def build_app(args: dict[str, Any] | AppArgs | None = None) -> Application:
    """Build the whole application (``import_path: serve.app:build_app`` in Serve configs).

    Args:
        args: :class:`AppArgs` or its dict form; ``None`` uses the embedded defaults.

    Returns:
        The ingress bound to the text-encoder, sampler and VAE deployments (and, with
        ``agents``, the LLM and the agent runner).

    Raises:
        pydantic.ValidationError: invalid arguments.
    """
    from serve.ingress import IngressDeployment

    app_args = args if isinstance(args, AppArgs) else AppArgs.model_validate(args or {})
    text_encoder = build_text_encoder_deployment(app_args.models_dir, _opts(app_args.text_encoder, app_args))
    sampler = build_sampler_deployment(app_args.models_dir, _opts(app_args.sampler, app_args))
    vae = build_vae_deployment(app_args.models_dir, _opts(app_args.vae, app_args))
    llm = agent = None
    if app_args.agents:
        from deployments.agent.deployment import build_agent_deployment
        from deployments.llm.builder import build_llm_deployment

        llm = build_llm_deployment({**app_args.llm, "models_dir": app_args.models_dir}, _opts(app_args.llm_stage, app_args),
                                   http=False)
        agent_options = merge_options(DEFAULT_AGENT_OPTIONS, _opts(app_args.agent_stage, app_args))
        agent = build_agent_deployment(
            {"database_url": app_args.resolved_database_url, "image_service_url": app_args.image_service_url,
             "tracing_exporter": app_args.agent_tracing_exporter}, llm, **agent_options)
    ingress_options = merge_options(DEFAULT_INGRESS_OPTIONS, _opts(app_args.ingress, app_args))
    return IngressDeployment.options(**ingress_options).bind(app_args.model_dump(mode="json"), text_encoder, sampler, vae,
                                                             llm, agent)
