"""Claims queued prompts from the shared store and runs them with the graph executor.

One runner lives in every ingress replica. It claims a job with a lease, heartbeats while
the job runs, watches the job's interrupt flag, writes every event to the store (so any
replica's websocket can forward it) and records the final state. A reaper re-queues jobs
whose runner stopped heartbeating (replica crash), or fails them after ``max_attempts``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from typing import Any

from deployments.common import observability as obs
from graphs.backends import Backends, CancelToken, InputImages, OutputSink
from graphs.errors import ExecutionInterrupted, NodeExecutionError
from graphs.executor import ExecutionContext, Executor
from graphs.workflow import parse_workflow
from serve.stores.jobs import FAILED, INTERRUPTED, SUCCEEDED, Job, JobStore

logger = logging.getLogger(__name__)

# ComfyUI keeps these in history.status.messages
_HISTORY_MESSAGES = ("execution_start", "execution_cached", "execution_success", "execution_error", "execution_interrupted")

# Metrics (no-ops outside Ray; exported as ray_<name> on Ray's Prometheus endpoint).
# ``status`` is the job's final state (success / error / interrupted), or ``requeued`` when a
# job's runner stopped heartbeating and the job was put back in the queue.
_M_JOBS = obs.counter("genserve_jobs_total", "Finished prompts by outcome", tag_keys=("status",))
_M_JOB_LATENCY = obs.histogram("genserve_job_latency_ms", "Run time of a prompt from claim to finish (ms)", tag_keys=("status",))
_M_JOB_QUEUE = obs.histogram("genserve_job_queue_wait_ms", "Time a prompt waited in the job queue before a runner claimed it (ms)")
_M_NODE_CACHE = obs.counter("genserve_node_cache_total", "Workflow node outputs reused from the cache (hit) or computed (miss)",
                            tag_keys=("result",))
_M_ACTIVE = obs.gauge("genserve_jobs_running", "Prompts this runner is executing now")


class JobRunner:
    def __init__(
        self,
        *,
        store: JobStore,
        executor: Executor,
        backends: Backends,
        sink: OutputSink,
        inputs: InputImages,
        max_concurrent: int = 4,
        lease_s: float = 30.0,
        max_attempts: int = 2,
        poll_s: float = 0.1,
        owner: str | None = None,
    ):
        self.store = store
        self.executor = executor
        self.backends = backends
        self.sink = sink
        self.inputs = inputs
        self.max_concurrent = max_concurrent
        self.lease_s = lease_s
        self.max_attempts = max_attempts
        self.poll_s = poll_s
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._active: dict[str, tuple[asyncio.Task, CancelToken]] = {}
        self._wakeup = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._stopping = False

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._claim_loop(), name="runner-claim"),
            loop.create_task(self._heartbeat_loop(), name="runner-heartbeat"),
        ]
        logger.info("job runner %s started (max_concurrent=%d, lease=%.0fs)", self.owner, self.max_concurrent, self.lease_s)

    async def stop(self) -> None:
        self._stopping = True
        for t in self._tasks:
            t.cancel()
        for task, token in list(self._active.values()):
            token.cancel("shutdown")
        await asyncio.gather(*self._tasks, *(t for t, _ in self._active.values()), return_exceptions=True)

    def wake(self) -> None:
        """Called by the ingress after it queued a job, to claim it without waiting for a poll."""
        self._wakeup.set()

    @property
    def active(self) -> list[str]:
        return list(self._active)

    # -- loops ----------------------------------------------------------------------------
    async def _claim_loop(self) -> None:
        while not self._stopping:
            try:
                claimed = False
                if len(self._active) < self.max_concurrent:
                    job = await asyncio.to_thread(self.store.claim_next, owner=self.owner, lease_s=self.lease_s)
                    if job is not None:
                        claimed = True
                        token = CancelToken()
                        task = asyncio.create_task(self._run(job, token), name=f"job-{job.prompt_id}")
                        self._active[job.prompt_id] = (task, token)
                        task.add_done_callback(lambda _t, pid=job.prompt_id: self._active.pop(pid, None))
                if not claimed:
                    self._wakeup.clear()
                    try:
                        await asyncio.wait_for(self._wakeup.wait(), timeout=self.poll_s)
                    except asyncio.TimeoutError:
                        pass
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("runner claim loop error; retrying")
                await asyncio.sleep(1.0)

    async def _heartbeat_loop(self) -> None:
        beat = max(0.2, min(self.lease_s / 3, 5.0))
        last_reap = 0.0
        while not self._stopping:
            try:
                ids = list(self._active)
                await asyncio.to_thread(self.store.heartbeat, prompt_ids=ids, owner=self.owner, lease_s=self.lease_s)
                flagged = await asyncio.to_thread(self.store.interrupt_flags, ids)
                for pid in flagged:
                    entry = self._active.get(pid)
                    if entry and not entry[1].cancelled:
                        logger.info("interrupting prompt %s", pid)
                        entry[1].cancel("interrupted")
                if time.monotonic() - last_reap > beat:
                    last_reap = time.monotonic()
                    for pid, status in await asyncio.to_thread(self.store.reap_expired, max_attempts=self.max_attempts):
                        logger.warning("prompt %s lost its runner; now %s", pid, status, extra={"prompt_id": pid})
                        _M_JOBS.inc(tags={"status": "requeued" if status == "queued" else status})
                        if status == "queued":
                            self._wakeup.set()
                        else:
                            await asyncio.to_thread(self.store.add_event, type="execution_error", prompt_id=pid, data={
                                "prompt_id": pid, "node_id": None, "node_type": None, "executed": [],
                                "exception_message": "the runner executing this prompt stopped responding",
                                "exception_type": "RunnerLost", "traceback": [], "current_inputs": {}, "current_outputs": {}})
                            await self._broadcast_status()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("runner heartbeat error")
            await asyncio.sleep(min(beat, 0.25) if self._active else beat)

    async def _broadcast_status(self) -> None:
        remaining = await asyncio.to_thread(self.store.count_queued)
        await asyncio.to_thread(self.store.add_event, type="status", data={"status": {"exec_info": {"queue_remaining": remaining}}})

    # -- one job --------------------------------------------------------------------------
    async def _run(self, job: Job, token: CancelToken) -> None:
        # NOTE: this task (and the tasks/threads it starts) logs with this prompt id, and its
        # stage calls carry it as their Serve request id, so the prompt can be followed
        # through every replica's JSON log.
        obs.set_prompt_id(job.prompt_id)
        obs.bind_serve_request_id(job.prompt_id)
        claimed = time.perf_counter()
        queued_ms = max(0.0, (time.time() - job.created_at) * 1000) if job.created_at else 0.0
        _M_JOB_QUEUE.observe(queued_ms)
        _M_ACTIVE.set(len(self._active))
        logger.info("prompt %s started (attempt %d, queued %.0f ms)", job.prompt_id, job.attempts, queued_ms)
        messages: list[list[Any]] = []

        async def emit(event: str, data: dict[str, Any]) -> None:
            if event in _HISTORY_MESSAGES:
                messages.append([event, data])
            await asyncio.to_thread(self.store.add_event, type=event, data=data, prompt_id=job.prompt_id, client_id=job.client_id)

        wf = parse_workflow(job.prompt)
        ctx = ExecutionContext(
            prompt_id=job.prompt_id, workflow=wf, backends=self.backends, sink=self.sink, inputs=self.inputs,
            emit=emit, cancel=token, extra={"client_id": job.client_id, "extra_data": job.extra_data,
                                            "submitted_by": job.submitted_by, "workflow_hash": job.workflow_hash,
                                            "workflow_ref": (job.extra_data or {}).get("workflow_ref")},
        )
        await self._broadcast_status()
        status, outputs, error = FAILED, {}, None
        try:
            result = await self.executor.execute(wf, job.output_ids, ctx)
            status, outputs = SUCCEEDED, result.outputs
            _M_NODE_CACHE.inc(len(result.cached), tags={"result": "hit"})
            _M_NODE_CACHE.inc(len(result.executed), tags={"result": "miss"})
        except ExecutionInterrupted as exc:
            status = INTERRUPTED
            error = {"type": "interrupted", "message": token.reason or "interrupted", "node_id": exc.node_id}
        except NodeExecutionError as exc:
            error = {"type": "execution_error", "node_id": exc.node_id, "node_type": exc.class_type,
                     "exception_type": exc.exception_type, "message": exc.message}
        except asyncio.CancelledError:
            # Replica shutting down: leave the job running; its lease will expire and another runner retries it.
            logger.warning("prompt %s abandoned on shutdown; it will be retried after its lease expires", job.prompt_id)
            raise
        except Exception as exc:  # a bug in the engine itself: record it, never lose the job silently
            logger.exception("prompt %s failed outside any node", job.prompt_id)
            error = {"type": "internal_error", "exception_type": type(exc).__name__, "message": str(exc)}
            await emit("execution_error", {"node_id": None, "node_type": None, "executed": [], "exception_message": str(exc),
                                           "exception_type": type(exc).__name__, "traceback": [], "current_inputs": {},
                                           "current_outputs": {}})
        if status != SUCCEEDED:
            # ComfyUI clients wait for `executing` with node None after errors/interrupts too.
            await emit("executing", {"node": None, "display_node": None, "prompt_id": job.prompt_id})
        recorded = await asyncio.to_thread(
            self.store.finish, prompt_id=job.prompt_id, owner=self.owner, status=status, outputs=outputs, error=error,
            messages=messages,
        )
        elapsed_ms = (time.perf_counter() - claimed) * 1000
        if not recorded:
            logger.warning("prompt %s: lease lost before finishing; result discarded (another runner owns it)", job.prompt_id)
        else:
            _M_JOBS.inc(tags={"status": status})
            _M_JOB_LATENCY.observe(elapsed_ms, tags={"status": status})
            logger.info("prompt %s finished: %s in %.0f ms", job.prompt_id, status, elapsed_ms)
        _M_ACTIVE.set(max(0, len(self._active) - 1))
        await self._broadcast_status()
