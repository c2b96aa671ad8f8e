"""C2PA signing read back with c2pa-python's own Reader, tampering, foreign/broken manifests, bad input."""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import json

import c2pa
import pytest

from serve.provenance.constants import TRAINED_ALGORITHMIC_MEDIA
from serve.provenance.keys import ensure_dev_credentials, generate_dev_ca, load_credentials
from serve.provenance.models import GenerationInfo, Ingredient, ModelRef, workflow_hash
from serve.provenance.signer import C2paSigner, InvalidImageError, SigningError, verify_c2pa
from tests.unit.serve.provenance_helpers import (
    encode,
    jpeg_change_scan_byte,
    natural_image,
    png_change_one_pixel,
    png_corrupt_manifest,
)

WORKFLOW = {
    "3": {"class_type": "KSampler", "inputs": {"seed": 42, "steps": 20, "cfg": 7.0, "model": ["4", 0]}},
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "demo.safetensors"}},
}


@pytest.fixture(scope="module")
def creds(tmp_path_factory):
    return ensure_dev_credentials(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def signer(creds):
    return C2paSigner(creds, training_mining={"cawg.ai_generative_training": "notAllowed"})


def _generation(**kw) -> GenerationInfo:
    return GenerationInfo(
        artifact_id="art-1",
        workflow=WORKFLOW,
        models=[ModelRef(name="demo.safetensors", sha256="ab" * 32, kind="checkpoint")],
        seeds=[42, 1234567],
        sampler="euler",
        scheduler="normal",
        steps=20,
        cfg=7.0,
        width=128,
        height=128,
        **kw,
    )


def _read(data: bytes, mime: str, anchors: bytes | None = None) -> tuple[str, dict]:
    ctx = c2pa.Context.from_dict({"trust": {"trust_anchors": anchors.decode()}} if anchors else {})
    with c2pa.Reader(mime, io.BytesIO(data), context=ctx) as reader:
        return reader.get_validation_state(), json.loads(reader.json())


@pytest.mark.parametrize("fmt, mime", [("PNG", "image/png"), ("JPEG", "image/jpeg")])
def test_signed_image_reads_back_with_c2pa_reader(signer, creds, fmt, mime):
    src = encode(natural_image(128, 128), fmt)
    signed = signer.sign(src, mime, _generation())

    state, store = _read(signed, mime)
    assert state == "Valid"  # no trust anchor: well-formed and correctly signed, signer unknown
    manifest = store["manifests"][store["active_manifest"]]
    labels = [a["label"] for a in manifest["assertions"]]
    assert labels[0].startswith("c2pa.actions")
    assert "org.genserve.generation" in labels and "cawg.training-mining" in labels
    created = manifest["assertions"][0]["data"]["actions"][0]
    assert created["action"] == "c2pa.created"
    assert created["digitalSourceType"] == TRAINED_ALGORITHMIC_MEDIA
    assert created["softwareAgent"]["name"] == "genserve"
    gen = next(a["data"] for a in manifest["assertions"] if a["label"] == "org.genserve.generation")
    assert gen["workflow_hash"] == workflow_hash(WORKFLOW)
    assert gen["models"][0]["sha256"] == "ab" * 32 and gen["steps"] == 20 and gen["cfg"] == 7.0
    assert manifest["signature_info"]["common_name"] == "genserve DEVELOPMENT signer"

    state, _ = _read(signed, mime, anchors=creds.trust_anchor_pem)
    assert state == "Trusted"


@pytest.mark.parametrize("key_type, alg", [("rsa", "ps256"), ("ed25519", "ed25519")])
def test_ps256_and_ed25519_sign_and_validate(key_type, alg):
    ca, _, chain, key = generate_dev_ca(signer_key_type=key_type)
    creds = load_credentials(chain, key)
    assert creds.alg == alg
    signed = C2paSigner(creds).sign(encode(natural_image(64, 64)), "image/png", _generation())
    state, store = _read(signed, "image/png", anchors=ca)
    assert state == "Trusted"
    assert store["manifests"][store["active_manifest"]]["signature_info"]["alg"].lower() == alg


def test_verify_report_and_int_arrays_survive(signer, creds):
    signed = signer.sign(encode(natural_image(64, 64)), "image/png", _generation())
    report = verify_c2pa(signed, creds.trust_anchor_pem)
    assert report.c2pa.present and report.c2pa.valid and report.c2pa.trusted
    assert report.c2pa.validation_state == "Trusted" and report.c2pa.errors == []
    assert report.pixels_changed_after_signing is False
    assert report.artifact_id == "art-1"
    gen = report.c2pa.manifest.generation
    # c2pa-rs#2570: Reader.json() would show [42, 1234567] as a truncated byte string.
    assert gen["seeds"] == [42, 1234567]
    assert gen["workflow"] == WORKFLOW

    untrusted = verify_c2pa(signed)
    assert untrusted.c2pa.valid and not untrusted.c2pa.trusted
    assert any(e.startswith("signingCredential.untrusted") for e in untrusted.c2pa.errors)


def test_ingredients_input_to_and_nested_manifest_kept(signer):
    parent = signer.sign(encode(natural_image(64, 64, seed=1)), "image/png", _generation())
    plain = encode(natural_image(64, 64, seed=2), "JPEG")
    signed = signer.sign(
        encode(natural_image(64, 64)),
        "image/png",
        _generation(),
        [
            Ingredient(data=parent, title="control.png", role="control_image"),
            Ingredient(data=plain, title="upload.jpg", role="img2img_source"),
        ],
    )
    state, store = _read(signed, "image/png")
    assert state == "Valid"
    assert len(store["manifests"]) == 2  # the ingredient's own manifest travels with ours
    ings = store["manifests"][store["active_manifest"]]["ingredients"]
    assert [i["relationship"] for i in ings] == ["inputTo", "inputTo"]
    assert ings[0]["active_manifest"] in store["manifests"]
    assert "active_manifest" not in ings[1]

    summary = verify_c2pa(signed).c2pa.manifest
    assert [(i.title, i.has_manifest, i.description) for i in summary.ingredients] == [
        ("control.png", True, "control_image"),
        ("upload.jpg", False, "img2img_source"),
    ]


def test_one_pixel_change_after_signing_is_a_hash_mismatch(signer):
    signed = signer.sign(encode(natural_image(64, 64)), "image/png", _generation())
    tampered = png_change_one_pixel(signed)
    report = verify_c2pa(tampered)
    assert report.c2pa.present and not report.c2pa.valid
    assert report.pixels_changed_after_signing is True
    assert any(e.startswith("assertion.dataHash.mismatch") for e in report.c2pa.errors)
    assert report.artifact_id is None  # an invalid manifest points nowhere


def test_jpeg_scan_change_after_signing_is_a_hash_mismatch(signer):
    signed = signer.sign(encode(natural_image(64, 64), "JPEG", quality=95), "image/jpeg", _generation())
    report = verify_c2pa(jpeg_change_scan_byte(signed))
    assert report.pixels_changed_after_signing is True and not report.c2pa.valid


def test_broken_manifest_is_reported_invalid(signer):
    signed = signer.sign(encode(natural_image(64, 64)), "image/png", _generation())
    report = verify_c2pa(png_corrupt_manifest(signed))
    assert report.c2pa.present and not report.c2pa.valid and report.c2pa.errors


def test_foreign_manifest_is_valid_but_not_trusted(signer, creds, tmp_path):
    foreign = C2paSigner(ensure_dev_credentials(tmp_path))
    signed = foreign.sign(encode(natural_image(64, 64)), "image/png", _generation())
    report = verify_c2pa(signed, creds.trust_anchor_pem)  # our anchors, someone else's CA
    assert report.c2pa.valid and not report.c2pa.trusted


def test_unsigned_image_has_no_manifest():
    report = verify_c2pa(encode(natural_image(64, 64)))
    assert not report.c2pa.present and report.pixels_changed_after_signing is None


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "no known image format"),
        (b"hello, not an image", "no known image format"),
        (b"GIF89a" + b"\x00" * 20, "image/gif"),
    ],
)
def test_verify_rejects_non_images(data, message):
    with pytest.raises(InvalidImageError, match=message):
        verify_c2pa(data)


