"""Provenance through the real routes: every output signed and watermarked, lineage, verify, S3, versions.

Runs the FastAPI app with the in-process stages on the demo models (no Ray): the same
service code the Serve ingress runs. Files are read back with c2pa-python's own Reader.
"""

from __future__ import annotations

import copy
import io
import json

import c2pa
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from serve.config import AppArgs
from serve.service import GenServeService
from tests.utils import local_app
from tests.utils.local_app import make_replica
from tests.utils.workflows import example, txt2img

TRAINED = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"


def make_client(args: AppArgs, backends) -> tuple[TestClient, GenServeService]:
    return make_replica(args, backends, run_jobs=True)


@pytest.fixture(scope="module")
def backends(demo_models_dir):
    from deployments.inprocess import build_inprocess_backends

    return build_inprocess_backends(demo_models_dir)


@pytest.fixture(scope="module")
def env(demo_models_dir, backends, tmp_path_factory):
    from serve.demo_inputs import write_example_inputs

    data = tmp_path_factory.mktemp("prov-data")
    write_example_inputs(data / "input")
    args = AppArgs(data_dir=str(data), models_dir=str(demo_models_dir), trust_development_ca=True)
    client, service = make_client(args, backends)
    with client:
        yield client, service


def wait_done(client: TestClient, pid: str, timeout: float = 120) -> dict:
    return local_app.wait_finished(client, pid, timeout)


def read_c2pa(data: bytes, anchors: bytes | None = None) -> tuple[str, dict]:
    ctx = c2pa.Context.from_dict({"trust": {"trust_anchors": anchors.decode()}} if anchors else {})
    with c2pa.Reader("image/png", io.BytesIO(data), context=ctx) as reader:
        return reader.get_validation_state(), json.loads(reader.json())


def generation_assertion(data: bytes) -> dict:
    from serve.provenance.signer import read_manifest_store

    with c2pa.Reader("image/png", io.BytesIO(data)) as reader:
        store = read_manifest_store(reader)
    manifest = store["manifests"][store["active_manifest"]]
    return next(a["data"] for a in manifest["assertions"] if a["label"] == "org.genserve.generation")


def view(client: TestClient, img: dict) -> bytes:
    r = client.get("/view", params={"filename": img["filename"], "subfolder": img["subfolder"], "type": img["type"]})
    assert r.status_code == 200, r.text
    return r.content


def test_saved_and_preview_images_are_signed_and_watermarked(env):
    client, service = env
    wf = txt2img(seed=9, steps=3, size=128)
    wf["10"] = {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}}
    pid = client.post("/prompt", json={"prompt": wf}).json()["prompt_id"]
    job = wait_done(client, pid)
    assert job["status"] == "success", job
    for node in ("9", "10"):
        data = view(client, job["outputs"][node]["images"][0])
        state, store = read_c2pa(data)
        assert state == "Valid"
        manifest = store["manifests"][store["active_manifest"]]
        created = manifest["assertions"][0]["data"]["actions"][0]
        assert created["action"] == "c2pa.created" and created["digitalSourceType"] == TRAINED
        assert created["softwareAgent"]["name"] == "genserve"
        state, _ = read_c2pa(data, anchors=service.provenance.credentials.trust_anchor_pem)
        assert state == "Trusted"
        gen = generation_assertion(data)
        assert gen["workflow_hash"] == job["workflow_hash"] and gen["seeds"] == [9]
        assert gen["sampler"] == "euler" and gen["steps"] == 3 and gen["width"] == 128
        ckpt = next(m for m in gen["models"] if m["kind"] == "checkpoint")
        assert ckpt["name"] == "genserve-demo-sd15.safetensors" and len(ckpt["sha256"]) == 64
        report = client.post("/v1/verify", files={"image": ("x.png", data, "image/png")}).json()
        assert report["watermark"]["found"] is True
        assert report["watermark"]["artifact_id"] == gen["artifact_id"]


