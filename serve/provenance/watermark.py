"""Invisible watermark: embed and read a short artifact key with `invisible-watermark`.

Which method, and why (measured by ``load_tests/bench_watermark.py``, numbers in
``load_tests/results/bench_watermark.json``):

* ``dwtDctSvd`` (the default). Bit accuracy stays at or near 1.0 after
  JPEG q90 and q75 (and is mostly intact at q50), and after a 50% downscale
  when the reader searches a few rescale factors (what `extract` does).
  It costs tens of milliseconds per 512x512 image on one CPU core.
  It does not survive a crop that moves the 8-pixel block grid, nor a +20%
  brightness change (the payload rides on the chroma-U level). Both are
  documented limits; C2PA is the strong binding, the watermark is the fallback
  when metadata is stripped or the file is re-encoded.
* ``rivaGan`` (the ONNX encoder/decoder shipped inside the package; needs
  ``onnxruntime``). It is fixed at 32 bits and more tolerant of crops and
  brightness, but on smooth or lightly textured content (typical for
  diffusion outputs and our synthetic bench images) its bit accuracy is only
  0.6-0.9 *before any edit*, and it costs about 0.4 s (256x256) to 1.1 s
  (512x512) per embed on CPU. It is kept as an option, not the default.

Two defects of ``invisible-watermark==0.2.0`` are worked around here:

* ``EmbedDwtDctSvd.encode`` swaps the horizontal and vertical detail bands
  when it rebuilds the image (``idwt2((ca1, (v1, h1, d1)))``), which blurs or
  ghosts every textured region (PSNR 23 dB instead of 40 dB on a noisy test
  image). `_FixedDwtDctSvd` rebuilds with the bands in order. Decoding reads
  only the approximation band, so images embedded by either version decode
  the same way.
* ``RivaWatermark.decode`` thresholds the decoder's *logits* at 0.52 instead
  of 0; we run the shipped ONNX decoder ourselves and threshold at 0.

Payload: the first ``payload_bits`` bits of ``sha256(artifact_id)``, as hex
(32 bits = 8 hex digits by default). A caller maps it back to an artifact
through a lookup (see `serve.provenance.ProvenanceService`).

Detection: dwtDctSvd spreads every bit over many blocks; each block votes.
``confidence`` is the mean per-bit majority margin ``|2 * mean(votes) - 1|``.
For an unmarked image the votes behave like coin flips, so the margin has a
known mean and spread for ``n`` votes per bit (binomial); the watermark
counts as *found* when the margin exceeds that mean by 6 standard errors and
the decoded payload is not degenerate (all zeros or all ones, which flat
images produce). A resolver match is the stronger signal: see
`serve.provenance.ProvenanceService.verify`.

Small images: imwatermark refuses images under 256x256 pixels (area). Here an
image whose area is below that is upscaled (bicubic) to a deterministic work
size of at least 256x256 area, marked, and scaled back (area filter); the
reader repeats the same upscale. This keeps 64x64 and 128x128 outputs
marked (bit accuracy 1.0 on unedited images) at a lower robustness. Images
with a side under ``MIN_SIDE`` (32 px) are not marked: `embed` returns the
pixels unchanged with ``applied=False`` and a reason; it never raises for
size.

Usage::

    wm = Watermarker()                       # dwtDctSvd, 32 bits
    payload = wm.payload_for("job-123/0")
    marked, result = wm.embed(rgb_uint8, payload)
    reading = wm.extract(marked)             # reading.payload_hex == payload
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
from functools import lru_cache
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

logger = logging.getLogger(__name__)

WatermarkMethod = Literal["dwtDctSvd", "rivaGan"]
WATERMARK_METHODS: tuple[str, ...] = ("dwtDctSvd", "rivaGan")

#: imwatermark's own minimum: ``r * c < 256 * 256`` raises "image too small".
MIN_AREA = 256 * 256
#: Below this side length an image is not marked at all (too few blocks).
MIN_SIDE = 32
#: dwtDctSvd quantisation step on the U channel (imwatermark's default).
DWT_SCALE = 36.0
#: How many standard errors above the unmarked expectation count as "found".
DETECTION_SIGMAS = 6.0


class WatermarkResult(BaseModel):
    """What `Watermarker.embed` did.

    Attributes:
        applied: whether the pixels now carry the payload.
        method: the watermark method used.
        payload_hex: the embedded payload (hex), or None when not applied.
        reason: why the watermark was not applied, or what is unusual (e.g. upscaled work size).
        self_check_bit_accuracy: bit accuracy of reading the marked pixels straight back
            (1.0 is a perfect round trip); None when the self check was off.
        psnr_db: peak signal-to-noise ratio of the marked image against the input.
    """

    applied: bool
    method: str
    payload_hex: str | None = None
    reason: str | None = None
    self_check_bit_accuracy: float | None = None
    psnr_db: float | None = None


class WatermarkReading(BaseModel):
    """What `Watermarker.extract` read from an image.

    Attributes:
        found: whether a watermark of this method is judged present.
        method: the method the reader used.
        payload_hex: the decoded payload (hex); present even when ``found`` is False.
        confidence: mean per-bit vote margin in [0, 1] (1 = every vote agrees).
        threshold: the confidence needed to call it found for this image size.
        scale: the rescale factor of the read that won the search (1.0 = as given).
        reason: why nothing was read (e.g. image too small).
    """

    found: bool
    method: str
    payload_hex: str | None = None
    confidence: float = 0.0
    threshold: float | None = None
    scale: float = 1.0
    reason: str | None = None


class WatermarkError(ValueError):
    """Raised for a bad watermark configuration or payload (never for image size)."""


def payload_bits_to_hex(bits: np.ndarray) -> str:
    """Packs a 0/1 bit array (length a multiple of 8) into lowercase hex."""
    return np.packbits(np.asarray(bits, dtype=np.uint8)).tobytes().hex()


def hex_to_payload_bits(payload_hex: str, n_bits: int) -> np.ndarray:
    """Unpacks ``payload_hex`` into exactly ``n_bits`` 0/1 values.

    Raises:
        WatermarkError: if the hex is malformed or has the wrong length.
    """
    try:
        raw = bytes.fromhex(payload_hex)
    except ValueError as e:
        raise WatermarkError(f"watermark payload {payload_hex!r} is not hex: {e}") from e
    if len(raw) * 8 != n_bits:
        raise WatermarkError(
            f"watermark payload {payload_hex!r} has {len(raw) * 8} bits; this watermarker uses {n_bits}"
        )
    return np.unpackbits(np.frombuffer(raw, dtype=np.uint8))


def work_size(height: int, width: int) -> tuple[int, int]:
    """The (height, width) the watermark is embedded and read at.

    Images with area >= 256*256 are used as they are; smaller ones are scaled
    up, keeping the aspect ratio, until the area reaches 256*256. Depends on
    the image size only, so the reader recomputes the same value.
    """
    if height * width >= MIN_AREA:
        return height, width
    f = math.sqrt(MIN_AREA / (height * width))
    h = int(math.ceil(height * f / 8.0) * 8)
    w = int(math.ceil(width * f / 8.0) * 8)
    return h, w


@lru_cache(maxsize=256)
def _unmarked_margin_stats(n_votes: int) -> tuple[float, float]:
    """Mean and standard deviation of ``|2B/n - 1|`` for ``B ~ Binomial(n, 1/2)``."""
    n = max(1, n_votes)
    if n > 400:  # normal approximation; the exact sum underflows nothing but is slow
        mean = math.sqrt(2.0 / (math.pi * n))
    else:
        mean = sum(math.comb(n, k) * abs(2 * k / n - 1) for k in range(n + 1)) / 2.0**n
    var = max(1.0 / n - mean * mean, 1e-12)  # E[(2B/n-1)^2] = 1/n
    return mean, math.sqrt(var)


def detection_threshold(n_votes: int, n_bits: int) -> float:
    """Confidence an unmarked image reaches with odds of about 1e-9 (6 sigma)."""
    mean, sd = _unmarked_margin_stats(n_votes)
    return mean + DETECTION_SIGMAS * sd / math.sqrt(n_bits)


def _fixed_dwt_dct_svd_cls():
    # NOTE: imported lazily: `import imwatermark` imports torch (through its
    # rivaGan module), which costs about a second; keep it out of module import.
    import cv2
    import pywt
    from imwatermark.dwtDctSvd import EmbedDwtDctSvd

    class _FixedDwtDctSvd(EmbedDwtDctSvd):
        """imwatermark's dwtDctSvd with the detail bands rebuilt in order (see module doc)."""

        def encode(self, bgr):
            row, col, _ = bgr.shape
            yuv = cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV)
            for channel in range(2):
                if self._scales[channel] <= 0:
                    continue
                ca1, (h1, v1, d1) = pywt.dwt2(yuv[: row // 4 * 4, : col // 4 * 4, channel], "haar")
                self.encode_frame(ca1, self._scales[channel])
                rebuilt = pywt.idwt2((ca1, (h1, v1, d1)), "haar")
                yuv[: row // 4 * 4, : col // 4 * 4, channel] = np.clip(np.rint(rebuilt), 0, 255)
            return cv2.cvtColor(yuv, cv2.COLOR_YUV2BGR)

        def vote_scores(self, bgr) -> list[list[int]]:
            """Per-bit lists of block votes (0/1), as `decode` averages them."""
            row, col, _ = bgr.shape
            yuv = cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV)
            scores: list[list[int]] = [[] for _ in range(self._wmLen)]
            for channel in range(2):
                if self._scales[channel] <= 0:
                    continue
                ca1, _ = pywt.dwt2(yuv[: row // 4 * 4, : col // 4 * 4, channel], "haar")
                scores = self.decode_frame(ca1, self._scales[channel], scores)
            return scores

    return _FixedDwtDctSvd


_riva_lock = threading.Lock()
_riva_sessions: dict[str, object] = {}


def _riva_session(kind: str):
    """The shipped rivaGan ONNX session (``encoder`` or ``decoder``), loaded once per process."""
    with _riva_lock:
        if kind not in _riva_sessions:
            try:
                import onnxruntime
            except ImportError as e:
                raise WatermarkError(
                    "watermark method 'rivaGan' needs onnxruntime; install it with `pip install onnxruntime`"
                ) from e
            import os

            import imwatermark

            model_dir = os.path.dirname(os.path.abspath(imwatermark.__file__))
            opts = onnxruntime.SessionOptions()
            opts.intra_op_num_threads = 1  # NOTE: deployments get fractional CPUs; don't oversubscribe.
            _riva_sessions[kind] = onnxruntime.InferenceSession(
                os.path.join(model_dir, f"rivagan_{kind}.onnx"),
                sess_options=opts,
                providers=["CPUExecutionProvider"],
            )
        return _riva_sessions[kind]


def _to_rgb_uint8(image) -> np.ndarray:
    """Accepts a PIL image or an HxW / HxWx{1,3,4} uint8 array; returns HxWx3 uint8 RGB."""
    if not isinstance(image, np.ndarray):
        try:
            image = np.asarray(image.convert("RGB"))
        except AttributeError as e:
            raise TypeError(f"expected a numpy array or PIL image, got {type(image).__name__}") from e
    arr = image
    if arr.dtype != np.uint8:
        raise TypeError(f"expected uint8 pixels, got {arr.dtype}")
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise TypeError(f"expected an HxWx3 image, got shape {arr.shape}")
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    if arr.shape[2] == 4:
        arr = arr[:, :, :3]
    return np.ascontiguousarray(arr)


class Watermarker:
    """Embeds and reads a short payload as an invisible watermark.

    Construct with the method (``"dwtDctSvd"`` default, or ``"rivaGan"``) and the
    payload size. Pixels in and out are RGB ``uint8`` arrays (HxWx3); a PIL image
    is accepted too. Tests construct it directly; the provenance service owns one.

    Args:
        method (`str`, *optional*, defaults to ``"dwtDctSvd"``): the imwatermark method.
        payload_bits (`int`, *optional*, defaults to 32): payload size, a multiple of 8
            between 16 and 64 for dwtDctSvd; rivaGan supports 32 only.
        self_check (`bool`, *optional*, defaults to True): read the marked pixels back
            after embedding and report the bit accuracy.
        search (`bool`, *optional*, defaults to True): when the straight read is not
            confident, also try a few rescale factors (finds the mark after a resize).

    Raises:
        WatermarkError: for an unknown method or unsupported payload size.
    """

    #: rescale factors tried by `extract` when the straight read is not confident.
    SEARCH_SCALES: tuple[float, ...] = (2.0, 1.5, 4.0 / 3.0, 0.5, 0.75)

    def __init__(
        self,
        method: str = "dwtDctSvd",
        payload_bits: int = 32,
        self_check: bool = True,
        search: bool = True,
    ):
        if method not in WATERMARK_METHODS:
            raise WatermarkError(f"unknown watermark method {method!r}; choose one of {list(WATERMARK_METHODS)}")
        if method == "rivaGan" and payload_bits != 32:
            raise WatermarkError(f"rivaGan carries exactly 32 bits, not {payload_bits}")
        if payload_bits % 8 or not 16 <= payload_bits <= 64:
            raise WatermarkError(f"payload_bits must be a multiple of 8 in [16, 64], got {payload_bits}")
        self.method = method
        self.payload_bits = payload_bits
        self.self_check = self_check
        self.search = search
        self._dwt_cls = None

    # -- payload ---------------------------------------------------------------------------

    def payload_for(self, artifact_id: str) -> str:
        """The watermark payload (hex) for an artifact id: a prefix of its sha256.

        Never all-zero or all-one bits (those are what flat images decode to).
        """
        digest = hashlib.sha256(artifact_id.encode("utf-8")).digest()
        n_bytes = self.payload_bits // 8
        salt = 0
        while digest[:n_bytes] in (b"\x00" * n_bytes, b"\xff" * n_bytes):
            salt += 1
            digest = hashlib.sha256(f"{artifact_id}#{salt}".encode()).digest()
        return digest[:n_bytes].hex()

    # -- embed -----------------------------------------------------------------------------

    def embed(self, image, payload_hex: str) -> tuple[np.ndarray, WatermarkResult]:
        """Marks ``image`` with ``payload_hex``.

        Args:
            image (`np.ndarray` or `PIL.Image.Image`): RGB pixels.
            payload_hex (`str`): ``payload_bits / 4`` hex digits, e.g. from `payload_for`.

        Returns:
            The marked RGB uint8 array (the input unchanged when not applied) and a
            `WatermarkResult`.

        Raises:
            WatermarkError: if the payload is malformed.
            TypeError: if the image is not 8-bit RGB(A)/grey.
        """
        import cv2

        rgb = _to_rgb_uint8(image)
        bits = hex_to_payload_bits(payload_hex, self.payload_bits)
        h, w = rgb.shape[:2]
        if min(h, w) < MIN_SIDE:
            reason = f"image {w}x{h} is under the {MIN_SIDE}px minimum side; not watermarked"
            logger.warning(reason)
            return rgb, WatermarkResult(applied=False, method=self.method, reason=reason)

        wh, ww = work_size(h, w)
        reason = None
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        work = bgr if (wh, ww) == (h, w) else cv2.resize(bgr, (ww, wh), interpolation=cv2.INTER_CUBIC)
        if (wh, ww) != (h, w):
            reason = f"image {w}x{h} is under {MIN_AREA} px area; embedded at {ww}x{wh} and scaled back"

        marked_work = self._embed_bgr(work, bits)
        if (wh, ww) != (h, w):
            marked_bgr = cv2.resize(marked_work, (w, h), interpolation=cv2.INTER_AREA)
        else:
            marked_bgr = marked_work
        marked = cv2.cvtColor(marked_bgr, cv2.COLOR_BGR2RGB)

        acc = None
        if self.self_check:
            reading = self._read_at(marked, 1.0)
            got = hex_to_payload_bits(reading.payload_hex, self.payload_bits) if reading.payload_hex else None
            acc = float(np.mean(got == bits)) if got is not None else 0.0
            if acc < 1.0:
                logger.warning("watermark self check read %.3f of the bits back (%s)", acc, self.method)
        psnr = float(cv2.PSNR(rgb, marked))
        return marked, WatermarkResult(
            applied=True,
            method=self.method,
            payload_hex=payload_hex,
            reason=reason,
            self_check_bit_accuracy=acc,
            psnr_db=round(psnr, 2),
        )

    def _embed_bgr(self, bgr: np.ndarray, bits: np.ndarray) -> np.ndarray:
        if self.method == "dwtDctSvd":
            cls = self._dwt()
            return cls(bits.tolist(), wmLen=self.payload_bits, scales=[0, DWT_SCALE, 0], block=4).encode(bgr.copy())
        # rivaGan: same tensor layout as imwatermark.rivaGan.RivaWatermark.encode.
        frame = (bgr.astype(np.float32) / 127.5 - 1.0).transpose(2, 0, 1)[None, :, None]
        data = bits.astype(np.float32)[None, :]
        out = _riva_session("encoder").run(None, {"frame": frame, "data": data})[0]
        out = np.clip(out[0, :, 0].transpose(1, 2, 0), -1.0, 1.0)
        return np.clip(np.rint((out + 1.0) * 127.5), 0, 255).astype(np.uint8)

    def _dwt(self):
        if self._dwt_cls is None:
            self._dwt_cls = _fixed_dwt_dct_svd_cls()
        return self._dwt_cls

    # -- extract ---------------------------------------------------------------------------

    def extract(self, image) -> WatermarkReading:
        """Reads the watermark from ``image``.

        Tries the image as given (through the same small-image work size as `embed`);
        if that is not confident and ``search`` is on, tries `SEARCH_SCALES` and keeps
        the most confident read.

        Args:
            image (`np.ndarray` or `PIL.Image.Image`): RGB pixels.

        Returns:
            A `WatermarkReading`; ``found`` is False (with a reason) for images too small to read.
        """
        rgb = _to_rgb_uint8(image)
        h, w = rgb.shape[:2]
        if min(h, w) < MIN_SIDE:
            return WatermarkReading(
                found=False,
                method=self.method,
                reason=f"image {w}x{h} is under the {MIN_SIDE}px minimum side; nothing to read",
            )
        best = self._read_at(rgb, 1.0)
        if best.found or not self.search:
            return best
        for s in self.SEARCH_SCALES:
            if min(h, w) * s < MIN_SIDE:
                continue
            reading = self._read_at(rgb, s)
            if reading.found:
                return reading  # first confident read wins; later scales cost time
            if _margin(reading) > _margin(best):
                best = reading
        return best

    def _read_at(self, rgb: np.ndarray, scale: float) -> WatermarkReading:
        import cv2

        h, w = rgb.shape[:2]
        if scale != 1.0:
            h, w = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
            interp = cv2.INTER_CUBIC if scale > 1 else cv2.INTER_AREA
            rgb = cv2.resize(rgb, (w, h), interpolation=interp)
        wh, ww = work_size(h, w)
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        if (wh, ww) != (h, w):
            bgr = cv2.resize(bgr, (ww, wh), interpolation=cv2.INTER_CUBIC)
        if self.method == "dwtDctSvd":
            votes = self._dwt()([], wmLen=self.payload_bits, scales=[0, DWT_SCALE, 0], block=4).vote_scores(bgr)
            n_votes = min(len(v) for v in votes)
            if n_votes == 0:
                return WatermarkReading(found=False, method=self.method, scale=scale, reason="no blocks to read")
            means = np.array([np.mean(v) for v in votes])
            bits = (means > 0.5).astype(np.uint8)
            confidence = float(np.mean(np.abs(2 * means - 1)))
            threshold = detection_threshold(n_votes, self.payload_bits)
        else:
            frame = (bgr.astype(np.float32) / 127.5 - 1.0).transpose(2, 0, 1)[None, :, None]
            logits = _riva_session("decoder").run(None, {"frame": frame})[0][0]
            bits = (logits > 0).astype(np.uint8)
            confidence = float(np.mean(np.abs(np.tanh(logits / 2.0))))  # |2*sigmoid - 1|
            # NOTE: rivaGan logits of unmarked images are not coin flips; no calibrated
            # threshold exists, so only a resolver match can confirm a rivaGan read.
            threshold = 0.9
        degenerate = bool(bits.min() == bits.max())
        found = confidence >= threshold and not degenerate
        return WatermarkReading(
            found=found,
            method=self.method,
            payload_hex=payload_bits_to_hex(bits),
            confidence=round(confidence, 4),
            threshold=round(threshold, 4),
            scale=scale,
            reason="degenerate payload (flat image)" if degenerate else None,
        )


def _margin(reading: WatermarkReading) -> float:
    return reading.confidence - (reading.threshold if reading.threshold is not None else 1.0)