def test_verify_rejects_truncated_and_corrupted(signer):
    signed = signer.sign(encode(natural_image(64, 64)), "image/png", _generation())
    with pytest.raises(InvalidImageError, match="corrupted or truncated"):
        verify_c2pa(signed[: len(signed) // 2])
    jpeg = encode(natural_image(64, 64), "JPEG")
    with pytest.raises(InvalidImageError, match="corrupted or truncated"):
        verify_c2pa(jpeg[:40])


def test_sign_refuses_bad_input(signer):
    png = encode(natural_image(32, 32))
    with pytest.raises(SigningError, match="not image/jpeg"):
        signer.sign(png, "image/jpeg", _generation())
    with pytest.raises(SigningError, match="genserve signs"):
        signer.sign(png, "image/webp", _generation())
    with pytest.raises(SigningError, match="unknown image format"):
        signer.sign(png, "image/png", _generation(), [Ingredient(data=b"junk", title="x")])


def test_expired_credentials_at_sign_time_never_yield_an_image(creds):
    signer = C2paSigner(creds)
    _, _, chain, key = generate_dev_ca(now=dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=500), signer_days=30)
    signer.credentials = dataclasses.replace(creds, cert_chain_pem=chain, private_key_pem=key)
    with pytest.raises(SigningError, match="refusing to sign.*expired"):
        signer.sign(encode(natural_image(32, 32)), "image/png", _generation())


def test_mismatched_key_is_caught_by_c2pa_too(creds):
    """Even past our own check, c2pa refuses a key that does not match the certificate."""
    signer = C2paSigner(creds)
    other_key = generate_dev_ca()[3]
    signer.credentials = dataclasses.replace(creds, private_key_pem=other_key)
    with pytest.raises(SigningError):
        signer.sign(encode(natural_image(32, 32)), "image/png", _generation())


def test_generation_info_and_training_mining_are_checked(creds):
    with pytest.raises(ValueError, match="does not match the workflow"):
        GenerationInfo(workflow=WORKFLOW, workflow_hash="0" * 64)
    with pytest.raises(ValueError, match="unknown training-mining entry"):
        C2paSigner(creds, training_mining={"bogus": "allowed"})
    with pytest.raises(ValueError, match="must be one of"):
        C2paSigner(creds, training_mining={"ai_training": "maybe"})


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__]))
