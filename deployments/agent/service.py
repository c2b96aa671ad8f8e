"""`AgentService`: owns the agent store, the runner and the background runs of one process.

Routes talk only to this class. Reads (runs, steps, the event stream) go to the shared store,
so any replica can serve them; a run itself lives as an asyncio task in the process that
accepted it. Cancellation sets the local token when the run is here and always sets the
store's cancel flag, which a runner on another replica notices within ``cancel_poll_s``.

Construct directly (tests) or with `build_agent_service` (from an `AgentRunnerConfig`)::

    service = AgentService(store, runner)
    run = await service.submit(profile="default", input="What is 2+2?", wait=True)
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, AsyncIterator, Mapping

from deployments.agent.constants import ACTIVE_STATUSES
from deployments.agent.profiles import AgentProfile, get_profile
from deployments.agent.runner import AgentRunner, CancelToken

logger = logging.getLogger(__name__)


class RunNotActiveError(RuntimeError):
    """The run already has a final status (e.g. cancelling a finished run)."""


class AgentService:
    """Submits runs, tracks their tasks and cancel tokens, and streams their steps.

    Args:
        store: an `serve.stores.agents.AgentStore` (or anything with the same methods).
        runner (`AgentRunner`): runs submitted tasks; its ``on_step`` is used to wake event streams.
        poll_interval_s (`float`, *optional*, defaults to 0.25): how often streams re-read the store
            when nothing local woke them (runs on other replicas).
        orphan_grace_s (`float`, *optional*, defaults to 30): a running run this long past its
            deadline is ended as ``error`` (its runner is gone).
    """

    def __init__(self, store: Any, runner: AgentRunner, *, poll_interval_s: float = 0.25, orphan_grace_s: float = 30.0):
        self.store = store
        self.runner = runner
        self.poll_interval_s = poll_interval_s
        self.orphan_grace_s = orphan_grace_s
        self._tasks: dict[str, asyncio.Task] = {}
        self._tokens: dict[str, CancelToken] = {}
        self._tick: asyncio.Event | None = None
        if runner.on_step is None:
            runner.on_step = lambda _run_id, _index: self._notify()
        self.store.fail_orphaned_runs(grace_s=orphan_grace_s)

    @property
    def profiles(self) -> Mapping[str, AgentProfile]:
        return self.runner.profiles

    def _notify(self) -> None:
        if self._tick is not None:
            self._tick.set()
            self._tick = None

    async def _changed(self, timeout: float) -> None:
        if self._tick is None:
            self._tick = asyncio.Event()
        try:
            await asyncio.wait_for(self._tick.wait(), timeout)
        except asyncio.TimeoutError:
            pass

    # -- writes --------------------------------------------------------------------------------
    async def submit(self, *, profile: str, input: str, wait: bool = False) -> Any:  # noqa: A002
        """Record a queued run and start it in the background; with ``wait``, return when it ends.

        Raises:
            UnknownProfileError: no such profile (nothing is recorded).
        """
        prof = get_profile(self.profiles, profile)
        run = self.store.create_run(profile=prof.name, input=input, model=prof.model)
        token = CancelToken()
        task = asyncio.create_task(self.runner.run(run.id, prof, input, token), name=f"agent-run-{run.id}")
        self._tasks[run.id], self._tokens[run.id] = task, token
        task.add_done_callback(lambda t, rid=run.id: self._done(rid, t))
        if wait:
            # NOTE: shielded: a client that disconnects while waiting must not cancel the run.
            await asyncio.shield(task)
        return self.store.get_run(run.id)

    def _done(self, run_id: str, task: asyncio.Task) -> None:
        self._tasks.pop(run_id, None)
        self._tokens.pop(run_id, None)
        self._notify()
        if not task.cancelled() and task.exception() is not None:
            logger.error("agent run %s task failed", run_id, exc_info=task.exception())

    def cancel(self, run_id: str) -> Any:
        """Request cancellation; returns the run (``None`` when unknown).

        Raises:
            RunNotActiveError: the run already ended.
        """
        run = self.store.get_run(run_id)
        if run is None:
            return None
        if run.status not in ACTIVE_STATUSES:
            raise RunNotActiveError(f"run {run_id} already ended with status {run.status!r}")
        self.store.request_cancel(run_id=run_id)
        token = self._tokens.get(run_id)
        if token is not None:
            token.cancel("cancelled by request")
        return self.store.get_run(run_id)

    async def wait(self, run_id: str, timeout_s: float | None = None) -> Any:
        """The run once it has a final status (or as it is after ``timeout_s``)."""
        task = self._tasks.get(run_id)
        if task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout_s)
            except asyncio.TimeoutError:
                pass
            return self.get_run(run_id)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            run = self.get_run(run_id)
            if run is None or run.status not in ACTIVE_STATUSES:
                return run
            if deadline is not None and time.monotonic() >= deadline:
                return run
            await self._changed(self.poll_interval_s)

    async def shutdown(self) -> None:
        """Cancel the runs of this process (each is recorded as ``cancelled``) and wait for them."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    # -- reads ---------------------------------------------------------------------------------
    def get_run(self, run_id: str) -> Any:
        run = self.store.get_run(run_id)
        if (run is not None and run.status == "running" and run_id not in self._tasks and run.deadline_at
                and run.deadline_at < time.time() - self.orphan_grace_s):
            self.store.fail_orphaned_runs(grace_s=self.orphan_grace_s)
            run = self.store.get_run(run_id)
        return run

    def steps(self, run_id: str, *, after_index: int = -1) -> list[Any]:
        return self.store.steps(run_id, after_index=after_index)

    def list_runs(self, *, limit: int = 50, offset: int = 0, status: str | None = None) -> list[Any]:
        return self.store.list_runs(limit=limit, offset=offset, status=status)

    async def events(self, run_id: str, *, after_index: int = -1,
                     heartbeat_s: float = 15.0) -> AsyncIterator[tuple[str, Any]]:
        """Yield ``("step", step)`` for each new step, ``("ping", None)`` when idle, then ``("end", run)``."""
        last_sent = time.monotonic()
        while True:
            run = self.get_run(run_id)
            if run is None:
                return
            for step in self.steps(run_id, after_index=after_index):
                after_index = step.index
                last_sent = time.monotonic()
                yield "step", step
            if run.status not in ACTIVE_STATUSES:
                # NOTE: re-read steps after seeing the final status: a step committed between the
                # two reads above would otherwise be lost.
                for step in self.steps(run_id, after_index=after_index):
                    after_index = step.index
                    yield "step", step
                yield "end", run
                return
            if time.monotonic() - last_sent >= heartbeat_s:
                last_sent = time.monotonic()
                yield "ping", None
            await self._changed(self.poll_interval_s)


