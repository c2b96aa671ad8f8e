"""The LLM deployment on a local Ray cluster: builder, batching across callers, streaming, HTTP routes."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

APP = "llm-test"
PREFIX = "/llm-test"
PROMPTS = ["What is the capital of France?", "Say hello in Spanish.", "What is 2+2?", "Name a famous painter."]


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_builder_returns_an_application_with_default_options(tmp_path):
    from ray.serve import Application

    from deployments.llm.builder import DEFAULT_LLM_OPTIONS, build_llm_deployment

    app = build_llm_deployment({"models_dir": str(tmp_path)})
    assert isinstance(app, Application)
    assert DEFAULT_LLM_OPTIONS["name"] == "LLM"
    assert 0 < DEFAULT_LLM_OPTIONS["ray_actor_options"]["num_cpus"] < 1
    assert DEFAULT_LLM_OPTIONS["user_config"]["max_batch_size"] > 1


@pytest.fixture(scope="module")
def llm_serve(ray_session, tmp_path_factory):
    """The LLM app (SmolLM2, one replica) next to whatever else Serve runs; removed afterwards."""
    from ray import serve
    from ray.serve.context import _get_global_client

    from deployments.llm.builder import build_llm_deployment
    from deployments.llm.demo import fetch_smollm2
    from tests.utils.serve_fixtures import free_port

    models = tmp_path_factory.mktemp("llm-serve-models")
    fetch_smollm2(models)
    client = _get_global_client(raise_if_no_controller_running=False)
    started_here = client is None
    if started_here:
        # NOTE: Serve's HTTP options are fixed by whoever starts it; a Serve started here is
        # shut down again after this module so the shared app fixture can start its own.
        serve.start(http_options={"host": "127.0.0.1", "port": free_port()})
        client = _get_global_client()
    port = client.http_config.port
    overrides = {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.25},
                 "user_config": {"max_batch_size": 8, "batch_wait_timeout_s": 0.2}}
    handle = serve.run(build_llm_deployment({"models_dir": str(models), "max_tokens": 16}, overrides),
                       name=APP, route_prefix=PREFIX, blocking=False)
    yield handle, f"http://127.0.0.1:{port}{PREFIX}"
    if started_here:
        serve.shutdown()
    else:
        serve.delete(APP)


def test_deployment_is_named_llm(llm_serve):
    from ray import serve

    status = serve.status().applications[APP]
    assert "LLM" in status.deployments
    handle, _ = llm_serve
    assert handle.model_info.remote().result()["id"] == "SmolLM2-135M-Instruct"


def test_concurrent_callers_are_batched_and_get_single_request_answers(llm_serve):
    handle, _ = llm_serve
    singles = [handle.chat.remote(user(p), max_tokens=10).result() for p in PROMPTS]
    before = handle.stats.remote().result()

    async def together():
        return await asyncio.gather(*(handle.chat.remote(user(p), max_tokens=10) for p in PROMPTS))

    batched = asyncio.run(together())
    after = handle.stats.remote().result()
    assert [r.text for r in batched] == [r.text for r in singles]
    assert after["largest_batch"] >= 2, after
    assert after["batches"] - before["batches"] < len(PROMPTS)
    assert "Paris" in singles[0].text and singles[0].model == "SmolLM2-135M-Instruct"


def test_streaming_through_a_handle(llm_serve):
    handle, _ = llm_serve
    deltas = list(handle.options(stream=True).stream_chat.remote(user(PROMPTS[0]), max_tokens=10))
    final = deltas[-1].result
    assert final is not None and "".join(deltas) == final.text
    assert final.text == handle.chat.remote(user(PROMPTS[0]), max_tokens=10).result().text


def test_concurrent_streams_are_batched_and_each_gets_its_own_answer(llm_serve):
    handle, _ = llm_serve
    singles = [handle.chat.remote(user(p), max_tokens=10).result().text for p in PROMPTS]
    before = handle.stats.remote().result()

    async def stream(p: str) -> list:
        return [d async for d in handle.options(stream=True).stream_chat.remote(user(p), max_tokens=10)]

    async def together():
        return await asyncio.gather(*(stream(p) for p in PROMPTS))

    streams = asyncio.run(together())
    after = handle.stats.remote().result()
    assert ["".join(deltas) for deltas in streams] == singles
    assert all(deltas[-1].result is not None for deltas in streams)
    assert after["batches"] - before["batches"] < len(PROMPTS), (before, after)


def test_invalid_request_raises_value_error_to_the_caller(llm_serve):
    handle, _ = llm_serve
    with pytest.raises(ValueError, match="non-empty"):
        handle.chat.remote([], max_tokens=4).result()


def test_openai_routes_over_http(llm_serve):
    _, base = llm_serve
    with httpx.Client(base_url=base, timeout=120) as c:
        assert c.get("/v1/models").json()["data"][0]["id"] == "SmolLM2-135M-Instruct"
        r = c.post("/v1/chat/completions", json={"messages": user(PROMPTS[0]), "max_tokens": 10})
        assert r.status_code == 200, r.text
        text = r.json()["choices"][0]["message"]["content"]
        with c.stream("POST", "/v1/chat/completions", json={"messages": user(PROMPTS[0]), "max_tokens": 10,
                                                             "stream": True}) as s:
            lines = [line for line in s.iter_lines() if line.startswith("data: ")]
        assert lines[-1] == "data: [DONE]"
        chunks = [json.loads(line[6:]) for line in lines[:-1]]
        assert "".join(ch["choices"][0]["delta"].get("content", "") for ch in chunks if ch["choices"]) == text
        bad = c.post("/v1/chat/completions", json={"messages": user("x"), "max_tokens": 10**6})
        assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"


def test_handle_client_backs_the_openai_router(llm_serve):
    """How the main ingress mounts the routes: LLMHandleClient over a DeploymentHandle."""
    from fastapi.testclient import TestClient

    from deployments.llm.handle_client import LLMHandleClient
    from deployments.llm.openai_routes import create_openai_app

    handle, _ = llm_serve
    client = asyncio.run(LLMHandleClient.from_handle(handle))
    with TestClient(create_openai_app(client)) as c:
        r = c.post("/v1/chat/completions", json={"messages": user(PROMPTS[2]), "max_tokens": 8, "stream": True})
        assert r.status_code == 200 and r.text.rstrip().endswith("data: [DONE]")
        r = c.post("/v1/chat/completions", json={"messages": [], "max_tokens": 8})
        assert r.status_code == 422
        r = c.post("/v1/chat/completions", json={"messages": user("x"), "max_tokens": 10**6})
        assert r.status_code == 400


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__]))
