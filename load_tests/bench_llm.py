"""LLM benchmark: tokens/s of the served LLM vs the same model in-process, side by side in one run.

Measures SmolLM2-135M-Instruct (GGUF, dequantized to float32, 1 torch thread) on this machine:
  1. in-process (TransformersEngine in this process): concurrency 1 (one request at a time),
     concurrency 8 with batching off (8 concurrent callers, decoded one after another) and on
     (the 8 requests decoded as one batch by the step loop), plus HF ``model.generate`` on the
     same left-padded batch of 8 (the alternative to our step loop);
  2. served (Ray Serve, local ``ray.init(num_cpus=2)``, one replica, through a
     DeploymentHandle and over HTTP ``/v1/chat/completions``): concurrency 1 and 8, with
     ``max_batch_size`` 1 (batching off) and 8 (on), switched through ``user_config``;
  3. JSON-schema constrained decoding (xgrammar) vs unconstrained, in-process, batch 1 and 8.

Every request asks for ``--max-tokens`` new tokens (greedy, prompts that make long answers, so
all modes decode the same tokens). tokens/s = generated tokens / wall time of the whole round.

Usage:
  .venv/bin/python load_tests/bench_llm.py [--models-dir DIR] [--max-tokens 32] [--rounds 1]
Writes load_tests/results/bench_llm.json.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

logger = logging.getLogger("bench_llm")

PROMPTS = [
    "Write a long story about a dragon who learns to bake bread.",
    "Explain in detail how a steam engine works.",
    "Describe a walk through a busy market in Marrakech.",
    "Write a long letter to a friend about your summer holidays.",
    "Explain the water cycle to a ten-year-old, step by step.",
    "Describe the history of the bicycle in detail.",
    "Write a long poem about the ocean at night.",
    "Explain how to plant and care for a vegetable garden.",
]

AGENT_SYSTEM = (
    "You are an agent. Tools: generate_image, search, calculator, finish. "
    "Reply with one JSON object with keys thought, action and action_input."
)
AGENT_PROMPTS = [
    "Draw a red cat sitting on a mat.", "What is the capital of Japan?", "Compute 17 * 23.",
    "Find recent news about Mars rovers.", "Make a picture of a sunset over mountains.", "I am done, thanks!",
    "Search for the best pizza recipe.", "Generate an image of a robot reading a book.",
]
TOOL_CALL_SCHEMA = {
    "type": "object",
    "properties": {
        "thought": {"type": "string", "maxLength": 80},
        "action": {"type": "string", "enum": ["generate_image", "search", "calculator", "finish"]},
        "action_input": {"type": "object", "properties": {"query": {"type": "string", "maxLength": 40}},
                         "required": ["query"], "additionalProperties": False},
    },
    "required": ["thought", "action", "action_input"],
    "additionalProperties": False,
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def messages(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


def rate(tokens: int, seconds: float) -> dict[str, float]:
    return {"tokens": tokens, "seconds": round(seconds, 3), "tokens_per_s": round(tokens / seconds, 2)}


# --- in-process ------------------------------------------------------------------------------


def bench_inprocess(engine: Any, max_tokens: int, rounds: int) -> dict[str, Any]:
    from deployments.llm.engines import ChatRequest

    def reqs() -> list[ChatRequest]:
        return [ChatRequest(messages=messages(p), max_tokens=max_tokens) for p in PROMPTS]

    engine.generate([ChatRequest(messages=messages("Hi"), max_tokens=4)])  # warm-up
    out: dict[str, Any] = {}

    # concurrency 1: one request at a time
    tokens, start = 0, time.perf_counter()
    for _ in range(rounds):
        for r in reqs():
            tokens += engine.generate([r])[0].tokens_out
    out["c1"] = rate(tokens, time.perf_counter() - start)

    # concurrency 8, batching off: 8 concurrent callers, the engine lock serializes them
    async def concurrent() -> int:
        total = 0
        for _ in range(rounds):
            results = await asyncio.gather(*(engine.chat(messages(p), max_tokens=max_tokens) for p in PROMPTS))
            total += sum(r.tokens_out for r in results)
        return total

    start = time.perf_counter()
    tokens = asyncio.run(concurrent())
    out["c8_batch_off"] = rate(tokens, time.perf_counter() - start)

    # concurrency 8, batching on: one step-loop batch
    tokens, start = 0, time.perf_counter()
    for _ in range(rounds):
        tokens += sum(r.tokens_out for r in engine.generate(reqs()))
    out["c8_batch_on"] = rate(tokens, time.perf_counter() - start)

    # the alternative: HF generate() on the same left-padded batch
    out["c8_hf_generate"] = bench_hf_generate(engine, max_tokens, rounds)
    return out


def bench_hf_generate(engine: Any, max_tokens: int, rounds: int) -> dict[str, float]:
    import torch

    tok, model = engine.tokenizer, engine.model
    prompts = [engine.encode_prompt(messages(p)) for p in PROMPTS]
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), engine.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    tokens, start = 0, time.perf_counter()
    with torch.inference_mode():
        for _ in range(rounds):
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_tokens, do_sample=False,
                                 pad_token_id=engine.pad_token_id)
            new = out[:, width:]
            for row in new.tolist():
                # count up to and including the first stop token, as the engine does
                n = next((i + 1 for i, t in enumerate(row) if t in engine.stop_token_ids), len(row))
                tokens += n
    del tok
    return rate(tokens, time.perf_counter() - start)


def bench_structured(engine: Any, max_tokens: int) -> dict[str, Any]:
    from deployments.llm.engines import ChatRequest

    def reqs(schema: dict | None) -> list[ChatRequest]:
        return [ChatRequest(messages=[{"role": "system", "content": AGENT_SYSTEM}, {"role": "user", "content": p}],
                            max_tokens=max_tokens, json_schema=schema) for p in AGENT_PROMPTS]

    out: dict[str, Any] = {}
    engine.generate(reqs(TOOL_CALL_SCHEMA)[:1])  # warm-up (schema compile is cached afterwards)
    for name, schema in (("unconstrained", None), ("constrained", TOOL_CALL_SCHEMA)):
        tokens, start = 0, time.perf_counter()
        valid = 0
        for r in reqs(schema):
            result = engine.generate([r])[0]
            tokens += result.tokens_out
            valid += _parses(result.text)
        out[f"{name}_b1"] = {**rate(tokens, time.perf_counter() - start), "valid_json": f"{valid}/{len(AGENT_PROMPTS)}"}
        start = time.perf_counter()
        results = engine.generate(reqs(schema))
        out[f"{name}_b8"] = {**rate(sum(r.tokens_out for r in results), time.perf_counter() - start),
                             "valid_json": f"{sum(_parses(r.text) for r in results)}/{len(AGENT_PROMPTS)}"}
    return out


def _parses(text: str) -> int:
    try:
        json.loads(text)
        return 1
    except ValueError:
        return 0


# --- served ----------------------------------------------------------------------------------


def bench_served(models_dir: Path, max_tokens: int, rounds: int) -> dict[str, Any]:
    import httpx
    import ray
    from ray import serve

    from deployments.llm.builder import build_llm_deployment

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1"}})
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    url = f"http://127.0.0.1:{port}/llm/v1/chat/completions"
    out: dict[str, Any] = {}
    try:
        for batch in (1, 8):
            overrides = {"num_replicas": 1, "user_config": {"max_batch_size": batch, "batch_wait_timeout_s": 0.05,
                                                            "torch_threads": 1}}
            # NOTE: only user_config changes between the two runs, so Serve reconfigures the
            # running replica in place (no reload).
            handle = serve.run(build_llm_deployment({"models_dir": str(models_dir)}, overrides),
                               name="llm", route_prefix="/llm")
            handle.chat.remote(messages("Hi"), max_tokens=4).result()  # warm-up
            tag = "on" if batch > 1 else "off"

            if batch == 1:
                tokens, start = 0, time.perf_counter()
                for _ in range(rounds):
                    for p in PROMPTS:
                        tokens += handle.chat.remote(messages(p), max_tokens=max_tokens).result().tokens_out
                out["handle_c1"] = rate(tokens, time.perf_counter() - start)

                tokens, start = 0, time.perf_counter()
                with httpx.Client(timeout=600) as client:
                    for _ in range(rounds):
                        for p in PROMPTS:
                            r = client.post(url, json={"messages": messages(p), "max_tokens": max_tokens})
                            r.raise_for_status()
                            tokens += r.json()["usage"]["completion_tokens"]
                out["http_c1"] = rate(tokens, time.perf_counter() - start)

            async def handle_c8() -> int:
                total = 0
                for _ in range(rounds):
                    results = await asyncio.gather(*(handle.chat.remote(messages(p), max_tokens=max_tokens) for p in PROMPTS))
                    total += sum(r.tokens_out for r in results)
                return total

            start = time.perf_counter()
            tokens = asyncio.run(handle_c8())
            out[f"handle_c8_batch_{tag}"] = rate(tokens, time.perf_counter() - start)

            async def http_c8() -> int:
                total = 0
                async with httpx.AsyncClient(timeout=600) as client:
                    for _ in range(rounds):
                        rs = await asyncio.gather(*(client.post(url, json={"messages": messages(p), "max_tokens": max_tokens})
                                                    for p in PROMPTS))
                        for r in rs:
                            r.raise_for_status()
                            total += r.json()["usage"]["completion_tokens"]
                return total

            start = time.perf_counter()
            tokens = asyncio.run(http_c8())
            out[f"http_c8_batch_{tag}"] = rate(tokens, time.perf_counter() - start)
            out[f"replica_stats_batch_{tag}"] = handle.stats.remote().result()
    finally:
        serve.shutdown()
        ray.shutdown()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models-dir", default=None, help="models root (SmolLM2 is fetched into <dir>/llm); default: a temp dir")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=1, help="rounds of the 8 prompts per measurement")
    ap.add_argument("--skip-served", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "load_tests" / "results" / "bench_llm.json"))
    opts = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import torch
    import transformers

    from deployments.llm.demo import fetch_smollm2
    from deployments.llm.transformers_engine import TransformersEngine

    transformers.logging.set_verbosity_error()
    models_dir = Path(opts.models_dir or tempfile.mkdtemp(prefix="bench-llm-models-"))
    gguf = fetch_smollm2(models_dir)
    results: dict[str, Any] = {
        "model": gguf.name,
        "max_tokens": opts.max_tokens,
        "rounds": opts.rounds,
        "requests_per_round": len(PROMPTS),
        "machine": f"{os.cpu_count()} CPUs, torch {torch.__version__}, transformers {transformers.__version__}, "
                   "float32, 1 torch thread",
    }

    # 1. In-process (then freed, so the replica has the CPUs to itself)
    engine = TransformersEngine.from_path(gguf, torch_threads=1, max_batch_size=8)
    results["inprocess"] = bench_inprocess(engine, opts.max_tokens, opts.rounds)
    results["structured"] = bench_structured(engine, max_tokens=200)
    del engine
    gc.collect()

    # 2. Served
    if not opts.skip_served:
        results["served"] = bench_served(models_dir, opts.max_tokens, opts.rounds)

    Path(opts.out).parent.mkdir(parents=True, exist_ok=True)
    Path(opts.out).write_text(json.dumps(results, indent=2))
    print_table(results)
    sys.stdout.write(f"wrote {opts.out}\n")


def print_table(results: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    ip, sv = results["inprocess"], results.get("served", {})
    base = ip["c1"]["tokens_per_s"]
    t = Table(title=f"LLM tokens/s, {results['model']}, {results['max_tokens']} new tokens/request ({results['machine']})")
    for col in ("mode", "concurrency", "batching", "tokens/s", "vs in-process c1"):
        t.add_column(col)
    rows = [
        ("in-process", "1", "-", ip["c1"]),
        ("in-process", "8", "off (serialized)", ip["c8_batch_off"]),
        ("in-process", "8", "on (step loop)", ip["c8_batch_on"]),
        ("in-process HF generate()", "8", "on (padded batch)", ip["c8_hf_generate"]),
    ]
    for key, conc, batching in (("handle_c1", "1", "max_batch_size 1"), ("handle_c8_batch_off", "8", "max_batch_size 1"),
                                ("handle_c8_batch_on", "8", "max_batch_size 8"), ("http_c1", "1", "max_batch_size 1"),
                                ("http_c8_batch_off", "8", "max_batch_size 1"), ("http_c8_batch_on", "8", "max_batch_size 8")):
        if key in sv:
            rows.append((f"served ({key.split('_')[0]})", conc, batching, sv[key]))
    for mode, conc, batching, r in rows:
        t.add_row(mode, conc, batching, f"{r['tokens_per_s']:.1f}", f"{r['tokens_per_s'] / base:.2f}x")
    Console().print(t)
    s = Table(title="JSON-schema constrained decoding (xgrammar), in-process, agent prompts, max_tokens 200")
    for col in ("decoding", "batch", "tokens/s", "valid JSON"):
        s.add_column(col)
    for key, r in results["structured"].items():
        name, batch = key.rsplit("_", 1)
        s.add_row(name, batch[1:], f"{r['tokens_per_s']:.1f}", r["valid_json"])
    Console().print(s)


if __name__ == "__main__":
    main()
