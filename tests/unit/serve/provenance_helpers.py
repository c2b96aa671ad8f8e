"""Shared helpers for the provenance unit tests: test images and byte-level tampering."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def natural_image(height: int = 256, width: int = 256, seed: int = 0, noise: float = 8.0) -> np.ndarray:
    """A smooth colour field plus sensor-like noise: a stand-in for a generated image."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    a, b, c = rng.uniform(1.0, 6.0, 3)
    base = np.stack(
        [128 + 100 * np.sin(a * x + b * y), 128 + 90 * np.cos(c * y + 4 * x * x), 128 + 80 * np.sin(5 * x * y + a)], -1
    )
    base += rng.normal(0.0, noise, base.shape)
    return np.clip(base, 0, 255).astype(np.uint8)


def encode(rgb: np.ndarray, fmt: str = "PNG", **kwargs) -> bytes:
    """Encodes pixels with Pillow (no metadata)."""
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def decode(data: bytes) -> np.ndarray:
    """Decodes a file to RGB pixels."""
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, payload) of every chunk of a PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    out, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        ctype = data[pos + 4 : pos + 8]
        out.append((ctype, data[pos + 8 : pos + 8 + length]))
        pos += 12 + length
    return out


def build_png(chunks: list[tuple[bytes, bytes]]) -> bytes:
    """A PNG from (type, payload) chunks, with correct CRCs."""
    parts = [b"\x89PNG\r\n\x1a\n"]
    for ctype, payload in chunks:
        crc = zlib.crc32(ctype + payload) & 0xFFFFFFFF
        parts.append(struct.pack(">I", len(payload)) + ctype + payload + struct.pack(">I", crc))
    return b"".join(parts)


def png_change_one_pixel(signed_png: bytes, x: int = 10, y: int = 10) -> bytes:
    """The same signed PNG (manifest chunk kept) with exactly one pixel's red value changed."""
    pixels = decode(signed_png).copy()
    pixels[y, x, 0] ^= 0x01
    new_idat = [p for t, p in png_chunks(encode(pixels)) if t == b"IDAT"]
    chunks, placed = [], False
    for ctype, payload in png_chunks(signed_png):
        if ctype == b"IDAT":
            if not placed:
                chunks.extend((b"IDAT", p) for p in new_idat)
                placed = True
            continue
        chunks.append((ctype, payload))
    return build_png(chunks)


def png_corrupt_manifest(signed_png: bytes) -> bytes:
    """The signed PNG with one byte inside its C2PA (caBX) chunk flipped; CRCs stay valid."""
    chunks = []
    for ctype, payload in png_chunks(signed_png):
        if ctype == b"caBX":
            buf = bytearray(payload)
            buf[len(buf) // 2] ^= 0xFF
            payload = bytes(buf)
        chunks.append((ctype, payload))
    return build_png(chunks)


def jpeg_change_scan_byte(signed_jpeg: bytes) -> bytes:
    """The signed JPEG with one entropy-coded byte changed (alters the pixels of one block)."""
    sos = signed_jpeg.rfind(b"\xff\xda")
    (hdr_len,) = struct.unpack(">H", signed_jpeg[sos + 2 : sos + 4])
    start = sos + 2 + hdr_len
    pos = start + (len(signed_jpeg) - start) // 3
    buf = bytearray(signed_jpeg)
    while buf[pos] == 0xFF or buf[pos - 1] == 0xFF or buf[pos] ^ 0x10 == 0xFF:
        pos += 1
    buf[pos] ^= 0x10
    return bytes(buf)
