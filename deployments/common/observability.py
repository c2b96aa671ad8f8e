"""Metrics and log context shared by the stage wrappers and the ingress.

Two things live here:

1. **Lazy metrics.** :func:`counter`, :func:`histogram` and :func:`gauge` return a metric that
   is created on first use with ``ray.serve.metrics`` (so Serve adds the ``deployment``,
   ``replica`` and ``application`` tags) and is a no-op when this process is not a Ray worker
   or driver. Code that also runs without Ray (the job runner in unit tests, ``genserve run``,
   the artifact write path) can therefore record metrics unconditionally. Ray exports them on
   its Prometheus endpoint with a ``ray_`` prefix (``genserve_jobs_total`` ->
   ``ray_genserve_jobs_total``; histograms add ``_bucket``/``_sum``/``_count``).
2. **Prompt ids on log records.** :data:`prompt_id_var` holds the prompt a piece of work
   belongs to; :class:`PromptIdFilter` copies it onto every record as ``prompt_id``, which
   Serve's JSON log encoding writes as a field. :func:`install_serve_logging` attaches the
   filter to the replica's Serve log handlers and routes our package loggers (``serve.*``,
   ``graphs.*``, ``deployments.*``) into the same per-replica log file, so one prompt can be
   followed through every deployment's log with ``grep``/``jq``.

Import cost: nothing here imports Ray at module load (unit tests import this without Ray).
"""

from __future__ import annotations

import contextvars
import logging
import threading
from typing import Any, Iterable

logger = logging.getLogger(__name__)

#: The prompt (job) the current task works for; ``None`` outside a job.
prompt_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("genserve_prompt_id", default=None)

#: Our top-level packages; their loggers are routed into the Serve replica log files.
PACKAGE_LOGGERS = ("serve", "graphs", "deployments")

# Latency buckets (ms) shared by the latency histograms, 1 ms .. 10 min.
LATENCY_MS_BOUNDARIES = [1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 120000, 300000, 600000]


# -- metrics ---------------------------------------------------------------------------------
def _ray_ready() -> bool:
    try:
        import ray
    except ImportError:  # pragma: no cover - ray is a dependency, but keep the no-op path honest
        return False
    return ray.is_initialized()


class LazyMetric:
    """A ``ray.serve.metrics`` metric created on first use; a no-op outside Ray.

    Args:
        kind: ``"counter"``, ``"histogram"`` or ``"gauge"``.
        name: metric name (exported as ``ray_<name>``).
        description: help text.
        tag_keys: tag names (``deployment``/``replica``/``application`` are added by Serve).
        boundaries: histogram bucket boundaries.
    """

    def __init__(self, kind: str, name: str, description: str, tag_keys: tuple[str, ...] = (),
                 boundaries: list[float] | None = None):
        self.kind = kind
        self.name = name
        self.description = description
        self.tag_keys = tuple(tag_keys)
        self.boundaries = boundaries
        self._metric: Any = None
        self._lock = threading.Lock()

    def _get(self) -> Any:
        if self._metric is not None:
            return self._metric
        if not _ray_ready():
            return None
        with self._lock:
            if self._metric is None:
                try:
                    from ray.serve import metrics as m

                    if self.kind == "counter":
                        self._metric = m.Counter(self.name, description=self.description, tag_keys=self.tag_keys)
                    elif self.kind == "histogram":
                        self._metric = m.Histogram(self.name, description=self.description, tag_keys=self.tag_keys,
                                                   boundaries=self.boundaries or LATENCY_MS_BOUNDARIES)
                    elif self.kind == "gauge":
                        self._metric = m.Gauge(self.name, description=self.description, tag_keys=self.tag_keys)
                    else:
                        raise TypeError(f"unknown metric kind {self.kind!r}")
                except TypeError:
                    raise
                except Exception:  # metrics must never break serving
                    logger.warning("could not create metric %s", self.name, exc_info=True)
                    return None
        return self._metric

    def inc(self, value: float = 1.0, tags: dict[str, str] | None = None) -> None:
        metric = self._get()
        if metric is not None and value > 0:
            metric.inc(value, tags=tags)

    def observe(self, value: float, tags: dict[str, str] | None = None) -> None:
        metric = self._get()
        if metric is not None:
            metric.observe(value, tags=tags)

    def set(self, value: float, tags: dict[str, str] | None = None) -> None:
        metric = self._get()
        if metric is not None:
            metric.set(value, tags=tags)


_REGISTRY: dict[str, LazyMetric] = {}
_REGISTRY_LOCK = threading.Lock()


