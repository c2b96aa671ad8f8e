"""Factories for workflows used across tests."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

EXAMPLES = Path(__file__).resolve().parents[2] / "graphs" / "examples"
DEMO_CHECKPOINT = "genserve-demo-sd15.safetensors"


def example(name: str) -> dict[str, Any]:
    return json.loads((EXAMPLES / f"{name}.json").read_text())


def example_names() -> list[str]:
    return sorted(p.stem for p in EXAMPLES.glob("*.json"))


def txt2img(seed: int = 42, steps: int = 4, size: int = 64, prompt: str | None = None, sampler: str = "euler",
            scheduler: str = "normal", cfg: float = 7.0, batch_size: int = 1) -> dict[str, Any]:
    wf = copy.deepcopy(example("txt2img"))
    ks = wf["3"]["inputs"]
    ks.update(seed=seed, steps=steps, sampler_name=sampler, scheduler=scheduler, cfg=cfg)
    wf["5"]["inputs"].update(width=size, height=size, batch_size=batch_size)
    if prompt is not None:
        wf["6"]["inputs"]["text"] = prompt
    return wf