def test_native_sync_route_images_are_signed(env):
    client, _ = env
    r = client.post("/v1/workflows/run", json={"workflow": txt2img(seed=3, steps=2, size=64)})
    assert r.status_code == 200, r.text
    import base64

    data = base64.b64decode(r.json()["images"][0]["data_base64"])
    assert read_c2pa(data)[0] == "Valid"
    art = client.get(f"/v1/artifacts/{r.json()['images'][0]['artifact_id']}").json()
    assert art["sha256"] and art["seeds"] == [3]


def test_controlnet_lineage_shows_the_control_image_as_parent(env):
    client, _ = env
    pose = (Image.open(io.BytesIO(client.get("/view", params={"filename": "example_pose.png", "type": "input"}).content)))
    buf = io.BytesIO()
    pose.save(buf, format="PNG")
    up = client.post("/upload/image", files={"image": ("my_pose.png", buf.getvalue(), "image/png")}).json()
    wf = example("controlnet_pose")
    wf["10"]["inputs"]["image"] = up["name"]
    wf["3"]["inputs"]["steps"] = 2
    wf["5"]["inputs"].update(width=128, height=128)
    pid = client.post("/prompt", json={"prompt": wf}).json()["prompt_id"]
    job = wait_done(client, pid)
    assert job["status"] == "success", job
    img = job["outputs"]["9"]["images"][0]
    arts = client.get("/v1/artifacts", params={"prompt_id": pid}).json()["data"]
    out = next(a for a in arts if a["filename"] == img["filename"])
    upload = client.get("/v1/artifacts", params={"kind": "input"}).json()["data"]
    pose_art = next(a for a in upload if a["filename"] == up["name"])
    assert out["parents"] == [pose_art["id"]]
    lineage = client.get(f"/v1/artifacts/{out['id']}/lineage").json()
    assert {"from": pose_art["id"], "to": out["id"], "relationship": "inputTo"} in lineage["edges"]
    # the reverse direction: the upload's lineage lists the output as a child
    assert out["id"] in {e["to"] for e in client.get(f"/v1/artifacts/{pose_art['id']}/lineage").json()["edges"]}
    # and the manifest names it as an ingredient with relationship inputTo
    _, store = read_c2pa(view(client, img))
    ingredients = store["manifests"][store["active_manifest"]]["ingredients"]
    assert [i["relationship"] for i in ingredients] == ["inputTo"] and ingredients[0]["title"] == up["name"]
    manifest = client.get(f"/v1/artifacts/{out['id']}/manifest").json()
    assert manifest["active_manifest"]


def test_tampering_one_pixel_is_reported_and_stripped_metadata_keeps_the_watermark(env):
    client, _ = env
    r = client.post("/v1/workflows/run", json={"workflow": txt2img(seed=21, steps=3, size=256), "include_data": False}).json()
    img = r["images"][0]
    data = view(client, img)
    from tests.unit.serve.provenance_helpers import png_change_one_pixel

    tampered = png_change_one_pixel(data)
    report = client.post("/v1/verify", files={"image": ("t.png", tampered, "image/png")}).json()
    assert report["pixels_changed_after_signing"] is True
    assert report["c2pa"]["valid"] is False
    stripped = io.BytesIO()
    Image.open(io.BytesIO(data)).convert("RGB").save(stripped, format="PNG")  # pixels only, no manifest
    report = client.post("/v1/verify", files={"image": ("s.png", stripped.getvalue(), "image/png")}).json()
    assert report["c2pa"]["present"] is False
    assert report["watermark"]["found"] is True and report["watermark"]["artifact_id"] == img["artifact_id"]