def _metric(kind: str, name: str, description: str, tag_keys: Iterable[str], boundaries: list[float] | None) -> LazyMetric:
    # NOTE: one object per name and process: Ray keeps one series set per metric name, and
    # creating it once avoids re-registering it from every replica method call.
    with _REGISTRY_LOCK:
        existing = _REGISTRY.get(name)
        if existing is None:
            existing = _REGISTRY[name] = LazyMetric(kind, name, description, tuple(tag_keys), boundaries)
        return existing


def counter(name: str, description: str, tag_keys: Iterable[str] = ()) -> LazyMetric:
    """A lazily created Serve counter (see :class:`LazyMetric`)."""
    return _metric("counter", name, description, tag_keys, None)


def histogram(name: str, description: str, tag_keys: Iterable[str] = (), boundaries: list[float] | None = None) -> LazyMetric:
    """A lazily created Serve histogram; ``boundaries`` default to :data:`LATENCY_MS_BOUNDARIES`."""
    return _metric("histogram", name, description, tag_keys, boundaries)


def gauge(name: str, description: str, tag_keys: Iterable[str] = ()) -> LazyMetric:
    """A lazily created Serve gauge (see :class:`LazyMetric`)."""
    return _metric("gauge", name, description, tag_keys, None)


#: Time a request waited in a stage replica before its batch started (arrival -> batch start).
STAGE_QUEUE_WAIT_MS = histogram(
    "genserve_stage_queue_wait_ms", "Time from a request's arrival in a stage replica to the start of its batch (ms)",
    tag_keys=("stage",), boundaries=[0.5, 1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000])


def observe_queue_wait(stage: str, arrivals: Iterable[float], now: float) -> None:
    """Record the queue wait of every request of a batch that starts at ``now`` (perf_counter s)."""
    for arrived in arrivals:
        STAGE_QUEUE_WAIT_MS.observe(max(0.0, (now - arrived) * 1000), tags={"stage": stage})


# -- logs -------------------------------------------------------------------------------------
class PromptIdFilter(logging.Filter):
    """Adds ``prompt_id`` (from :data:`prompt_id_var`) to every record; never drops one.

    An explicit ``extra={"prompt_id": ...}`` on the call wins.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "prompt_id", None) is None:
            pid = prompt_id_var.get()
            if pid is not None:
                record.prompt_id = pid
        return True


def prompt_id_of(request_id: str) -> str:
    """The prompt id part of a stage request id (``"<prompt_id>:<node_id>"``)."""
    return request_id.split(":", 1)[0] if request_id else ""


def set_prompt_id(prompt_id: str | None) -> contextvars.Token:
    """Set the current task's prompt id (asyncio tasks and ``to_thread`` calls inherit it)."""
    return prompt_id_var.set(prompt_id or None)


def bind_serve_request_id(request_id: str) -> None:
    """Make ``request_id`` the Serve request id of handle calls made from the current task.

    The job runner works outside any HTTP request, so without this every stage call would get
    a fresh random Serve request id. With it, the ``request_id`` field of the TextEncoder,
    Sampler and VAE log lines (and of Serve's own per-call access lines) is the prompt id.

    NOTE: uses Serve's private request context (``ray.serve.context``); if that API moves,
    this becomes a no-op and only the ``prompt_id`` field remains.
    """
    try:
        from ray.serve import context as serve_context

        current = serve_context._get_serve_request_context()
        serve_context._serve_request_context.set(
            serve_context._RequestContext(route=current.route, request_id=request_id, app_name=current.app_name))
    except Exception:  # pragma: no cover - private API drift
        logger.debug("could not bind the Serve request id", exc_info=True)


def install_serve_logging(packages: Iterable[str] = PACKAGE_LOGGERS) -> bool:
    """Attach :class:`PromptIdFilter` to this replica's Serve log handlers and route our
    package loggers into them (so ``serve.runner`` lines land in the replica's log file with
    deployment, replica and request ids, JSON-encoded when the deployment's
    ``logging_config.encoding`` is JSON).

    Call it from a replica's constructor; idempotent.

    Args:
        packages: top-level logger names to route (default: ``serve``, ``graphs``, ``deployments``).

    Returns:
        ``True`` when the Serve logger had handlers to attach to.
    """
    serve_logger = logging.getLogger("ray.serve")
    handlers = list(serve_logger.handlers)
    if not handlers:
        return False
    for handler in handlers:
        if not any(isinstance(f, PromptIdFilter) for f in handler.filters):
            handler.addFilter(PromptIdFilter())
    for name in packages:
        pkg_logger = logging.getLogger(name)
        pkg_logger.handlers = [h for h in pkg_logger.handlers if h not in handlers] + handlers
        pkg_logger.setLevel(min(serve_logger.level or logging.INFO, logging.INFO))
        pkg_logger.propagate = False
    return True
