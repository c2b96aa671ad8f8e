"""The sampler autoscales up under load and back down after it, on its own app in the shared Ray session.

Resource plan: the shared session's logical CPUs are mostly held by the main ``genserve`` app, so
every replica of this app asks for a tiny logical CPU share (0.01) and three sampler replicas fit
whatever the main app holds.
The figures (peak replicas, time to scale up and down) are printed; run with ``-s`` to see them.
"""

from __future__ import annotations

import random
import threading
import time

import httpx
import pytest

from serve.health import wait_healthy

from tests.utils.workflows import txt2img

APP = "genserve-autoscale"
PREFIX = "/autoscale"
TINY = {"ray_actor_options": {"num_cpus": 0.01}}
SAMPLER = {
    "autoscaling_config": {"min_replicas": 1, "max_replicas": 3, "target_ongoing_requests": 1, "upscale_delay_s": 1,
                           "downscale_delay_s": 5, "metrics_interval_s": 0.5, "look_back_period_s": 2},
    "ray_actor_options": {"num_cpus": 0.01},
    "user_config": {"torch_threads": 1},
}


def sampler_replicas() -> tuple[int, str]:
    """(RUNNING sampler replicas, deployment status) of the autoscale app."""
    from ray import serve

    app = serve.status().applications.get(APP)
    if app is None or "Sampler" not in app.deployments:
        return 0, "MISSING"
    dep = app.deployments["Sampler"]
    running = sum(n for state, n in dep.replica_states.items() if str(state).upper().endswith("RUNNING"))
    return running, str(dep.status)


@pytest.fixture(scope="module")
def autoscale_app(serve_env, tmp_path_factory):
    from ray import serve

    from serve.app import build_app
    from serve.demo_inputs import write_example_inputs

    # NOTE: its own data dir (so its own job store): the two apps' runners must not share a queue.
    data_dir = tmp_path_factory.mktemp("autoscale-data")
    write_example_inputs(data_dir / "input")
    args = {"models_dir": str(serve_env.models_dir), "data_dir": str(data_dir), "lease_s": 30.0, "max_concurrent_jobs": 16,
            "ingress": {"num_replicas": 1, **TINY}, "text_encoder": {"num_replicas": 1, **TINY},
            "vae": {"num_replicas": 1, **TINY}, "sampler": SAMPLER, "provenance": False,
            "agents": False}  # image stages only: no LLM replica in this app
    serve.run(build_app(args), name=APP, route_prefix=PREFIX, blocking=False)
    url = f"{serve_env.base_url}{PREFIX}"
    if not wait_healthy(url, 300):
        serve.delete(APP)
        raise RuntimeError("autoscale app did not become healthy")
    try:
        yield url
    finally:
        serve.delete(APP)


def test_sampler_scales_up_under_load_and_down_after(autoscale_app):
    url = autoscale_app
    assert sampler_replicas()[0] == 1
    # NOTE: one prompt first: it creates the fresh store's prompt counter row (concurrent first
    # submissions race on creating it: serve/stores/jobs.py enqueue) and warms the handles.
    r = httpx.post(f"{url}/v1/workflows/run", json={"workflow": txt2img(seed=1, steps=2), "include_data": False}, timeout=600)
    assert r.status_code == 200 and r.json()["status"] == "success", r.text
    stop = threading.Event()
    submitted: list[str] = []
    errors: list[str] = []

    def client(i: int) -> None:
        # Closed loop: each client keeps one long prompt in flight until told to stop.
        with httpx.Client(base_url=url, timeout=600) as c:
            while not stop.is_set():
                wf = txt2img(seed=random.randrange(1, 2**31), steps=60, size=64)
                r = c.post("/v1/workflows/run", json={"workflow": wf, "include_data": False, "timeout_s": 600})
                if r.status_code != 200 or r.json()["status"] != "success":
                    errors.append(f"{r.status_code} {r.text[:200]}")
                    return
                submitted.append(r.json()["prompt_id"])

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(6)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    peak, t_up, t_peak = 1, None, None
    try:
        while time.monotonic() - t0 < 180:
            n, _ = sampler_replicas()
            if n > peak:
                peak, t_peak = n, time.monotonic() - t0
            if n > 1 and t_up is None:
                t_up = time.monotonic() - t0
            if peak >= 3 or (t_up is not None and time.monotonic() - t0 > t_up + 20):
                break
            assert not errors, errors
            time.sleep(0.5)
    finally:
        stop.set()
        load_end = time.monotonic()
        for t in threads:
            t.join(timeout=600)
    drained = time.monotonic()
    t_down = None
    while time.monotonic() - drained < 120:
        n, _ = sampler_replicas()
        if n == 1:
            t_down = time.monotonic() - drained
            break
        time.sleep(0.5)
    print(f"\nautoscaling figures: peak sampler replicas {peak}; first scale-up after {t_up}s of load "
          f"(peak reached after {t_peak}s); {len(submitted)} prompts finished; load stopped after "
          f"{load_end - t0:.1f}s, last prompt drained {drained - load_end:.1f}s later; back to 1 replica "
          f"{t_down}s after the drain")
    assert not errors, errors
    assert t_up is not None and peak > 1, f"sampler never scaled above 1 replica (peak {peak})"
    assert t_down is not None, "sampler did not scale back down to 1 replica within 120 s after the load"


if __name__ == "__main__":
    import sys

    sys.exit(pytest.main([__file__, "-v", "-s"]))
