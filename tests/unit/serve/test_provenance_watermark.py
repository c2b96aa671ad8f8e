"""Invisible watermark: payload round trip, small images, unmarked images, common edits."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from serve.provenance.watermark import (
    MIN_SIDE,
    Watermarker,
    WatermarkError,
    detection_threshold,
    hex_to_payload_bits,
    work_size,
)
from tests.unit.serve.provenance_helpers import decode, encode, natural_image


@pytest.fixture(scope="module")
def wm():
    return Watermarker("dwtDctSvd")


def test_payload_is_a_stable_sha256_prefix(wm):
    p = wm.payload_for("job-1/0")
    assert p == wm.payload_for("job-1/0") and len(p) == 8
    assert p != wm.payload_for("job-1/1")
    assert len(Watermarker(payload_bits=64).payload_for("x")) == 12  # 48 id + 16 check bits
    assert len(Watermarker("rivaGan").payload_for("x")) == 6  # 24 id + 8 check bits


@pytest.mark.parametrize("shape", [(256, 256), (200, 320), (128, 128), (64, 96)])
def test_embed_and_extract_round_trip(wm, shape):
    img = natural_image(*shape)
    payload = wm.payload_for(f"art-{shape}")
    marked, result = wm.embed(img, payload)
    assert result.applied and result.self_check_bit_accuracy == 1.0
    assert marked.shape == img.shape and marked.dtype == np.uint8
    assert result.psnr_db > 34  # invisible: the fixed band order keeps PSNR high
    reading = wm.extract(marked)
    assert reading.found and reading.payload_hex == payload
    if shape[0] * shape[1] < 256 * 256:
        assert "scaled back" in result.reason


def test_unmarked_image_is_not_found(wm):
    for seed in range(3):
        assert not wm.extract(natural_image(256, 256, seed=seed)).found
    flat = np.full((256, 256, 3), 128, np.uint8)
    reading = wm.extract(flat)
    assert not reading.found  # flat images decode to a degenerate payload


def test_tiny_image_is_left_unmarked_with_a_reason(wm):
    img = natural_image(MIN_SIDE - 1, 100)
    out, result = wm.embed(img, wm.payload_for("tiny"))
    assert not result.applied and "minimum side" in result.reason
    assert np.array_equal(out, img)
    assert not wm.extract(img).found


def test_survives_jpeg_and_metadata_loss(wm):
    img = natural_image(512, 512, seed=5)
    payload = wm.payload_for("art-jpeg")
    marked, _ = wm.embed(img, payload)
    recompressed = decode(encode(marked, "JPEG", quality=75))
    reading = wm.extract(recompressed)
    assert reading.found and reading.payload_hex == payload


def test_found_after_downscale_by_rescale_search(wm):
    img = natural_image(512, 512, seed=6)
    payload = wm.payload_for("art-resize")
    marked, _ = wm.embed(img, payload)
    half = cv2.resize(marked, (256, 256), interpolation=cv2.INTER_AREA)
    reading = wm.extract(half)
    assert reading.found and reading.payload_hex == payload and reading.scale == 2.0


def test_bad_configuration_and_payload():
    with pytest.raises(WatermarkError, match="unknown watermark method"):
        Watermarker("dwtDct")
    with pytest.raises(WatermarkError, match="exactly 32 bits"):
        Watermarker("rivaGan", payload_bits=48)
    with pytest.raises(WatermarkError, match="multiple of 8"):
        Watermarker(payload_bits=30)
    with pytest.raises(WatermarkError, match="has 16 bits"):
        hex_to_payload_bits("abcd", 32)
    with pytest.raises(WatermarkError, match="has 24 bits"):
        Watermarker().embed(natural_image(64, 64), "abcdef")
    with pytest.raises(WatermarkError, match="not hex"):
        Watermarker().embed(natural_image(64, 64), "zzzzzzzz")
    with pytest.raises(TypeError, match="uint8"):
        Watermarker().embed(np.zeros((64, 64, 3), np.float32), "01020304")


def test_batched_reader_matches_imwatermark_decoder(wm):
    from imwatermark.dwtDctSvd import EmbedDwtDctSvd

    marked, _ = wm.embed(natural_image(256, 256, seed=9), wm.payload_for("same-votes"))
    bgr = cv2.cvtColor(decode(encode(marked, "JPEG", quality=60)), cv2.COLOR_RGB2BGR)
    theirs = EmbedDwtDctSvd([], wmLen=48, scales=[0, 36, 0], block=4).decode(bgr)
    ours, _, _ = wm._read_bits(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), 1.0)
    assert np.array_equal(np.asarray(theirs, dtype=np.uint8), ours)


def test_damaged_read_is_not_found_rather_than_wrong(wm):
    """Crops scramble the bit layout: the check bits must turn that into "not found"."""
    marked, _ = wm.embed(natural_image(512, 512, seed=3), wm.payload_for("crop"))
    reading = wm.extract(marked[25:-25, 25:-25])
    assert not reading.found and reading.reason


def test_work_size_and_threshold_are_deterministic():
    assert work_size(512, 512) == (512, 512)
    h, w = work_size(64, 96)
    assert h * w >= 256 * 256 and h % 8 == 0 and w % 8 == 0
    assert detection_threshold(128, 32) < detection_threshold(8, 32) < 1.0


def test_rivagan_runs_from_the_shipped_onnx_weights():
    import onnxruntime  # noqa: F401 - a [dev] dependency; rivaGan runs on it
    wm = Watermarker("rivaGan", self_check=False)
    img = natural_image(128, 128, noise=30)
    marked, result = wm.embed(img, wm.payload_for("riva"))
    assert result.applied and marked.shape == img.shape
    assert wm.extract(marked).payload_hex is not None


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__]))
