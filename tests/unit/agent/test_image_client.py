"""`HttpImageEngineClient` against a stand-in image service (FastAPI over httpx's ASGI transport)."""

from __future__ import annotations

import io
import json

import httpx
import numpy as np
import pytest
from fastapi import FastAPI, HTTPException
from fastapi.responses import Response
from PIL import Image

from deployments.agent.constants import DEFAULT_EXAMPLES_DIR
from deployments.agent.image_client import (
    HttpImageEngineClient,
    ImageEngineError,
    WorkflowNotFoundError,
    apply_workflow_params,
    image_metrics,
    load_named_workflow,
)
from deployments.agent.tools import GenerateImageArgs, ToolContext, default_registry


def png(seed: int = 0, size: int = 32) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def image_service(received: list[dict]) -> FastAPI:
    app = FastAPI()
    files = {"txt2img_00001_.png": png(1)}

    @app.post("/v1/workflows/run")
    async def run(body: dict):
        received.append(body)
        if body["workflow"]["6"]["inputs"]["text"] == "fail":
            return Response(status_code=500, media_type="application/json",
                            content=json.dumps({"prompt_id": "p", "status": "error", "error": {"message": "node 3 failed"}}))
        return {"prompt_id": "p9", "status": "success", "outputs": {},
                "images": [{"artifact_id": "art_1", "filename": "txt2img_00001_.png", "subfolder": "", "type": "output",
                            "url": "/view?filename=txt2img_00001_.png&subfolder=&type=output", "data_base64": None}]}

    @app.get("/view")
    async def view(filename: str, subfolder: str = "", type: str = "output"):  # noqa: A002
        if filename not in files:
            raise HTTPException(404)
        return Response(files[filename], media_type="image/png")

    @app.get("/v1/artifacts/{artifact_id}")
    async def artifact(artifact_id: str):
        if artifact_id != "art_1":
            raise HTTPException(404)
        seed = received[-1]["workflow"]["3"]["inputs"]["seed"] if received else None
        return {"id": "art_1", "sha256": "ab" * 32, "kind": "output", "mime": "image/png", "size_bytes": len(files["txt2img_00001_.png"]),
                "prompt_id": "p9", "workflow_hash": "cd" * 32, "workflow_ref": None, "models": [{"name": "m.safetensors"}],
                "seeds": [seed], "parents": [], "url": "/view?filename=txt2img_00001_.png&subfolder=&type=output"}

    @app.get("/v1/artifacts/{artifact_id}/lineage")
    async def lineage(artifact_id: str):
        return {"root": artifact_id, "nodes": [], "edges": []}

    @app.get("/v1/artifacts/{artifact_id}/manifest")
    async def manifest(artifact_id: str):
        return {"active_manifest": "m1", "manifests": {"m1": {"claim_generator": "genserve/0.1.0",
                                                             "signature_info": {"common_name": "genserve DEVELOPMENT signer"}}}}

    return app


@pytest.fixture
def received() -> list[dict]:
    return []


@pytest.fixture
def client(received) -> HttpImageEngineClient:
    transport = httpx.ASGITransport(app=image_service(received))
    return HttpImageEngineClient("http://image", client=httpx.AsyncClient(transport=transport, base_url="http://image"))


def test_apply_params_targets_the_sampler_inputs():
    wf, version = load_named_workflow("txt2img")
    out = apply_workflow_params(wf, {"prompt": "a fox", "negative_prompt": "blur", "seed": 5, "num_inference_steps": 4,
                                     "guidance_scale": 3.5, "width": 128, "height": 64})
    assert out["6"]["inputs"]["text"] == "a fox" and out["7"]["inputs"]["text"] == "blur"
    assert (out["3"]["inputs"]["seed"], out["3"]["inputs"]["steps"], out["3"]["inputs"]["cfg"]) == (5, 4, 3.5)
    assert (out["5"]["inputs"]["width"], out["5"]["inputs"]["height"]) == (128, 64)
    assert wf["6"]["inputs"]["text"] != "a fox"  # the loaded workflow is not modified
    assert len(version) == 12
    with pytest.raises(ValueError, match="unknown workflow parameters"):
        apply_workflow_params(wf, {"sampler": "x"})


def test_named_workflow_lookup_is_safe_and_versioned():
    _, version = load_named_workflow("txt2img")
    assert load_named_workflow("txt2img", version)[1] == version
    with pytest.raises(WorkflowNotFoundError, match="not 000000"):
        load_named_workflow("txt2img", "000000")
    with pytest.raises(WorkflowNotFoundError, match="invalid workflow name"):
        load_named_workflow("../secrets")
    with pytest.raises(WorkflowNotFoundError, match="known workflows: .*txt2img"):
        load_named_workflow("nope", examples_dir=DEFAULT_EXAMPLES_DIR)


async def test_run_workflow_posts_the_api_format_graph(client, received):
    result = await client.run_workflow("txt2img", None, {"prompt": "a lighthouse", "seed": 11})
    assert result["artifact_ids"] == ["art_1"] and result["prompt_id"] == "p9"
    assert result["images"][0]["url"].startswith("/view?filename=txt2img_00001_.png")
    sent = received[0]["workflow"]
    assert sent["6"]["inputs"]["text"] == "a lighthouse" and sent["3"]["inputs"]["seed"] == 11
    assert sent["3"]["class_type"] == "KSampler"


async def test_failed_workflow_and_unreachable_service_raise(client):
    with pytest.raises(ImageEngineError, match="node 3 failed"):
        await client.run_workflow("txt2img", None, {"prompt": "fail"})
    down = HttpImageEngineClient("http://127.0.0.1:9", timeout_s=2)
    with pytest.raises(ImageEngineError, match="unreachable"):
        await down.run_workflow("txt2img", None, {"prompt": "x"})
    await down.aclose()


async def test_artifact_metadata_provenance_and_metrics(client):
    await client.run_workflow("txt2img", None, {"prompt": "a boat", "seed": 3})
    meta = await client.get_artifact("art_1")
    assert meta["content_type"] == "image/png" and len(meta["sha256"]) == 64
    assert meta["prompt_id"] == "p9" and meta["seeds"] == [3]
    assert meta["c2pa"] == {"signed": True, "claim_generator": "genserve/0.1.0", "signer": "genserve DEVELOPMENT signer"}
    assert await client.get_artifact("nope.png") is None
    assert await client.get_artifact("../../etc/passwd") is None
    metrics = await client.evaluate("art_1")
    assert set(metrics) >= {"width", "height", "brightness", "contrast", "sharpness", "colorfulness", "entropy"}
    with pytest.raises(LookupError):
        await client.evaluate("nope.png")


async def test_tools_over_the_http_client(client):
    gen = default_registry(client).get("generate_image")
    obs = await gen.run(GenerateImageArgs(prompt="x"), ToolContext(run_id="r", step_index=0, profile_name="p"))
    assert obs.data["workflow"] == "txt2img" and obs.images[0].artifact_id == "art_1"


def test_image_metrics_tell_flat_from_noisy():
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (128, 128, 128)).save(buf, format="PNG")
    flat, noisy = image_metrics(buf.getvalue()), image_metrics(png(2))
    assert flat["sharpness"] == 0 and flat["contrast"] == 0 and flat["entropy"] == 0
    assert noisy["sharpness"] > 100 and noisy["colorfulness"] > flat["colorfulness"]


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__]))
