"""Run a validated workflow: dependency order, concurrent branches, output caching, events.

Caching (ComfyUI semantics): each node gets a key = hash of its class, its literal inputs,
its ``cache_salt`` and the keys of everything upstream. A seed-only change therefore keeps
the keys of the loaders, text encodings and control images; an identical resubmission hits
every key and executes nothing. Cached outputs are reused from an in-memory LRU.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from graphs.backends import Backends, CancelToken, InputImages, OutputSink
from graphs.errors import ExecutionInterrupted, NodeExecutionError
from graphs.registry import NodeRegistry
from graphs.spec import NodeResult
from graphs.workflow import NodeInstance, Workflow, is_link

logger = logging.getLogger(__name__)

EmitFn = Callable[[str, dict[str, Any]], Awaitable[None]]


class OutputCache:
    """LRU of node outputs keyed by node cache key. One per runner process."""

    def __init__(self, max_entries: int = 256):
        self.max_entries = max_entries
        self._data: OrderedDict[str, tuple[tuple[Any, ...], dict[str, Any]]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        item = self._data.get(key)
        if item is not None:
            self._data.move_to_end(key)
        return item

    def put(self, key: str, values: tuple[Any, ...], ui: dict[str, Any]) -> None:
        self._data[key] = (values, ui)
        self._data.move_to_end(key)
        while len(self._data) > self.max_entries:
            self._data.popitem(last=False)

    def __contains__(self, key: str) -> bool:
        return key in self._data

    def clear(self) -> None:
        self._data.clear()


@dataclass
class ExecutionContext:
    """What nodes may touch while running. Built by the runner for each prompt."""

    prompt_id: str
    workflow: Workflow
    backends: Backends
    sink: OutputSink | None = None
    inputs: InputImages | None = None
    emit: EmitFn | None = None
    cancel: CancelToken = field(default_factory=CancelToken)
    extra: dict[str, Any] = field(default_factory=dict)
    node_id: str | None = None

    def for_node(self, node_id: str) -> "ExecutionContext":
        view = ExecutionContext(**{**self.__dict__, "node_id": node_id})
        return view

    async def send(self, event: str, data: dict[str, Any]) -> None:
        if self.emit is not None:
            await self.emit(event, {**data, "prompt_id": self.prompt_id})

    async def progress(self, value: int, maximum: int) -> None:
        await self.send("progress", {"value": value, "max": maximum, "node": self.node_id})

    def upstream(self, node_id: str | None = None) -> list[NodeInstance]:
        """Every node that ``node_id`` (default: the current node) depends on, nearest first."""
        start = node_id or self.node_id
        seen: list[str] = []
        stack = [start]
        while stack:
            nid = stack.pop(0)
            node = self.workflow.nodes.get(nid)
            if node is None:
                continue
            for link in node.links().values():
                if link.node_id not in seen:
                    seen.append(link.node_id)
                    stack.append(link.node_id)
        return [self.workflow.nodes[n] for n in seen if n in self.workflow.nodes]


@dataclass
class ExecutionResult:
    outputs: dict[str, dict[str, Any]]
    executed: list[str]
    cached: list[str]
    duration_s: float


def _now_ms() -> int:
    return int(time.time() * 1000)


class Executor:
    """Executes workflows against a registry; backends come in through the context.

    Args:
        registry: node registry.
        cache: output cache shared across runs (``None`` disables caching).
    """

    def __init__(self, registry: NodeRegistry, cache: OutputCache | None = None):
        self.registry = registry
        self.cache = cache

    # -- keys -----------------------------------------------------------------------------
    def node_keys(self, wf: Workflow, needed: list[str], ctx: ExecutionContext) -> dict[str, str]:
        keys: dict[str, str] = {}

        def key(nid: str) -> str:
            if nid in keys:
                return keys[nid]
            node = wf.nodes[nid]
            cls = self.registry.get(node.class_type)
            parts: dict[str, Any] = {"class": node.class_type, "inputs": {}}
            literals: dict[str, Any] = {}
            for name, value in sorted(node.inputs.items()):
                if is_link(value):
                    parts["inputs"][name] = ["link", key(str(value[0])), value[1]]
                else:
                    parts["inputs"][name] = ["value", value]
                    literals[name] = value
            salt = cls().cache_salt(ctx, literals)
            if salt is not None:
                parts["salt"] = salt
            digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()
            keys[nid] = digest
            return digest

        for nid in needed:
            key(nid)
        return keys

    @staticmethod
    def needed_nodes(wf: Workflow, outputs: list[str]) -> list[str]:
        """Outputs and everything upstream of them, in a dependency-respecting order."""
        order: list[str] = []
        seen: set[str] = set()

        def visit(nid: str) -> None:
            if nid in seen:
                return
            seen.add(nid)
            for link in wf.nodes[nid].links().values():
                visit(link.node_id)
            order.append(nid)

        for out in outputs:
            visit(out)
        return order

    # -- run --------------------------------------------------------------------------------
    async def execute(self, wf: Workflow, output_ids: list[str], ctx: ExecutionContext) -> ExecutionResult:
        """Run the nodes needed for ``output_ids`` (already validated).

        Emits ComfyUI events through ``ctx.emit``: ``execution_start``, ``execution_cached``,
        ``executing``, ``progress``, ``executed``, then ``execution_success`` and a final
        ``executing`` with ``node: None``; or ``execution_error`` / ``execution_interrupted``.

        Raises:
            NodeExecutionError: a node failed (after ``execution_error`` was emitted).
            ExecutionInterrupted: the cancel token was set (after ``execution_interrupted``).
        """
        started = time.perf_counter()
        needed = self.needed_nodes(wf, output_ids)
        keys = self.node_keys(wf, needed, ctx)
        await ctx.send("execution_start", {"timestamp": _now_ms()})

        # 1. Which nodes can be served from the cache. A cached node's upstream nodes need
        #    not run at all unless some non-cached node needs them.
        cached_now = {nid for nid in needed if self.cache is not None and keys[nid] in self.cache}
        to_run: list[str] = []
        required: set[str] = set()

        def require(nid: str) -> None:
            if nid in required:
                return
            required.add(nid)
            if nid in cached_now:
                return
            for link in wf.nodes[nid].links().values():
                require(link.node_id)

        for out in output_ids:
            require(out)
        cached_list = [n for n in needed if n in required and n in cached_now]
        to_run = [n for n in needed if n in required and n not in cached_now]
        # Like ComfyUI, report every cached node of the prompt, even ones whose value is not needed.
        await ctx.send("execution_cached", {"nodes": [n for n in needed if n in cached_now], "timestamp": _now_ms()})

        values: dict[str, tuple[Any, ...]] = {}
        outputs: dict[str, dict[str, Any]] = {}
        for nid in cached_list:
            vals, ui = self.cache.get(keys[nid])  # type: ignore[union-attr]
            values[nid] = vals
            if ui:
                outputs[nid] = ui
                await ctx.send("executed", {"node": nid, "display_node": nid, "output": ui})

        executed: list[str] = []
        futures: dict[str, asyncio.Future] = {nid: asyncio.get_running_loop().create_future() for nid in to_run}

        async def run_node(nid: str) -> None:
            node = wf.nodes[nid]
            # wait for dependencies
            for link in node.links().values():
                if link.node_id in futures:
                    await futures[link.node_id]
            if ctx.cancel.cancelled:
                raise ExecutionInterrupted(nid, node.class_type)
            spec = self.registry.spec(node.class_type)
            kwargs: dict[str, Any] = {}
            for name, value in node.inputs.items():
                inp = spec.input(name)
                if inp is None:
                    continue
                if is_link(value):
                    kwargs[name] = values[str(value[0])][value[1]]
                elif inp.type == "INT":
                    kwargs[name] = int(value)
                elif inp.type == "FLOAT":
                    kwargs[name] = float(value)
                else:
                    kwargs[name] = value
            for name, inp in spec.optional.items():
                kwargs.setdefault(name, None if inp.is_link else inp.default)
            await ctx.send("executing", {"node": nid, "display_node": nid})
            node_ctx = ctx.for_node(nid)
            try:
                result = await self.registry.get(node.class_type)().run(node_ctx, **kwargs)
            except (ExecutionInterrupted, asyncio.CancelledError):
                raise ExecutionInterrupted(nid, node.class_type)
            except Exception as exc:
                if ctx.cancel.cancelled:
                    raise ExecutionInterrupted(nid, node.class_type) from exc
                logger.exception("node %s (%s) failed in prompt %s", nid, node.class_type, ctx.prompt_id)
                raise NodeExecutionError(nid, node.class_type, type(exc).__name__, str(exc)) from exc
            if isinstance(result, NodeResult):
                vals, ui = tuple(result.values), dict(result.ui)
            else:
                vals, ui = tuple(result), {}
            values[nid] = vals
            executed.append(nid)
            if self.cache is not None:
                self.cache.put(keys[nid], vals, ui)
            if ui:
                outputs[nid] = ui
                await ctx.send("executed", {"node": nid, "display_node": nid, "output": ui})

        async def guarded(nid: str) -> None:
            try:
                await run_node(nid)
            except BaseException as exc:
                if not futures[nid].done():
                    futures[nid].set_exception(exc)
                raise
            else:
                futures[nid].set_result(None)

        tasks = [asyncio.create_task(guarded(nid), name=f"node-{nid}") for nid in to_run]
        # Surface the first failure; cancel the rest.
        failure: BaseException | None = None
        try:
            if tasks:
                done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
                for t in done:
                    if t.exception() is not None:
                        failure = t.exception()
                        break
                if failure is not None:
                    for t in pending:
                        t.cancel()
                    await asyncio.gather(*pending, return_exceptions=True)
        except asyncio.CancelledError:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            failure = ExecutionInterrupted(None, None)
        for fut in list(futures.values()) + tasks:  # silence "exception never retrieved"
            if fut.done() and not fut.cancelled():
                fut.exception()

        if isinstance(failure, ExecutionInterrupted) or (failure is not None and ctx.cancel.cancelled):
            node_id = getattr(failure, "node_id", None)
            await ctx.send("execution_interrupted", {
                "node_id": node_id,
                "node_type": wf.nodes[node_id].class_type if node_id in wf.nodes else None,
                "executed": list(executed),
                "timestamp": _now_ms(),
            })
            raise failure if isinstance(failure, ExecutionInterrupted) else ExecutionInterrupted(node_id)
        if isinstance(failure, NodeExecutionError):
            await ctx.send("execution_error", {
                "node_id": failure.node_id,
                "node_type": failure.class_type,
                "executed": list(executed),
                "exception_message": failure.message,
                "exception_type": failure.exception_type,
                "traceback": [],
                "current_inputs": {},
                "current_outputs": {},
                "timestamp": _now_ms(),
            })
            raise failure
        if failure is not None:
            raise failure
        await ctx.send("execution_success", {"timestamp": _now_ms()})
        await ctx.send("executing", {"node": None, "display_node": None})
        return ExecutionResult(outputs, executed, cached_list, time.perf_counter() - started)
