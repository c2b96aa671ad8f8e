"""Per-replica runtime set-up shared by the stage wrappers."""

from __future__ import annotations

import copy
import logging
import math
import os
from typing import Any

logger = logging.getLogger(__name__)


def configure_torch_threads(threads: int | None, num_cpus: float | None = None) -> int:
    """Give torch as many threads as the replica was given CPUs, so replicas don't oversubscribe.

    Args:
        threads: explicit thread count (``user_config.torch_threads``); wins when set.
        num_cpus: the replica's ``num_cpus``; ``ceil`` of it is used otherwise.

    Returns:
        The thread count now in force.
    """
    import torch

    n = threads or max(1, math.ceil(num_cpus or 1))
    n = max(1, min(n, os.cpu_count() or n))
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def merge_options(defaults: dict[str, Any], overrides: dict[str, Any] | None) -> dict[str, Any]:
    """Stage defaults overlaid with the user's options (``None`` values ignored, dicts merged one level)."""
    out = copy.deepcopy(defaults)
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    if out.get("num_replicas") is not None and out.get("autoscaling_config"):
        # An explicit replica count switches autoscaling off (Serve refuses both).
        out.pop("autoscaling_config")
    return out


def replica_num_cpus(options: dict[str, Any]) -> float:
    return float((options.get("ray_actor_options") or {}).get("num_cpus", 1))


def resolve_device(requested: str | None = None) -> str:
    """``auto``/``None`` -> ``cuda`` when this replica was given a GPU (Ray sets CUDA_VISIBLE_DEVICES), else ``cpu``."""
    if requested and requested != "auto":
        return requested
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
