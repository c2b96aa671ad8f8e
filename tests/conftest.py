"""Shared pytest fixtures.

Each block below belongs to one part of the project; keep blocks self-contained.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# ======================================================================================
# Demo model bundle (deployments/checkpoints)
#
# The demo bundle (seeded random SD1.5-architecture weights, ~250 MB, ~5 s to write) is
# built ONCE per test session into a temporary folder. Tests must not modify it; tests
# that need extra files copy what they need into their own tmp_path.
# ======================================================================================

# NOTE: set before any test imports diffusers/transformers: nothing may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

DEMO_SEED = 0


@pytest.fixture(scope="session")
def demo_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models root (ComfyUI layout) holding the demo bundle written with seed 0."""
    from deployments.checkpoints.demo import init_demo

    root = tmp_path_factory.mktemp("genserve-models")
    init_demo(root, seed=DEMO_SEED)
    return root


@pytest.fixture(scope="session")
def demo_loader(demo_models_dir: Path):
    """A session-wide ModelLoader over :func:`demo_models_dir` (shared cache: do not
    assert on its counters; build your own loader for that)."""
    from deployments.checkpoints.layout import ModelsDir
    from deployments.checkpoints.loader import ModelLoader

    return ModelLoader(ModelsDir(demo_models_dir), cache_size=4)


# ======================================================================================
# (end of demo model bundle block)
# ======================================================================================
