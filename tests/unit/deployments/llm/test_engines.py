"""Remote and optional engines: the OpenAI-compatible client and vLLM's absence."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

import httpx
import pytest

from deployments.llm.engines import (
    EngineTimeoutError,
    EngineUnavailableError,
    OpenAICompatEngine,
    RemoteEngineError,
    VLLMEngine,
)
from deployments.llm.openai_routes import create_openai_app

MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_endpoint_is_a_clear_error():
    port = closed_port()
    engine = OpenAICompatEngine(f"http://127.0.0.1:{port}/v1", "m", connect_timeout_s=2)

    async def go():
        try:
            await engine.chat(MESSAGES, max_tokens=4)
        finally:
            await engine.aclose()

    with pytest.raises(EngineUnavailableError) as info:
        asyncio.run(go())
    message = str(info.value)
    assert f"127.0.0.1:{port}/v1/chat/completions" in message and "server is running" in message


def test_unreachable_endpoint_streaming_is_a_clear_error():
    engine = OpenAICompatEngine(f"http://127.0.0.1:{closed_port()}/v1", "m", connect_timeout_s=2)

    async def go():
        return [d async for d in engine.stream_chat(MESSAGES, max_tokens=4)]

    with pytest.raises(EngineUnavailableError, match="Cannot reach"):
        asyncio.run(go())


def test_silent_endpoint_times_out():
    # A server that accepts connections and never answers.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    port = listener.getsockname()[1]
    engine = OpenAICompatEngine(f"http://127.0.0.1:{port}/v1", "m", timeout_s=0.5)
    start = time.monotonic()
    try:
        with pytest.raises(EngineTimeoutError, match="did not answer in time"):
            asyncio.run(engine.chat(MESSAGES, max_tokens=4))
        assert time.monotonic() - start < 5
    finally:
        stop.set()
        thread.join(timeout=2)
        for conn in accepted:
            conn.close()
        listener.close()


def test_bad_base_url_fails_early():
    with pytest.raises(ValueError, match="http"):
        OpenAICompatEngine("127.0.0.1:8000", "m")


def test_round_trip_through_our_own_openai_routes(smollm2_model):
    """OpenAICompatEngine -> /v1/chat/completions -> LLMModel: same answer as in-process."""
    transport = httpx.ASGITransport(app=create_openai_app(smollm2_model))
    engine = OpenAICompatEngine("http://llm.test/v1", "SmolLM2-135M-Instruct", transport=transport)
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}}, "required": ["city"]}

    async def go():
        try:
            plain = await engine.chat(MESSAGES, max_tokens=12)
            deltas = [d async for d in engine.stream_chat(MESSAGES, max_tokens=12)]
            structured = await engine.chat(MESSAGES, max_tokens=32, json_schema=schema)
            models = await engine.list_models()
            with pytest.raises(RemoteEngineError) as info:
                await OpenAICompatEngine("http://llm.test/v1", "other", transport=transport).chat(MESSAGES, max_tokens=2)
            return plain, deltas, structured, models, info.value
        finally:
            await engine.aclose()

    plain, deltas, structured, models, error = asyncio.run(go())
    local = asyncio.run(smollm2_model.chat(MESSAGES, max_tokens=12))
    assert plain.text == local.text and plain.tokens_out == local.tokens_out and plain.tokens_in == local.tokens_in
    assert "".join(deltas) == plain.text and deltas[-1].result.text == plain.text
    assert deltas[-1].result.tokens_out == plain.tokens_out
    assert "city" in json.loads(structured.text)
    assert models == ["SmolLM2-135M-Instruct"]
    assert error.status_code == 404 and "HTTP 404" in str(error)


def test_vllm_missing_is_a_clear_error():
    try:
        import vllm  # noqa: F401
    except ImportError:
        pass
    else:  # pragma: no cover - only on GPU machines
        pytest.skip("vllm is installed here")
    with pytest.raises(EngineUnavailableError, match=r"genserve\[gpu\]"):
        VLLMEngine("/models/llm/some-model")


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__]))