@pytest.mark.parametrize("payload", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00"])
def test_verify_rejects_unreadable_images(env, payload):
    client, _ = env
    r = client.post("/v1/verify", files={"image": ("bad.png", payload, "image/png")})
    assert r.status_code == 400 and "PNG or JPEG" in r.json()["detail"]


def test_workflow_versions_run_by_ref_and_recorded(env):
    client, _ = env
    wf = txt2img(seed=1, steps=2, size=64)
    first = client.post("/v1/workflows", json={"name": "demo-txt2img", "workflow": wf})
    assert first.status_code == 201 and first.json()["ref"] == "demo-txt2img@1"
    again = client.post("/v1/workflows", json={"name": "demo-txt2img", "workflow": wf})
    assert again.status_code == 200 and again.json()["version"] == 1
    wf2 = copy.deepcopy(wf)
    wf2["3"]["inputs"]["cfg"] = 4.0
    assert client.post("/v1/workflows", json={"name": "demo-txt2img", "workflow": wf2}).json()["ref"] == "demo-txt2img@2"
    bad = txt2img()
    bad["3"]["inputs"]["steps"] = 0
    assert client.post("/v1/workflows", json={"name": "broken", "workflow": bad}).status_code == 400
    r = client.post("/v1/workflows/run", json={"workflow_ref": "demo-txt2img@1", "overrides": {"3": {"seed": 77}}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["workflow_ref"] == "demo-txt2img@1"
    art = client.get(f"/v1/artifacts/{body['images'][0]['artifact_id']}").json()
    assert art["workflow_ref"] == "demo-txt2img@1" and art["seeds"] == [77]
    listed = client.get("/v1/artifacts", params={"workflow_hash": art["workflow_hash"]}).json()
    assert art["id"] in {a["id"] for a in listed["data"]}
    assert client.post("/v1/workflows/run", json={"workflow_ref": "nope@3"}).status_code == 404
    assert client.get("/v1/workflows/demo-txt2img").json()["version"] == 2


def test_s3_artifact_store_over_http(demo_models_dir, backends, moto_endpoint, tmp_path, monkeypatch):
    import boto3

    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    args = AppArgs(data_dir=str(tmp_path), models_dir=str(demo_models_dir), artifact_store="s3://genserve-test/outputs",
                   s3_endpoint_url=moto_endpoint)
    client, _ = make_client(args, backends)
    with client:
        r = client.post("/v1/workflows/run", json={"workflow": txt2img(seed=5, steps=2, size=64), "include_data": False})
        assert r.status_code == 200, r.text
        img = r.json()["images"][0]
        data = view(client, img)
        assert read_c2pa(data)[0] == "Valid"
    s3 = boto3.client("s3", endpoint_url=moto_endpoint)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="genserve-test")["Contents"]]
    import hashlib

    assert f"outputs/{hashlib.sha256(data).hexdigest()}" in keys


def test_unreachable_s3_fails_the_job_clearly_and_records_nothing(demo_models_dir, backends, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    args = AppArgs(data_dir=str(tmp_path), models_dir=str(demo_models_dir), artifact_store="s3://nowhere/x",
                   s3_endpoint_url=f"http://127.0.0.1:{dead_port}")
    with pytest.raises(Exception, match="(?i)s3|endpoint|connect"):
        make_client(args, backends)  # the bucket check at start-up fails loudly



def test_s3_outage_mid_operation_fails_the_job_and_records_no_artifact(demo_models_dir, backends, moto_endpoint, tmp_path, monkeypatch):
    from serve.stores.artifacts import S3BlobStore

    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    args = AppArgs(data_dir=str(tmp_path), models_dir=str(demo_models_dir), artifact_store="s3://genserve-outage/x",
                   s3_endpoint_url=moto_endpoint)
    client, service = make_client(args, backends)
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    # the store goes away after start-up
    service.artifacts.blobs = S3BlobStore("genserve-outage", endpoint_url=f"http://127.0.0.1:{dead_port}", prefix="x/",
                                          connect_timeout=1, max_attempts=1)
    with client:
        pid = client.post("/prompt", json={"prompt": txt2img(seed=8, steps=2, size=64)}).json()["prompt_id"]
        job = wait_done(client, pid)
        assert job["status"] == "error"
        assert job["error"]["node_id"] == "9" and "s3" in job["error"]["message"].lower()
        assert client.get("/v1/artifacts", params={"prompt_id": pid}).json()["count"] == 0


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__]))
