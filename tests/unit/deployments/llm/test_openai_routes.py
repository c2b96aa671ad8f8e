"""OpenAI-compatible routes over the in-process model: FastAPI TestClient, and the real openai client."""

from __future__ import annotations

import json
import socket
import threading
import time
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from deployments.llm.engines import ChatResult, EngineTimeoutError, EngineUnavailableError, TextDelta
from deployments.llm.openai_routes import create_openai_app, router

SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 30}, "country": {"type": "string", "maxLength": 30}},
    "required": ["city", "country"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def client(smollm2_model):
    with TestClient(create_openai_app(smollm2_model)) as c:
        yield c


def chat_body(**extra: Any) -> dict[str, Any]:
    return {"model": "SmolLM2-135M-Instruct", "messages": [{"role": "user", "content": "What is the capital of France?"}],
            "max_tokens": 12, **extra}


def test_models_lists_the_served_model(client):
    r = client.get("/v1/models")
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["SmolLM2-135M-Instruct"]
    assert body["data"][0]["object"] == "model"


def test_chat_completion_shape(client, smollm2_model):
    r = client.post("/v1/chat/completions", json=chat_body())
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["model"] == "SmolLM2-135M-Instruct" and isinstance(body["created"], int)
    [choice] = body["choices"]
    assert choice["index"] == 0 and choice["message"]["role"] == "assistant"
    assert "Paris" in choice["message"]["content"]
    assert choice["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] and usage["completion_tokens"] <= 12
    # Cost from the price table (0.5 / 1.5 USD per 1k tokens in the fixture).
    expected = usage["prompt_tokens"] / 1000 * 0.5 + usage["completion_tokens"] / 1000 * 1.5
    assert body["genserve"]["cost_usd"] == pytest.approx(expected)
    assert 0 < body["genserve"]["ttft_s"] <= body["genserve"]["latency_s"]


def test_response_format_json_schema_is_honoured(client):
    body = chat_body(max_tokens=64, response_format={"type": "json_schema",
                                                     "json_schema": {"name": "place", "schema": SCHEMA, "strict": True}})
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    data = json.loads(r.json()["choices"][0]["message"]["content"])
    assert set(data) == {"city", "country"}


def test_response_format_json_object(client):
    r = client.post("/v1/chat/completions", json=chat_body(max_tokens=32, response_format={"type": "json_object"}))
    assert r.status_code == 200, r.text
    content = r.json()["choices"][0]["message"]["content"]
    if r.json()["choices"][0]["finish_reason"] == "stop":
        assert isinstance(json.loads(content), dict)
    else:
        assert content.startswith("{")


def parse_sse(text: str) -> list[Any]:
    events = []
    for block in text.strip().split("\n\n"):
        assert block.startswith("data: "), block
        payload = block[len("data: "):]
        events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def test_streaming_uses_openai_chunk_format(client):
    r = client.post("/v1/chat/completions", json=chat_body(stream=True, stream_options={"include_usage": True}))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/event-stream")
    events = parse_sse(r.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    finish = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(finish) == 1 and finish[0]["choices"][0]["delta"] == {}
    usage = chunks[-1]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] >= 1
    # The same text as the non-streaming answer (greedy).
    plain = client.post("/v1/chat/completions", json=chat_body()).json()["choices"][0]["message"]["content"]
    assert text == plain


def test_unknown_model_is_404(client):
    r = client.post("/v1/chat/completions", json=chat_body(model="gpt-17"))
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "model_not_found"


@pytest.mark.parametrize(
    "patch, status",
    [
        ({"messages": []}, 422),
        ({"n": 2}, 422),
        ({"temperature": -1}, 422),
        ({"max_tokens": 100000}, 400),
        ({"response_format": {"type": "json_schema"}}, 400),
        ({"response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "nope"}}}}, 400),
    ],
)
def test_bad_requests(client, patch, status):
    r = client.post("/v1/chat/completions", json=chat_body(**patch))
    assert r.status_code == status, r.text
    if status == 400:
        assert r.json()["error"]["type"] == "invalid_request_error"


def test_bad_streaming_request_gets_a_status_not_a_broken_stream(client):
    r = client.post("/v1/chat/completions", json=chat_body(stream=True, max_tokens=100000))
    assert r.status_code == 400


class FailingBackendDouble:
    """A backend whose engine is down (test double)."""

    model_id = "down"

    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    async def chat(self, messages, **params) -> ChatResult:
        raise self.exc

    async def stream_chat(self, messages, **params):
        raise self.exc
        yield TextDelta("")  # pragma: no cover


@pytest.mark.parametrize("exc, status", [(EngineUnavailableError("endpoint down"), 503), (EngineTimeoutError("slow"), 504)])
def test_engine_errors_map_to_statuses(exc, status):
    with TestClient(create_openai_app(FailingBackendDouble(exc))) as c:
        for stream in (False, True):
            r = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}], "stream": stream})
            assert r.status_code == status
            assert str(exc) in r.json()["error"]["message"]


def test_router_without_backend_is_503():
    app = FastAPI()
    app.include_router(router)
    with TestClient(app) as c:
        assert c.get("/v1/models").status_code == 503


# --- the real openai client against uvicorn on 127.0.0.1 ----------------------------------


@pytest.fixture(scope="module")
def server_url(smollm2_model):
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_openai_app(smollm2_model), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    yield f"http://127.0.0.1:{port}/v1"
    server.should_exit = True
    thread.join(timeout=10)


def test_openai_python_client(server_url):
    import openai  # a [dev] dependency: a missing client fails the test, never skips it
    client = openai.OpenAI(base_url=server_url, api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list()] == ["SmolLM2-135M-Instruct"]

    completion = client.chat.completions.create(
        model="SmolLM2-135M-Instruct", messages=[{"role": "user", "content": "What is the capital of France?"}], max_tokens=12
    )
    assert "Paris" in completion.choices[0].message.content
    assert completion.usage.completion_tokens <= 12

    stream = client.chat.completions.create(
        model="SmolLM2-135M-Instruct", messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=12, stream=True,
    )
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert streamed == completion.choices[0].message.content

    structured = client.chat.completions.create(
        model="SmolLM2-135M-Instruct", messages=[{"role": "user", "content": "Where is the Eiffel Tower?"}], max_tokens=64,
        response_format={"type": "json_schema", "json_schema": {"name": "place", "schema": SCHEMA}},
    )
    assert set(json.loads(structured.choices[0].message.content)) == {"city", "country"}

    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}], max_tokens=2)


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__]))
