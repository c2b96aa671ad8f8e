"""ProvenanceService: watermark then sign, verify end to end, metadata stripping, tampering."""

from __future__ import annotations

import io
import json

import c2pa
import numpy as np
import pytest

from serve.provenance import (
    GenerationInfo,
    Ingredient,
    InvalidImageError,
    ModelRef,
    ProvenanceService,
    SigningConfigError,
)
from tests.unit.serve.provenance_helpers import decode, encode, natural_image, png_change_one_pixel


class ArtifactIndexDouble:
    """Test double for the artifact store's payload -> artifact id lookup."""

    def __init__(self):
        self.by_payload: dict[str, str] = {}

    def add(self, service: ProvenanceService, artifact_id: str) -> None:
        self.by_payload[service.watermark_payload(artifact_id)] = artifact_id

    def __call__(self, payload: str) -> str | None:
        return self.by_payload.get(payload)


@pytest.fixture(scope="module")
def index():
    return ArtifactIndexDouble()


@pytest.fixture(scope="module")
def service(tmp_path_factory, index):
    return ProvenanceService(
        tmp_path_factory.mktemp("data"),
        trust_development_ca=True,
        resolve_watermark=index,
        training_mining={"ai_generative_training": "notAllowed", "ai_training": "notAllowed"},
    )


def _gen() -> GenerationInfo:
    return GenerationInfo(
        workflow={"3": {"class_type": "KSampler", "inputs": {"seed": 7}}},
        models=[ModelRef(name="demo.safetensors", sha256="cd" * 32)],
        seeds=[7],
        sampler="euler",
        steps=4,
        cfg=5.0,
        width=256,
        height=256,
    )


@pytest.fixture(scope="module")
def stamped_png(service, index):
    index.add(service, "job-1/0")
    return service.stamp(natural_image(256, 256, seed=1), "png", "job-1/0", _gen())


def test_stamp_png_is_watermarked_signed_and_trusted(service, stamped_png):
    s = stamped_png
    assert s.mime == "image/png" and (s.width, s.height) == (256, 256)
    assert s.watermark.applied and s.watermark.self_check_bit_accuracy == 1.0
    assert s.sha256 == __import__("hashlib").sha256(s.data).hexdigest()
    store = json.loads(s.manifest_json)
    gen = next(
        a["data"] for a in store["manifests"][store["active_manifest"]]["assertions"] if a["label"] == "org.genserve.generation"
    )
    assert gen["artifact_id"] == "job-1/0"
    assert gen["extra"]["watermark"] == {"method": "dwtDctSvd", "payload": service.watermark_payload("job-1/0")}

    report = service.verify(s.data)
    assert report.c2pa.present and report.c2pa.valid and report.c2pa.trusted
    assert report.pixels_changed_after_signing is False
    assert report.watermark.found and report.watermark.artifact_id == "job-1/0"
    assert report.artifact_id == "job-1/0"
    assert "cawg.training-mining" in report.c2pa.manifest.assertions


def test_signing_covers_the_watermarked_pixels(stamped_png):
    """The c2pa hash is over the final file: reading it back with c2pa's Reader validates."""
    with c2pa.Reader("image/png", io.BytesIO(stamped_png.data)) as reader:
        assert reader.get_validation_state() == "Valid"


def test_jpeg_output_and_ingredient(service, index, stamped_png):
    index.add(service, "job-2/0")
    upload = encode(natural_image(128, 128, seed=4), "JPEG")
    s = service.stamp(
        natural_image(256, 256, seed=2),
        "jpeg",
        "job-2/0",
        _gen(),
        [Ingredient(data=stamped_png.data, title="job-1.png", role="img2img_source"), Ingredient(data=upload, title="u.jpg")],
    )
    assert s.data[:3] == b"\xff\xd8\xff"
    report = service.verify(s.data)
    assert report.c2pa.trusted and report.watermark.artifact_id == "job-2/0"
    ings = report.c2pa.manifest.ingredients
    assert [(i.relationship, i.has_manifest) for i in ings] == [("inputTo", True), ("inputTo", False)]


def test_stripping_metadata_keeps_the_watermark(service, stamped_png):
    stripped = encode(decode(stamped_png.data))  # pixels only, no caBX chunk
    report = service.verify(stripped)
    assert not report.c2pa.present and report.pixels_changed_after_signing is None
    assert report.watermark.found and report.watermark.artifact_id == "job-1/0"
    assert report.artifact_id == "job-1/0"

    as_jpeg = encode(decode(stamped_png.data), "JPEG", quality=85)
    report = service.verify(as_jpeg)
    assert not report.c2pa.present and report.watermark.artifact_id == "job-1/0"


def test_one_pixel_tamper_reports_changed_pixels(service, stamped_png):
    report = service.verify(png_change_one_pixel(stamped_png.data, x=100, y=50))
    assert report.c2pa.present and not report.c2pa.valid
    assert report.pixels_changed_after_signing is True
    assert any("dataHash.mismatch" in e for e in report.c2pa.errors)
    assert report.watermark.found  # the mark still says where it came from


def test_corrupted_and_truncated_input(service, stamped_png):
    with pytest.raises(InvalidImageError):
        service.verify(stamped_png.data[: len(stamped_png.data) // 3])
    with pytest.raises(InvalidImageError):
        service.verify(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)


def test_small_images_and_float_input(service):
    small = service.stamp(natural_image(64, 64).astype(np.float32) / 255.0, "png", "job-3/0", _gen())
    assert small.watermark.applied and "scaled back" in small.watermark.reason
    tiny = service.stamp(natural_image(16, 16), "png", "job-3/1", _gen())
    assert not tiny.watermark.applied and "minimum side" in tiny.watermark.reason
    report = service.verify(tiny.data)
    assert report.c2pa.valid and not report.watermark.found  # still signed, just not marked


def test_bad_arguments(service, tmp_path, monkeypatch):
    monkeypatch.delenv("GENSERVE_C2PA_CERT", raising=False)
    monkeypatch.delenv("GENSERVE_C2PA_KEY", raising=False)
    with pytest.raises(ValueError, match="unknown output format"):
        service.stamp(natural_image(64, 64), "webp", "x", _gen())
    with pytest.raises(ValueError, match="artifact_id is required"):
        service.stamp(natural_image(64, 64), "png", "", _gen())
    with pytest.raises(SigningConfigError, match="no C2PA signing credentials"):
        ProvenanceService(tmp_path, allow_development_credentials=False)


def test_untrusted_without_the_dev_anchor(tmp_path, stamped_png):
    plain = ProvenanceService(tmp_path, watermark_method=None)
    report = plain.verify(stamped_png.data)
    assert report.c2pa.valid and not report.c2pa.trusted
    assert not report.watermark.checked


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__]))
