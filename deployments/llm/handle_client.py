"""A chat backend over a Serve DeploymentHandle to the LLM deployment.

It has the same ``model_id`` / ``chat`` / ``stream_chat`` surface as
:class:`~deployments.llm.model.LLMModel`, so the OpenAI routes
(:mod:`deployments.llm.openai_routes`) and the agent runner work the same in-process and
over Serve::

    client = await LLMHandleClient.from_handle(serve.get_deployment_handle("LLM", app_name="genserve"))
    result = await client.chat([{"role": "user", "content": "Hi"}], max_tokens=32)
    async for delta in client.stream_chat(messages):
        ...
"""

from __future__ import annotations

from typing import Any, AsyncIterator

from deployments.llm.engines import ChatResult, TextDelta


class LLMHandleClient:
    """Calls :class:`~deployments.llm.deployment.LLMDeployment` through a DeploymentHandle.

    Construct with the handle and the model id (:meth:`from_handle` asks the deployment).

    Args:
        handle: A ``DeploymentHandle`` to the LLM deployment.
        model_id (`str`): The id the deployment serves (``GET /v1/models``).
    """

    def __init__(self, handle: Any, model_id: str) -> None:
        self.handle = handle
        self.model_id = model_id

    @classmethod
    async def from_handle(cls, handle: Any) -> "LLMHandleClient":
        """Builds a client, asking the deployment for its model id."""
        info = await handle.model_info.remote()
        return cls(handle, info["id"])

    async def chat(self, messages: list[dict[str, Any]], **params: Any) -> ChatResult:
        """One answer (see :meth:`deployments.llm.model.LLMModel.chat`)."""
        return await self.handle.chat.remote(messages, **params)

    async def stream_chat(self, messages: list[dict[str, Any]], **params: Any) -> AsyncIterator[TextDelta]:
        """Streams one answer; the last delta carries the result."""
        async for delta in self.handle.options(stream=True).stream_chat.remote(messages, **params):
            yield delta
