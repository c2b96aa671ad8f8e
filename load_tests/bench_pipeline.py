"""Pipeline benchmark: every figure is a ratio measured side by side in one run.

Measures, on the demo models (or --models-dir):
  1. served latency (HTTP -> ingress -> stages -> provenance -> store) vs the same models called
     in-process with plain diffusers (StableDiffusionPipeline), single request;
  2. throughput at concurrency 1 and 8 with sampler batching on (max_batch_size 8) vs off (1);
  3. cache effects: seed-only change and identical resubmission vs a cold request.

Usage:
  .venv/bin/python load_tests/bench_pipeline.py [--models-dir models] [--steps 20] [--size 256] [--repeats 3]
Writes load_tests/results/bench_pipeline.json.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def workflow(seed: int, steps: int, size: int, prompt: str) -> dict:
    wf = json.loads((ROOT / "graphs" / "examples" / "txt2img.json").read_text())
    wf["3"]["inputs"].update(seed=seed, steps=steps)
    wf["5"]["inputs"].update(width=size, height=size)
    wf["6"]["inputs"]["text"] = prompt
    return wf


def served_run(url: str, wf: dict) -> float:
    t0 = time.perf_counter()
    r = httpx.post(f"{url}/v1/workflows/run", json={"workflow": wf, "include_data": False}, timeout=900)
    r.raise_for_status()
    return time.perf_counter() - t0


def throughput(url: str, concurrency: int, total: int, steps: int, size: int) -> float:
    tag = uuid.uuid4().hex[:6]
    wfs = [workflow(1000 + i, steps, size, f"throughput {tag} {i % 2}") for i in range(total)]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(lambda wf: served_run(url, wf), wfs))
    return total / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models-dir", default=str(ROOT / "models"))
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--total", type=int, default=8, help="requests per throughput measurement")
    ap.add_argument("--out", default=str(ROOT / "load_tests" / "results" / "bench_pipeline.json"))
    opts = ap.parse_args()

    import ray
    import torch
    from ray import serve

    from deployments.checkpoints.demo import init_demo
    from deployments.checkpoints.layout import ModelsDir
    from serve.app import build_app
    from serve.health import wait_healthy

    models_dir = Path(opts.models_dir)
    init_demo(ModelsDir(models_dir))  # no-op when present
    data_dir = Path(tempfile.mkdtemp(prefix="genserve-bench-"))
    results: dict = {"steps": opts.steps, "size": opts.size, "machine": f"{os.cpu_count()} CPUs, torch {torch.__version__}"}

    # -- 1. served app and in-process plain diffusers, measured alternately ------------------
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    url = f"http://127.0.0.1:{port}"

    def deploy(batch: int) -> None:
        args = {"models_dir": str(models_dir.resolve()), "data_dir": str(data_dir), "max_concurrent_jobs": 16, "agents": False,
                "sampler": {"num_replicas": 1, "user_config": {"max_batch_size": batch, "batch_wait_timeout_s": 0.05 if batch > 1 else 0.0, "torch_threads": 2}},
                "text_encoder": {"num_replicas": 1}, "vae": {"num_replicas": 1}}
        serve.run(build_app(args), name="genserve", route_prefix="/", blocking=False)
        if not wait_healthy(url, 300):
            raise RuntimeError("the benchmark app did not become healthy")

    deploy(8)
    served_run(url, workflow(0, opts.steps, opts.size, "warm up"))

    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    torch.set_num_threads(2)
    folder = models_dir / "checkpoints" / "genserve-demo-sd15"
    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, feature_extractor=None,
                                                   requires_safety_checker=False, local_files_only=True)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)

    def diffusers_once(seed: int) -> float:
        t0 = time.perf_counter()
        pipe(f"a watercolor painting {seed}", negative_prompt="blurry", num_inference_steps=opts.steps, guidance_scale=7.0,
             height=opts.size, width=opts.size, generator=torch.Generator().manual_seed(seed))
        return time.perf_counter() - t0

    diffusers_once(0)  # warm-up
    inproc, served = [], []
    for i in range(opts.repeats):  # alternate, so machine-load drift hits both sides alike
        inproc.append(diffusers_once(i + 1))
        served.append(served_run(url, workflow(i + 1, opts.steps, opts.size, f"a watercolor painting {uuid.uuid4().hex}")))
    pipe = None  # free the in-process copy before the throughput runs

    # cache effects (each measured against a cold request with a fresh prompt)
    cold, seed_only, identical = [], [], []
    for i in range(opts.repeats):
        prompt = f"cache probe {uuid.uuid4().hex}"
        cold.append(served_run(url, workflow(10 + i, opts.steps, opts.size, prompt)))
        seed_only.append(served_run(url, workflow(20 + i, opts.steps, opts.size, prompt)))
        identical.append(served_run(url, workflow(20 + i, opts.steps, opts.size, prompt)))

    tput = {}
    for batch in (8, 1):
        deploy(batch)
        served_run(url, workflow(0, opts.steps, opts.size, f"warm {batch}"))
        for conc in (1, 8):
            tput[(batch, conc)] = throughput(url, conc, opts.total, opts.steps, opts.size)
    serve.shutdown()
    ray.shutdown()

    med = statistics.median
    results.update({
        "latency_s": {"inprocess_diffusers": med(inproc), "served": med(served), "ratio_served_over_inprocess": med(served) / med(inproc)},
        "cache_s": {"cold": med(cold), "seed_only_change": med(seed_only), "identical_resubmission": med(identical),
                    "speedup_seed_only": med(cold) / med(seed_only), "speedup_identical": med(cold) / med(identical)},
        "throughput_img_per_s": {f"batch{b}_conc{c}": v for (b, c), v in tput.items()},
        "batching_speedup_at_conc8": tput[(8, 8)] / tput[(1, 8)],
    })
    Path(opts.out).parent.mkdir(parents=True, exist_ok=True)
    Path(opts.out).write_text(json.dumps(results, indent=2))

    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"genserve pipeline, demo models, {opts.size}x{opts.size}, {opts.steps} steps ({results['machine']})")
    t.add_column("measure"); t.add_column("value", justify="right"); t.add_column("ratio", justify="right")
    lat = results["latency_s"]
    t.add_row("in-process plain diffusers, 1 request", f"{lat['inprocess_diffusers']:.2f} s", "1.00")
    t.add_row("served (HTTP + stages + store), 1 request", f"{lat['served']:.2f} s", f"{lat['ratio_served_over_inprocess']:.2f}x")
    c = results["cache_s"]
    t.add_row("cold request (new prompt)", f"{c['cold']:.2f} s", "1.00")
    t.add_row("seed-only change", f"{c['seed_only_change']:.2f} s", f"{c['speedup_seed_only']:.2f}x faster")
    t.add_row("identical resubmission", f"{c['identical_resubmission']:.3f} s", f"{c['speedup_identical']:.1f}x faster")
    base = tput[(1, 1)]
    for (b, conc), v in sorted(tput.items()):
        t.add_row(f"throughput, batching {'on ' if b > 1 else 'off'} (max {b}), concurrency {conc}", f"{v:.2f} img/s", f"{v / base:.2f}x")
    Console().print(t)
    print(f"wrote {opts.out}")


if __name__ == "__main__":
    main()
