"""deployments/common/observability.py without Ray: no-op metrics, prompt ids on log records."""

from __future__ import annotations

import asyncio
import logging

import pytest

from deployments.common import observability as obs


def test_metrics_are_no_ops_outside_ray():
    # In a fresh interpreter: the test session may have a Ray instance up already.
    import subprocess
    import sys
    from pathlib import Path

    code = """
import ray
from deployments.common import observability as obs
assert not ray.is_initialized()
c = obs.counter("genserve_test_total", "test", tag_keys=("result",))
c.inc(tags={"result": "hit"})
obs.histogram("genserve_test_ms", "test").observe(3.0)
obs.gauge("genserve_test_gauge", "test").set(1)
obs.observe_queue_wait("sampler", [0.0, 1.0], now=2.0)
assert c._metric is None  # nothing was created
assert obs.counter("genserve_test_total", "again") is c  # one object per name
assert not ray.is_initialized()
print("ok")
"""
    root = Path(__file__).resolve().parents[3]
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-2000:]


def test_prompt_id_of():
    assert obs.prompt_id_of("abc-123:3") == "abc-123"
    assert obs.prompt_id_of("abc") == "abc"
    assert obs.prompt_id_of("") == ""


def _record(**extra) -> logging.LogRecord:
    rec = logging.LogRecord("serve.runner", logging.INFO, __file__, 1, "msg", (), None)
    rec.__dict__.update(extra)
    return rec


def test_prompt_id_filter_uses_the_context_var_and_explicit_extra_wins():
    f = obs.PromptIdFilter()
    rec = _record()
    assert f.filter(rec) and not hasattr(rec, "prompt_id")
    token = obs.set_prompt_id("p1")
    try:
        rec = _record()
        f.filter(rec)
        assert rec.prompt_id == "p1"
        rec = _record(prompt_id="explicit")
        f.filter(rec)
        assert rec.prompt_id == "explicit"
    finally:
        obs.prompt_id_var.reset(token)


def test_prompt_id_follows_asyncio_tasks_and_threads():
    async def job(pid: str) -> list[str | None]:
        obs.set_prompt_id(pid)
        inner = await asyncio.create_task(asyncio.sleep(0, obs.prompt_id_var.get()))
        in_thread = await asyncio.to_thread(obs.prompt_id_var.get)
        return [inner, in_thread]

    async def main():
        return await asyncio.gather(job("a"), job("b"))

    assert asyncio.run(main()) == [["a", "a"], ["b", "b"]]
    assert obs.prompt_id_var.get() is None


@pytest.fixture
def serve_logger_handler():
    """A stand-in for the handler Serve installs on the 'ray.serve' logger in a replica."""
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record):
            records.append(record)

    serve_logger = logging.getLogger("ray.serve")
    saved = {name: (logging.getLogger(name).handlers[:], logging.getLogger(name).propagate, logging.getLogger(name).level)
             for name in ("ray.serve", *obs.PACKAGE_LOGGERS)}
    handler = Collect()
    serve_logger.handlers = [handler]
    yield records
    for name, (handlers, propagate, level) in saved.items():
        lg = logging.getLogger(name)
        lg.handlers, lg.propagate, lg.level = handlers, propagate, level


def test_install_serve_logging_routes_package_logs_with_prompt_id(serve_logger_handler):
    assert obs.install_serve_logging() is True
    assert obs.install_serve_logging() is True  # idempotent
    token = obs.set_prompt_id("p42")
    try:
        logging.getLogger("serve.runner").info("prompt started")
    finally:
        obs.prompt_id_var.reset(token)
    (rec,) = [r for r in serve_logger_handler if r.getMessage() == "prompt started"]
    assert rec.prompt_id == "p42" and rec.name == "serve.runner"


def test_install_serve_logging_without_serve_handlers_does_nothing(serve_logger_handler):
    logging.getLogger("ray.serve").handlers = []
    assert obs.install_serve_logging() is False


if __name__ == "__main__":
    import sys

    sys.exit(pytest.main([__file__, "-v"]))
