"""Waiting for a genserve app to answer its health route (CLI, benchmarks, tests)."""

from __future__ import annotations

import time

import httpx


def wait_healthy(url: str, timeout_s: float = 300, interval_s: float = 0.5) -> bool:
    """Poll ``{url}/v1/health`` until it answers 200; ``False`` when ``timeout_s`` passes first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/v1/health", timeout=5).status_code == 200:
                return True
        except httpx.HTTPError:
            pass  # not up yet
        time.sleep(interval_s)
    return False
