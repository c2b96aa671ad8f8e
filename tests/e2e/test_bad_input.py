"""Bad input over HTTP: clear ComfyUI-shaped errors or 4xx, and nothing stored is lost."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from tests.utils.workflows import txt2img


def png_bytes(size=(32, 32), color=(200, 10, 10)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def test_malformed_json_body_is_400_invalid_prompt(serve_env):
    with serve_env.client() as c:
        r = c.post("/prompt", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_prompt"


def test_missing_prompt_is_400_no_prompt(serve_env):
    with serve_env.client() as c:
        r = c.post("/prompt", json={"client_id": "x"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "no_prompt"


def test_unknown_node_is_400_missing_node_type(serve_env):
    wf = txt2img()
    wf["50"] = {"class_type": "NotANode", "inputs": {}}
    with serve_env.client() as c:
        r = c.post("/prompt", json={"prompt": wf})
    assert r.status_code == 400 and r.json()["error"]["type"] == "missing_node_type"


def test_out_of_range_value_is_400_with_node_errors(serve_env):
    wf = txt2img()
    wf["3"]["inputs"]["denoise"] = 1.5
    with serve_env.client() as c:
        r = c.post("/prompt", json={"prompt": wf})
    body = r.json()
    assert r.status_code == 400
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    assert body["node_errors"]["3"]["errors"][0]["type"] == "value_bigger_than_max"


def test_missing_model_file_is_400_value_not_in_list(serve_env):
    wf = txt2img()
    wf["4"]["inputs"]["ckpt_name"] = "sd_xl_base_1.0.safetensors"
    with serve_env.client() as c:
        r = c.post("/prompt", json={"prompt": wf})
    assert r.status_code == 400
    assert r.json()["node_errors"]["4"]["errors"][0]["type"] == "value_not_in_list"


@pytest.mark.parametrize("params", [
    {"filename": "../genserve.db", "type": "output"},
    {"filename": "x.png", "subfolder": "../../", "type": "output"},
    {"filename": "/etc/passwd", "type": "output"},
    {"filename": "x.png", "type": "../input"},
    {"filename": "..\\..\\genserve.db", "type": "output"},
])
def test_view_path_traversal_is_refused(serve_env, params):
    with serve_env.client() as c:
        r = c.get("/view", params=params)
    assert r.status_code == 400, r.text


def test_view_missing_file_is_404(serve_env):
    with serve_env.client() as c:
        assert c.get("/view", params={"filename": "nope.png"}).status_code == 404


def test_upload_then_use_in_a_workflow(serve_env):
    with serve_env.client() as c:
        r = c.post("/upload/image", files={"image": ("mine.png", png_bytes((64, 64)), "image/png")})
        assert r.status_code == 200, r.text
        name = r.json()["name"]
        assert name in c.get("/object_info/LoadImage").json()["LoadImage"]["input"]["required"]["image"][0]
        assert c.get("/view", params={"filename": name, "type": "input"}).content == png_bytes((64, 64))


@pytest.mark.parametrize("name,subfolder", [("../evil.png", ""), ("ok.png", "../../x"), ("ok.png", "/abs")])
def test_upload_path_traversal_is_refused_or_neutralised(serve_env, name, subfolder):
    with serve_env.client() as c:
        r = c.post("/upload/image", files={"image": (name, png_bytes(), "image/png")}, data={"subfolder": subfolder})
    if r.status_code == 200:
        # a directory part in the *filename* is dropped (basename), never followed
        assert "/" not in r.json()["name"] and ".." not in r.json()["subfolder"]
        assert not (serve_env.data_dir / "evil.png").exists()
    else:
        assert r.status_code == 400
    assert not (serve_env.data_dir.parent / "evil.png").exists()


def test_non_image_upload_is_415(serve_env):
    with serve_env.client() as c:
        r = c.post("/upload/image", files={"image": ("notes.png", b"this is not an image", "image/png")})
    assert r.status_code == 415


def test_oversized_upload_is_413(serve_env):
    big = b"\x89PNG" + b"0" * (21 * 1024 * 1024)
    with serve_env.client() as c:
        r = c.post("/upload/image", files={"image": ("big.png", big, "image/png")})
    assert r.status_code == 413


def test_upload_with_same_name_keeps_the_first_file(serve_env):
    with serve_env.client() as c:
        first = c.post("/upload/image", files={"image": ("dup.png", png_bytes(color=(1, 2, 3)), "image/png")}).json()
        second = c.post("/upload/image", files={"image": ("dup.png", png_bytes(color=(9, 9, 9)), "image/png")}).json()
    assert first["name"] == "dup.png" and second["name"] != "dup.png"
    assert (serve_env.data_dir / "input" / "dup.png").read_bytes() == png_bytes(color=(1, 2, 3))


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__]))
