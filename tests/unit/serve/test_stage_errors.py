"""Stage errors reach users as the stage's own exception, not Ray's wrapper with a remote traceback."""

from __future__ import annotations

import pytest
from ray.exceptions import ActorDiedError, RayTaskError

from serve.backends import _call_with_retry


def _wrapped(exc: Exception) -> Exception:
    # What a DeploymentHandle raises when the replica's method raised ``exc``.
    return RayTaskError("TextEncoder.encode", "Traceback (most recent call last): ...", exc).as_instanceof_cause()


async def test_a_stage_error_is_unwrapped_from_rays_task_error():
    async def call():
        raise _wrapped(ValueError("prompt emphasis weight must be a finite number"))

    with pytest.raises(ValueError) as info:
        await _call_with_retry(call, "text encode")
    assert type(info.value) is ValueError and str(info.value) == "prompt emphasis weight must be a finite number"
    assert type(info.value.__cause__).__name__ == "RayTaskError(ValueError)"  # the remote traceback, for the logs


async def test_a_lost_replica_is_retried_once_then_the_call_succeeds():
    calls = []

    async def call():
        calls.append(1)
        if len(calls) == 1:
            raise ActorDiedError()
        return "ok"

    assert await _call_with_retry(call, "sampling") == "ok" and len(calls) == 2


async def test_other_errors_are_raised_as_they_are():
    async def call():
        raise RuntimeError("plain")

    with pytest.raises(RuntimeError, match="^plain$"):
        await _call_with_retry(call, "VAE decode")
