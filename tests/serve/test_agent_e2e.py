"""The default agent profile end to end on the real SmolLM2 (CPU), through the deployed app."""

from __future__ import annotations

import json

import pytest


def test_default_profile_generates_an_image_and_answers(serve_env):
    with serve_env.client(timeout=900) as c:
        r = c.post("/v1/agent/runs", params={"wait": "true"},
                   json={"profile": "default", "input": "Generate an image of a red fox in the snow and tell me its artifact id."})
        assert r.status_code == 200, r.text
        run = r.json()
        traj = c.get(f"/v1/agent/runs/{run['id']}/trajectory").json()
    steps = traj["steps"]
    assert steps, json.dumps(run)[:3000]
    tools = [s["tool_call"]["name"] for s in steps if s.get("tool_call")]
    assert "generate_image" in tools, (run, steps)
    gen = next(s for s in steps if s.get("tool_call") and s["tool_call"]["name"] == "generate_image")
    assert gen["tool_call"]["version"]
    obs = gen["observation"]
    artifact_ids = (obs.get("data") or {}).get("artifact_ids") or [i.get("artifact_id") for i in obs.get("images", [])]
    assert artifact_ids and artifact_ids[0].startswith("art_"), obs
    for s in steps:
        assert s["latency_ms"] >= 0
    assert any(s["tokens_in"] > 0 and s["tokens_out"] > 0 for s in steps)
    assert run["status"] in ("succeeded", "max_steps", "loop_detected"), run
    # the artifact the agent made is a real, signed artifact
    with serve_env.client() as c:
        art = c.get(f"/v1/artifacts/{artifact_ids[0]}").json()
        assert art["kind"] == "output" and c.get(f"/v1/artifacts/{artifact_ids[0]}/manifest").status_code == 200


def test_openai_compatible_chat_route_on_the_ingress(serve_env):
    with serve_env.client(timeout=300) as c:
        models = c.get("/v1/models").json()
        assert models["data"] and models["data"][0]["id"]
        r = c.post("/v1/chat/completions", json={"model": models["data"][0]["id"], "max_tokens": 8, "temperature": 0,
                                                 "messages": [{"role": "user", "content": "Say hello."}]})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["choices"][0]["message"]["content"] and body["usage"]["completion_tokens"] > 0


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__]))
