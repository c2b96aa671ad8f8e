"""Session fixtures: one Ray instance and one deployed genserve app shared by tests/serve and tests/e2e."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServeEnv:
    base_url: str
    data_dir: Path
    models_dir: Path
    args: dict[str, Any]

    def handle(self, deployment: str) -> Any:
        from ray import serve

        return serve.get_deployment_handle(deployment, app_name="genserve")

    def client(self, **kw: Any) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=kw.pop("timeout", 120), **kw)


def wait_healthy(url: str, timeout_s: float = 300) -> None:
    from serve.health import wait_healthy as poll

    if not poll(url, timeout_s):
        raise RuntimeError(f"app at {url} not healthy after {timeout_s}s")


@pytest.fixture(scope="session")
def ray_session():
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=4, include_dashboard=False, namespace="genserve-tests", log_to_driver=False,
                 runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}})
    yield ray
    from ray import serve

    if ray.is_initialized():  # an own_cluster test may have shut it down already
        try:
            serve.shutdown()
        finally:
            ray.shutdown()


@pytest.fixture(scope="session")
def serve_env(ray_session, demo_models_dir, tmp_path_factory) -> ServeEnv:
    """The whole app (ingress + text encoder + sampler + VAE) on the demo models, over real HTTP."""
    from ray import serve

    from serve.app import build_app
    from serve.demo_inputs import write_example_inputs

    data_dir = tmp_path_factory.mktemp("serve-data")
    write_example_inputs(data_dir / "input")
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    from deployments.llm.demo import fetch_smollm2

    # NOTE: into its own folder: the shared demo bundle must stay as init_demo wrote it.
    gguf = fetch_smollm2(tmp_path_factory.mktemp("llm-models"))
    args = {"image_service_url": f"http://127.0.0.1:{port}", "llm_stage": {"num_replicas": 1}, "llm": {"model": str(gguf)},"models_dir": str(demo_models_dir), "data_dir": str(data_dir), "lease_s": 10.0, "max_concurrent_jobs": 16,
            # tests ask for a fixed replica count so batching is observable on one sampler replica
            "sampler": {"num_replicas": 1}, "text_encoder": {"num_replicas": 1}, "vae": {"num_replicas": 1}}
    serve.run(build_app(args), name="genserve", route_prefix="/", blocking=False)
    env = ServeEnv(f"http://127.0.0.1:{port}", data_dir, Path(demo_models_dir), args)
    wait_healthy(env.base_url)
    return env


@pytest.fixture(scope="session")
def moto_endpoint():
    """A moto S3 server over real HTTP on 127.0.0.1 (server mode, not in-process patching)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()
