"""Invisible watermark: embed and read a short artifact key with `invisible-watermark`.

Which method, and why (measured by ``load_tests/bench_watermark.py`` on 2 shared CPU cores,
3 synthetic natural-ish images per size; bit accuracy / exact-payload found rate):

=============  ====  ======  =========  =========  =========  =========  =========  =========
method         size  embed   none       JPEG q90   JPEG q75   JPEG q50   resize50   crop10
=============  ====  ======  =========  =========  =========  =========  =========  =========
dwtDctSvd-48   256   22 ms   1.00/1.00  1.00/1.00  0.99/0.67  0.94/0.00  1.00/1.00  0.54/0.00
dwtDctSvd-48   512   92 ms   1.00/1.00  1.00/1.00  1.00/1.00  0.95/0.00  1.00/1.00  0.51/0.00
rivaGan-32     256   470 ms  1.00/1.00  1.00/1.00  0.93/0.00  0.81/0.00  1.00/1.00  0.99/0.67
rivaGan-32     512   2.0 s   0.99/0.67  0.95/0.33  0.95/0.33  0.85/0.00  0.62/0.00  0.98/0.67
=============  ====  ======  =========  =========  =========  =========  =========  =========

Brightness +20%: dwtDctSvd 0.61 (256) / 0.94 (512) bit accuracy, never found; rivaGan 0.99
/ 0.98, found 0.67. No method reported a wrong payload as found, nor found a mark in
unmarked images.

* ``dwtDctSvd`` is the default: exact recovery after JPEG q90/q75 and a 50% downscale
  (the reader tries a few rescale factors, see `Watermarker.extract`), PSNR 41.5 dB, and
  20-90 ms per image on CPU. It does not survive a crop (the bit-to-block layout depends
  on the image width and origin) nor a +20% brightness change (the bits ride on the
  quantised chroma-U level): documented limits. C2PA is the strong binding; the watermark
  is the fallback when metadata is stripped or the file is re-encoded or resized.
* ``rivaGan`` (the ONNX encoder/decoder shipped inside the package; needs ``onnxruntime``)
  is the one that survives crops and brightness changes, but it is 20-30x slower
  (0.5-2 s per embed, 0.3-1.1 s per read on CPU), fixed at 32 bits, and less reliable
  before any edit: 0.67 found at 512x512 here, and 0.6-0.9 bit accuracy on smooth,
  lightly textured images in an earlier measurement (diffusion outputs are often smooth).
  It is available as ``Watermarker("rivaGan")`` for operators who value crop robustness
  over latency, e.g. on GPU hosts.

Two defects of ``invisible-watermark==0.2.0`` are worked around here:

* ``EmbedDwtDctSvd.encode`` swaps the horizontal and vertical detail bands
  when it rebuilds the image (``idwt2((ca1, (v1, h1, d1)))``), which blurs or
  ghosts every textured region (PSNR 23 dB instead of 40 dB on a noisy test
  image). `_FixedDwtDctSvd` rebuilds with the bands in order. Decoding reads
  only the approximation band, so images embedded by either version decode
  the same way.
* ``RivaWatermark.decode`` thresholds the decoder's *logits* at 0.52 instead
  of 0; we run the shipped ONNX decoder ourselves and threshold at 0.

Payload: an id part, the first 32 bits of ``sha256(artifact_id)`` (`Watermarker.payload_for`,
8 hex digits), followed by 16 check bits (a hash of the id part): 48 bits embedded for
dwtDctSvd. (rivaGan's 32 bits hold 24 id + 8 check bits.) A caller maps the id part back to
an artifact through a lookup (see `serve.provenance.ProvenanceService`).

Detection: a read counts as *found* only when the check bits match the id bits, the
vote confidence clears a binomial 6-sigma threshold and the bits are not all equal.
Measured on the bench images, a confidence threshold alone is not enough: crops,
brightness changes and wrong-scale reads of marked images give structured votes with
"confident" but wrong payloads. With the check bits no wrong payload was reported as found
in any bench case (a random read passes 16 check bits with probability 2**-16).
The trade-off: a read with even one wrong bit is "not found" (JPEG q50 reads 83-93% of
the bits, so it is not found at 48 bits, while 32 bits (24 id + 8 check) found 25-58% of
q50 cases). 32 id bits are kept because 24-bit ids collide too often for a lookup
(about 30k colliding pairs among a million artifacts).

Small images: imwatermark refuses images under 256x256 pixels (area). Here an
image whose area is below that is upscaled (bicubic) to a deterministic work
size of at least 256x256 area, marked, and scaled back (area filter); the
reader repeats the same upscale. This keeps 64x64 and 128x128 outputs
marked (bit accuracy 1.0 on unedited images) at a lower robustness. Images
with a side under ``MIN_SIDE`` (32 px) are not marked: `embed` returns the
pixels unchanged with ``applied=False`` and a reason; it never raises for
size.

Usage::

    wm = Watermarker()                       # dwtDctSvd, 48 bits: 32 id + 16 check
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
from pydantic import BaseModel

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
        payload_hex: the decoded id part (hex); present even when ``found`` is False, when it
            is only a best guess (an exact lookup hit on it is still evidence: a chance hit
            has probability ``artifacts / 2**id_bits``).
        confidence: mean per-bit vote margin in [0, 1] (1 = every vote agrees).
        threshold: the confidence needed to call it found for this image size.
        scale: the rescale factor of the read that won the search (1.0 = as given).
        reason: why it is not found (image too small, check bits mismatch, ...).
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
    if n > 400:  # normal approximation; the exact binomial sum gets slow and 2**n overflows floats
        mean = math.sqrt(2.0 / (math.pi * n))
    else:
        mean = sum(math.comb(n, k) * abs(2 * k / n - 1) for k in range(n + 1)) / 2.0**n
    var = max(1.0 / n - mean * mean, 1e-12)  # E[(2B/n-1)^2] = 1/n
    return mean, math.sqrt(var)


def detection_threshold(n_votes: int, n_bits: int) -> float:
    """Vote confidence 6 standard errors above what an unmarked image gives (coin-flip votes).

    A necessary condition only: edited marked images give structured votes that can pass
    it with a wrong payload, which is why the check bits decide (see module doc).
    """
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

    return _FixedDwtDctSvd


def _dwt_block_s0(bgr: np.ndarray, block: int = 4) -> np.ndarray:
    """Largest singular value of every ``block``x``block`` tile of the U channel's Haar LL band.

    Row-major tile order, exactly the quantity imwatermark's ``EmbedDwtDctSvd.decode`` reads:
    it takes ``svd(dct(tile))[1][0]``, and since the 2-D DCT is orthonormal the singular values
    of ``dct(tile)`` equal those of ``tile``. Batched here (about 15x faster than its loop);
    a unit test checks the votes match imwatermark's decoder.
    """
    import cv2
    import pywt

    row, col = bgr.shape[:2]
    yuv = cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV)
    ca1, _ = pywt.dwt2(yuv[: row // 4 * 4, : col // 4 * 4, 1], "haar")
    r, c = ca1.shape[0] // block, ca1.shape[1] // block
    if r == 0 or c == 0:
        return np.zeros(0)
    tiles = ca1[: r * block, : c * block].reshape(r, block, c, block).transpose(0, 2, 1, 3).reshape(-1, block, block)
    return np.linalg.svd(tiles, compute_uv=False)[:, 0]


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
    """Embeds and reads a short artifact key as an invisible watermark.

    Construct with the method (``"dwtDctSvd"`` default, or ``"rivaGan"``) and the embedded
    size. The embedded bits are an id part (what `payload_for` returns and a resolver looks
    up) followed by check bits (a hash of the id part): a read counts as *found* only when
    the check bits match, so a damaged or misaligned read never points at a wrong artifact.
    Pixels in and out are RGB ``uint8`` arrays (HxWx3); a PIL image is accepted too.

    Args:
        method (`str`, *optional*, defaults to ``"dwtDctSvd"``): the imwatermark method.
        payload_bits (`int`, *optional*): bits embedded in total, a multiple of 8 in [24, 64];
            defaults to 48 (32 id + 16 check) for dwtDctSvd and 32 (24 id + 8 check) for
            rivaGan, which carries exactly 32.
        self_check (`bool`, *optional*, defaults to True): read the marked pixels back after
            embedding and report the bit accuracy.
        search (`bool`, *optional*, defaults to True): when the straight read is not found,
            also try `SEARCH_SCALES` (finds the mark after a resize).

    Raises:
        WatermarkError: for an unknown method or unsupported size.
    """

    #: rescale factors tried by `extract` when the straight read is not found.
    SEARCH_SCALES: tuple[float, ...] = (2.0, 1.5, 4.0 / 3.0, 0.5, 0.75)

    def __init__(
        self,
        method: str = "dwtDctSvd",
        payload_bits: int | None = None,
        self_check: bool = True,
        search: bool = True,
    ):
        if method not in WATERMARK_METHODS:
            raise WatermarkError(f"unknown watermark method {method!r}; choose one of {list(WATERMARK_METHODS)}")
        if payload_bits is None:
            payload_bits = 32 if method == "rivaGan" else 48
        if method == "rivaGan" and payload_bits != 32:
            raise WatermarkError(f"rivaGan carries exactly 32 bits, not {payload_bits}")
        if payload_bits % 8 or not 24 <= payload_bits <= 64:
            raise WatermarkError(f"payload_bits must be a multiple of 8 in [24, 64], got {payload_bits}")
        self.method = method
        self.payload_bits = payload_bits
        self.check_bits = 16 if payload_bits >= 48 else 8
        self.id_bits = payload_bits - self.check_bits
        self.self_check = self_check
        self.search = search
        self._dwt_cls = None

    # -- payload ---------------------------------------------------------------------------

    def payload_for(self, artifact_id: str) -> str:
        """The id part of the watermark for an artifact: a sha256 prefix, as hex.

        ``id_bits / 4`` hex digits (8 for both default configurations). Never all-zero or
        all-one bits (what flat images decode to).
        """
        n = self.id_bits // 8
        digest = hashlib.sha256(artifact_id.encode("utf-8")).digest()
        salt = 0
        while digest[:n] in (b"\x00" * n, b"\xff" * n):
            salt += 1
            digest = hashlib.sha256(f"{artifact_id}#{salt}".encode()).digest()
        return digest[:n].hex()

    def _check_for(self, id_bytes: bytes) -> bytes:
        return hashlib.sha256(b"genserve-watermark-check:" + id_bytes).digest()[: self.check_bits // 8]

    def _embedded_bits(self, payload_hex: str) -> np.ndarray:
        id_bits = hex_to_payload_bits(payload_hex, self.id_bits)
        check = np.unpackbits(np.frombuffer(self._check_for(bytes.fromhex(payload_hex)), dtype=np.uint8))
        return np.concatenate([id_bits, check])

    # -- embed -----------------------------------------------------------------------------

    def embed(self, image, payload_hex: str) -> tuple[np.ndarray, WatermarkResult]:
        """Marks ``image`` with ``payload_hex`` (plus its check bits).

        Args:
            image (`np.ndarray` or `PIL.Image.Image`): RGB pixels.
            payload_hex (`str`): ``id_bits / 4`` hex digits, e.g. from `payload_for`.

        Returns:
            The marked RGB uint8 array (the input unchanged when not applied) and a
            `WatermarkResult`.

        Raises:
            WatermarkError: if the payload is malformed.
            TypeError: if the image is not 8-bit RGB(A)/grey.
        """
        import cv2

        rgb = _to_rgb_uint8(image)
        bits = self._embedded_bits(payload_hex)
        h, w = rgb.shape[:2]
        if min(h, w) < MIN_SIDE:
            reason = f"image {w}x{h} is under the {MIN_SIDE}px minimum side; not watermarked"
            logger.warning(reason)
            return rgb, WatermarkResult(applied=False, method=self.method, reason=reason)

        wh, ww = work_size(h, w)
        reason = None
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        if (wh, ww) != (h, w):
            reason = f"image {w}x{h} is under {MIN_AREA} px area; embedded at {ww}x{wh} and scaled back"
            work = cv2.resize(bgr, (ww, wh), interpolation=cv2.INTER_CUBIC)
            marked_bgr = cv2.resize(self._embed_bgr(work, bits), (w, h), interpolation=cv2.INTER_AREA)
        else:
            marked_bgr = self._embed_bgr(bgr, bits)
        marked = cv2.cvtColor(marked_bgr, cv2.COLOR_BGR2RGB)

        acc = None
        if self.self_check:
            got = self._read_bits(marked, 1.0)[0]
            acc = float(np.mean(got == bits)) if got is not None else 0.0
            if acc < 1.0:
                logger.warning("watermark self check read %.3f of the bits back (%s)", acc, self.method)
        return marked, WatermarkResult(
            applied=True,
            method=self.method,
            payload_hex=payload_hex,
            reason=reason,
            self_check_bit_accuracy=acc,
            psnr_db=round(float(cv2.PSNR(rgb, marked)), 2),
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

        Reads the image as given (through the same small-image work size as `embed`); if that
        is not found and ``search`` is on, tries `SEARCH_SCALES` and returns the first found
        read, else the most confident one.

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
                return reading
            if reading.confidence > best.confidence:
                best = reading
        return best

    def bit_accuracy(self, image, payload_hex: str, scale: float = 1.0) -> float:
        """Share of the embedded bits (id + check) read back correctly at ``scale`` (for benchmarks)."""
        got = self._read_bits(_to_rgb_uint8(image), scale)[0]
        return 0.0 if got is None else float(np.mean(got == self._embedded_bits(payload_hex)))

    def _read_bits(self, rgb: np.ndarray, scale: float) -> tuple[np.ndarray | None, float, float]:
        """(bits, confidence, threshold) read at ``scale``; bits is None when nothing can be read."""
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
            s0 = _dwt_block_s0(bgr)
            n_votes = len(s0) // self.payload_bits
            if n_votes == 0:
                return None, 0.0, 1.0
            votes = (np.mod(s0, DWT_SCALE) > DWT_SCALE * 0.5).astype(np.float64)
            bit_of = np.arange(len(s0)) % self.payload_bits
            means = np.bincount(bit_of, weights=votes, minlength=self.payload_bits) / np.bincount(
                bit_of, minlength=self.payload_bits
            )
            confidence = float(np.mean(np.abs(2 * means - 1)))
            return (means > 0.5).astype(np.uint8), confidence, detection_threshold(n_votes, self.payload_bits)
        frame = (bgr.astype(np.float32) / 127.5 - 1.0).transpose(2, 0, 1)[None, :, None]
        logits = _riva_session("decoder").run(None, {"frame": frame})[0][0]
        confidence = float(np.mean(np.abs(np.tanh(logits / 2.0))))  # |2*sigmoid - 1|
        # NOTE: rivaGan logits of unmarked images are not coin flips; no calibrated confidence
        # threshold exists, so the check bits alone decide.
        return (logits > 0).astype(np.uint8), confidence, 0.0

    def _read_at(self, rgb: np.ndarray, scale: float) -> WatermarkReading:
        bits, confidence, threshold = self._read_bits(rgb, scale)
        if bits is None:
            return WatermarkReading(found=False, method=self.method, scale=scale, reason="no blocks to read")
        id_bytes = np.packbits(bits[: self.id_bits]).tobytes()
        check_ok = np.packbits(bits[self.id_bits :]).tobytes() == self._check_for(id_bytes)
        degenerate = bool(bits.min() == bits.max())
        found = check_ok and confidence >= threshold and not degenerate
        reason = None
        if not found:
            reason = "degenerate payload (flat image)" if degenerate else (
                "check bits do not match" if not check_ok else "below the confidence threshold"
            )
        return WatermarkReading(
            found=found,
            method=self.method,
            payload_hex=id_bytes.hex(),
            confidence=round(confidence, 4),
            threshold=round(threshold, 4),
            scale=scale,
            reason=reason,
        )