class RemoteAgentService(AgentService):
    """`AgentService` for an ingress: submissions go to the ``AgentRunner`` deployment, the rest to the store.

    Cancelling sets the store's cancel flag (the inherited `AgentService.cancel`), which the
    runner polls while a step is in flight.

    Args:
        store: the shared `serve.stores.agents.AgentStore`.
        runner_handle: DeploymentHandle of ``AgentRunner``.
        profiles: the profiles (to validate requests and list them), e.g. from `load_profiles`.
    """

    def __init__(self, store: Any, runner_handle: Any, profiles: Any, *, poll_interval_s: float = 0.25):
        self.store = store
        self.handle = runner_handle
        self._profiles = profiles
        self.poll_interval_s = poll_interval_s
        self.orphan_grace_s = 30.0
        self._tasks, self._tokens, self._tick = {}, {}, None

    @property
    def profiles(self) -> Any:
        return self._profiles

    async def submit(self, *, profile: str, input: str, wait: bool = False) -> Any:  # noqa: A002
        get_profile(self._profiles, profile)
        run = await self.handle.submit.remote(profile, input, wait)
        return self.store.get_run(run["id"])


class HandleChatLLM:
    """The ``async chat(...)`` interface over the LLM deployment's handle (method ``chat``)."""

    def __init__(self, handle: Any):
        self.handle = handle

    async def chat(self, messages: list[dict[str, str]], *, max_tokens: int, temperature: float, seed: int | None,
                   json_schema: dict[str, Any] | None = None, stop: list[str] | None = None) -> Any:
        return await self.handle.chat.remote(messages, max_tokens=max_tokens, temperature=temperature, seed=seed,
                                             json_schema=json_schema, stop=stop)


def build_agent_service(config: Any, llm: Any, *, image_client: Any = None, store: Any = None) -> AgentService:
    """Wire an `AgentService` from an `AgentRunnerConfig`.

    Args:
        config (`AgentRunnerConfig`): store URL, profile folder, price table, image service, tracing.
        llm: the chat engine (``async chat(...)``), local or a DeploymentHandle adapter.
        image_client (`ImageEngineClient`, *optional*): defaults to `HttpImageEngineClient` at
            ``config.image_service_url``.
        store (*optional*): defaults to `serve.stores.agents.AgentStore` at ``config.database_url``.

    Raises:
        ProfileError: a profile names an unknown tool.
    """
    from deployments.agent.image_client import HttpImageEngineClient
    from deployments.agent.policy import LLMPolicy
    from deployments.agent.pricing import load_price_table
    from deployments.agent.profiles import load_profiles
    from deployments.agent.tools import default_registry
    from deployments.agent.tracing import build_tracer

    if store is None:
        # NOTE: imported here: the store lives in the serving layer, which the core does not import.
        from serve.stores.agents import AgentStore

        store = AgentStore(config.database_url)
    if image_client is None:
        image_client = HttpImageEngineClient(config.image_service_url)
    registry = default_registry(image_client)
    profiles = load_profiles(config.profiles_dir, registry)

    def policy_factory(profile: AgentProfile) -> LLMPolicy:
        return LLMPolicy(llm, profile.model, config.json_schema_mode, max_tokens=profile.max_tokens_per_step,
                         temperature=profile.temperature, seed=profile.seed)

    runner = AgentRunner(registry, policy_factory, store, profiles, load_price_table(config.price_table),
                         build_tracer(config.tracing_exporter), cancel_poll_s=config.cancel_poll_s)
    return AgentService(store, runner)
