"""Serve wrapper of the agent runner: ``AgentRunner`` deployment, handle adapters, builder.

The deployment owns an `AgentService` (store + runner + background runs). The ingress can
either run an `AgentService` in-process, or mount the router over
`deployments.agent.service.RemoteAgentService`, which sends submissions to this deployment
through its handle and reads runs, steps and events from the shared store directly (so
streaming never goes through the handle).
"""

from __future__ import annotations

import logging
from typing import Any

from ray import serve

from deployments.agent.config import AgentRunnerConfig
from deployments.agent.service import AgentService, HandleChatLLM, build_agent_service

logger = logging.getLogger("ray.serve")


@serve.deployment(name="AgentRunner")
class AgentRunnerDeployment:
    """Runs agent tasks in the background of this replica; state lives in the shared store.

    Args:
        config (`dict`): an `AgentRunnerConfig` as a dict.
        llm_handle: DeploymentHandle of the LLM deployment (``chat`` method).
    """

    def __init__(self, config: dict[str, Any], llm_handle: Any):
        self.config = AgentRunnerConfig.model_validate(config)
        self.service: AgentService = build_agent_service(self.config, HandleChatLLM(llm_handle))

    async def submit(self, profile: str, input: str, wait: bool = False) -> dict[str, Any]:  # noqa: A002
        """Raises `UnknownProfileError` (re-raised by the handle) for an unknown profile."""
        return (await self.service.submit(profile=profile, input=input, wait=wait)).to_dict()

    async def cancel(self, run_id: str) -> dict[str, Any] | None:
        run = self.service.cancel(run_id)
        return run.to_dict() if run is not None else None

    async def get_run(self, run_id: str) -> dict[str, Any] | None:
        run = self.service.get_run(run_id)
        return run.to_dict() if run is not None else None

    async def trajectory(self, run_id: str) -> dict[str, Any] | None:
        run = self.service.get_run(run_id)
        if run is None:
            return None
        return {"run": run.to_dict(), "steps": [s.to_dict() for s in self.service.steps(run_id)]}

    async def check_health(self) -> None:
        self.service.store.count_runs()

    async def __del__(self) -> None:
        await self.service.shutdown()


def build_agent_deployment(config: dict[str, Any], llm_handle: Any, **serve_options: Any) -> Any:
    """Bind the ``AgentRunner`` deployment.

    Args:
        config (`dict`): `AgentRunnerConfig` fields.
        llm_handle: the bound LLM deployment (or its handle).
        **serve_options: ``num_replicas``, ``ray_actor_options``, ... passed to ``.options``.

    Returns:
        `serve.Application`.
    """
    AgentRunnerConfig.model_validate(config)  # fail before binding
    deployment = AgentRunnerDeployment.options(**serve_options) if serve_options else AgentRunnerDeployment
    return deployment.bind(config, llm_handle)
