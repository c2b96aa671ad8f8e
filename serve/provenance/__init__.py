"""Provenance for every output: invisible watermark, then an embedded, signed C2PA manifest.

`ProvenanceService` is the one entry point the rest of genserve uses (plain Python, no Ray,
no FastAPI; routes and the artifact store's write path call it):

* `ProvenanceService.stamp` watermarks the pixels with a key derived from the artifact id,
  encodes PNG/JPEG, and signs the encoded bytes. NOTE: the order matters: signing comes
  last so the manifest's hash covers the final bytes; any later change (even one pixel)
  shows up as ``pixels_changed_after_signing``.
* `ProvenanceService.verify` reports the C2PA state (present/valid/trusted, manifest summary),
  the watermark (found, payload, the artifact it points to) and whether the signed bytes
  were changed.

Mapping a watermark payload back to an artifact needs a lookup the caller owns (the job or
artifact store): pass ``resolve_watermark(payload_hex) -> artifact_id | None``. Payloads are
short (32 id bits by default), so treat a resolution as "points to", confirmed by the manifest
when one is present. `verify` also looks up the id part of a read whose check bits failed;
an exact hit there is reported as found (a chance hit has probability artifacts / 2**32).

Usage::

    svc = ProvenanceService(data_dir="data")   # dev CA on first run unless GENSERVE_C2PA_* set
    stamped = svc.stamp(rgb, fmt="png", artifact_id="job1-0", generation=GenerationInfo(...))
    report = svc.verify(stamped.data)
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import time
from typing import Callable, Iterable, Mapping

import numpy as np

from serve.provenance.keys import (
    SignerCredentials,
    SigningConfigError,
    load_trust_anchors,
    resolve_credentials,
)
from serve.provenance.models import (
    GenerationInfo,
    Ingredient,
    ModelRef,
    StampedImage,
    VerifyReport,
    WatermarkReport,
)
from serve.provenance.signer import (
    C2paSigner,
    InvalidImageError,
    SigningError,
    read_manifest_store,
    verify_c2pa_with_image,
)
from serve.provenance.watermark import Watermarker, WatermarkError

logger = logging.getLogger(__name__)

__all__ = [
    "GenerationInfo",
    "Ingredient",
    "InvalidImageError",
    "ModelRef",
    "ProvenanceService",
    "SignerCredentials",
    "SigningConfigError",
    "SigningError",
    "StampedImage",
    "VerifyReport",
    "WatermarkError",
]

_FORMATS = {"png": "image/png", "jpeg": "image/jpeg", "jpg": "image/jpeg"}


def _to_uint8_rgb(image) -> np.ndarray:
    """PIL image, uint8 array, or float array in [0, 1] (ComfyUI IMAGE layout, HxWxC) -> HxWx3 uint8."""
    if not isinstance(image, np.ndarray):
        if hasattr(image, "convert"):
            return np.asarray(image.convert("RGB"))
        raise TypeError(f"expected a PIL image or numpy array, got {type(image).__name__}")
    arr = image
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if np.issubdtype(arr.dtype, np.floating):
        arr = np.clip(np.rint(arr * 255.0), 0, 255).astype(np.uint8)
    if arr.dtype != np.uint8:
        raise TypeError(f"expected uint8 or float pixels, got {arr.dtype}")
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise TypeError(f"expected an HxWx3 image, got shape {arr.shape}")
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    return np.ascontiguousarray(arr[:, :, :3])


class ProvenanceService:
    """Watermarks and signs outputs, and verifies images.

    Args:
        data_dir (`str` or `PathLike`): data folder (the dev CA goes to ``<data_dir>/c2pa``).
        watermark_method (`str`, *optional*, defaults to ``"dwtDctSvd"``): see `watermark` module;
            ``None`` disables the watermark.
        credentials (`SignerCredentials`, *optional*): signing credentials; default: env
            ``GENSERVE_C2PA_CERT``/``GENSERVE_C2PA_KEY``, else the development CA.
        trust_anchors_pem (`bytes`, *optional*): roots trusted by `verify`; default: env
            ``GENSERVE_C2PA_TRUST_ANCHORS``.
        trust_development_ca (`bool`, *optional*, defaults to False): also trust the dev CA
            when signing with it (a local convenience; reports still say it is a dev CA).
        resolve_watermark (`Callable[[str], str | None]`, *optional*): payload hex -> artifact id.
        training_mining (`dict[str, str]`, *optional*): CAWG training/mining entries to assert.
        jpeg_quality (`int`, *optional*, defaults to 95): quality of JPEG outputs.
        thumbnail (`bool`, *optional*, defaults to False): embed a C2PA thumbnail.
        allow_development_credentials (`bool`, *optional*, defaults to True): False refuses the dev CA.
        watermark_payload_bits (`int`, *optional*): embedded watermark bits; defaults to the
            method's (48 for dwtDctSvd, 32 for rivaGan), see `Watermarker`.

    Raises:
        SigningConfigError: if credentials are missing/unfit (never signs with bad ones).
        WatermarkError: for an unknown watermark method.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike,
        watermark_method: str | None = "dwtDctSvd",
        credentials: SignerCredentials | None = None,
        trust_anchors_pem: bytes | None = None,
        trust_development_ca: bool = False,
        resolve_watermark: Callable[[str], str | None] | None = None,
        training_mining: Mapping[str, str] | None = None,
        jpeg_quality: int = 95,
        thumbnail: bool = False,
        allow_development_credentials: bool = True,
        watermark_payload_bits: int | None = None,
    ):
        self.data_dir = os.fspath(data_dir)
        self.credentials = credentials or resolve_credentials(
            self.data_dir, allow_development=allow_development_credentials
        )
        self.signer = C2paSigner(self.credentials, training_mining=training_mining, thumbnail=thumbnail)
        self.watermarker = Watermarker(watermark_method, payload_bits=watermark_payload_bits) if watermark_method else None
        anchors = load_trust_anchors(trust_anchors_pem)
        if trust_development_ca and self.credentials.is_development and self.credentials.trust_anchor_pem:
            anchors = (anchors or b"") + self.credentials.trust_anchor_pem
        self.trust_anchors_pem = anchors
        self.resolve_watermark = resolve_watermark
        if not 1 <= jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be in [1, 100], got {jpeg_quality}")
        self.jpeg_quality = jpeg_quality

    def watermark_payload(self, artifact_id: str) -> str | None:
        """The watermark payload (hex) `stamp` embeds for ``artifact_id``; None when watermarking is off.

        Store it next to the artifact so ``resolve_watermark`` can map it back.
        """
        return self.watermarker.payload_for(artifact_id) if self.watermarker else None

    def stamp(
        self,
        image,
        fmt: str = "png",
        artifact_id: str = "",
        generation: GenerationInfo | None = None,
        ingredients: Iterable[Ingredient] = (),
    ) -> StampedImage:
        """Watermarks, encodes and signs one output image.

        Args:
            image (`np.ndarray` or `PIL.Image.Image`): RGB pixels (uint8, or float in [0, 1]).
            fmt (`str`, *optional*, defaults to ``"png"``): ``"png"`` or ``"jpeg"``.
            artifact_id (`str`): the output's id; its hash is the watermark payload.
            generation (`GenerationInfo`, *optional*): what made it; ``artifact_id`` is filled in.
            ingredients (`Iterable[Ingredient]`, *optional*): input images.

        Returns:
            `StampedImage` with the signed bytes, their sha256 and the manifest JSON.

        Raises:
            ValueError: for an unknown format or an empty artifact id.
            SigningError: if signing fails (no unsigned bytes are returned).
        """
        # 1. Check inputs.
        mime = _FORMATS.get(fmt.lower())
        if mime is None:
            raise ValueError(f"unknown output format {fmt!r}; use 'png' or 'jpeg'")
        if not artifact_id:
            raise ValueError("artifact_id is required: the watermark and the manifest point to it")
        rgb = _to_uint8_rgb(image)
        timings: dict[str, float] = {}

        # 2. Watermark the pixels.
        t0 = time.perf_counter()
        wm_result = None
        if self.watermarker is not None:
            rgb, wm_result = self.watermarker.embed(rgb, self.watermarker.payload_for(artifact_id))
        else:
            from serve.provenance.watermark import WatermarkResult

            wm_result = WatermarkResult(applied=False, method="none", reason="watermarking disabled")
        timings["watermark_ms"] = (time.perf_counter() - t0) * 1000

        # 3. Encode.
        from PIL import Image

        t0 = time.perf_counter()
        buf = io.BytesIO()
        pil = Image.fromarray(rgb, mode="RGB")
        if mime == "image/png":
            pil.save(buf, format="PNG", compress_level=4)
        else:
            pil.save(buf, format="JPEG", quality=self.jpeg_quality, subsampling=0)
        encoded = buf.getvalue()
        timings["encode_ms"] = (time.perf_counter() - t0) * 1000

        # 4. Sign (last: the manifest hash covers the final bytes).
        generation = (generation or GenerationInfo()).model_copy(update={"artifact_id": artifact_id})
        if wm_result.applied:
            generation.extra = {
                **generation.extra,
                "watermark": {"method": wm_result.method, "payload": wm_result.payload_hex},
            }
        t0 = time.perf_counter()
        signed = self.signer.sign(encoded, mime, generation, list(ingredients))
        timings["sign_ms"] = (time.perf_counter() - t0) * 1000

        import c2pa

        with c2pa.Reader(mime, io.BytesIO(signed)) as reader:
            manifest_json = json.dumps(read_manifest_store(reader))
        return StampedImage(
            data=signed,
            sha256=hashlib.sha256(signed).hexdigest(),
            mime=mime,
            width=rgb.shape[1],
            height=rgb.shape[0],
            artifact_id=artifact_id,
            manifest_json=manifest_json,
            watermark=wm_result,
            timings_ms={k: round(v, 2) for k, v in timings.items()},
        )

    def verify(self, data: bytes, trust_anchors_pem: bytes | None = None) -> VerifyReport:
        """Checks an image's C2PA manifest, watermark and integrity.

        Args:
            data (`bytes`): a PNG or JPEG file.
            trust_anchors_pem (`bytes`, *optional*): roots to trust for this call, in addition
                to the service's.

        Returns:
            `VerifyReport`.

        Raises:
            InvalidImageError: if the bytes are not a decodable PNG/JPEG.
        """
        anchors = b"".join(a for a in (self.trust_anchors_pem, trust_anchors_pem) if a) or None
        report, image = verify_c2pa_with_image(data, anchors)
        if self.watermarker is None:
            report.watermark = WatermarkReport(checked=False, reason="watermarking disabled")
            return report
        reading = self.watermarker.extract(image)
        artifact = None
        if reading.payload_hex and self.resolve_watermark is not None:
            try:
                artifact = self.resolve_watermark(reading.payload_hex)
            except Exception:  # a broken lookup must not break verification
                logger.exception("resolve_watermark failed for payload %s", reading.payload_hex)
        found = reading.found or artifact is not None
        report.watermark = WatermarkReport(
            checked=True,
            found=found,
            method=reading.method,
            payload=reading.payload_hex if found else None,
            artifact_id=artifact if found else None,
            confidence=reading.confidence,
            reason=reading.reason,
        )
        if report.artifact_id is None and found:
            report.artifact_id = artifact
        return report
