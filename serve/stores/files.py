"""Input uploads and output images on the local file system, safe against path tricks."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from serve.constants import ALLOWED_UPLOAD_FORMATS, MAX_UPLOAD_PIXELS

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
_BAD_NAME = re.compile(r"[\x00-\x1f<>:\"|?*]")


class UnsafePathError(ValueError):
    """A file name or subfolder tried to leave its root (``..``, absolute path, ...)."""


class InvalidUploadError(ValueError):
    """The upload is not an acceptable image."""


def safe_join(root: Path, subfolder: str, filename: str) -> Path:
    """Join ``root/subfolder/filename`` and prove the result stays inside ``root``.

    Raises:
        UnsafePathError: absolute paths, ``..`` components, control characters, or a resolved
            path (symlinks followed) outside ``root``.
    """
    for part, what in ((subfolder, "subfolder"), (filename, "filename")):
        if part is None:
            continue
        if "\x00" in part or _BAD_NAME.search(part.replace("\\", "/").replace("/", "")) and what == "filename":
            raise UnsafePathError(f"{what} {part!r} contains forbidden characters")
        norm = part.replace("\\", "/")
        if norm.startswith("/") or re.match(r"^[A-Za-z]:", norm):
            raise UnsafePathError(f"{what} {part!r} must be relative")
        if any(seg == ".." for seg in norm.split("/")):
            raise UnsafePathError(f"{what} {part!r} must not contain '..'")
    if not filename or filename in (".",) or filename.endswith("/"):
        raise UnsafePathError("filename is empty")
    root_resolved = root.resolve()
    candidate = (root_resolved / (subfolder or "") / filename).resolve()
    if root_resolved != candidate and root_resolved not in candidate.parents:
        raise UnsafePathError(f"{subfolder}/{filename} resolves outside its folder")
    return candidate


def image_to_array(img: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """PIL image -> (IMAGE ``(1,H,W,3)`` float [0,1], MASK ``(1,H,W)``) as ComfyUI's LoadImage."""
    img.load()
    rgb = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    if "A" in img.getbands():
        alpha = np.asarray(img.getchannel("A"), dtype=np.float32) / 255.0
        mask = 1.0 - alpha
    else:
        mask = np.zeros(rgb.shape[:2], dtype=np.float32)
    return rgb[None], mask[None]


def array_to_pil(image: np.ndarray) -> Image.Image:
    """One ``(H, W, 3)`` float [0,1] image -> 8-bit PIL image."""
    arr = np.clip(np.asarray(image, dtype=np.float32) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(arr, "RGB")


class InputImageStore:
    """ComfyUI's ``input`` folder: uploads for ``LoadImage``.

    Args:
        root: folder of uploaded images.
        max_bytes: largest accepted upload.
    """

    def __init__(self, root: Path, max_bytes: int = 20 * 1024 * 1024):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes

    def list(self) -> list[str]:
        out = []
        for p in sorted(self.root.rglob("*")):
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."):
                out.append(p.relative_to(self.root).as_posix())
        return out

    def path(self, name: str, subfolder: str = "") -> Path:
        return safe_join(self.root, subfolder, name)

    def content_hash(self, name: str) -> str:
        path = self.path(name)
        if not path.is_file():
            raise FileNotFoundError(f"input image {name!r} not found")
        return hashlib.sha256(path.read_bytes()).hexdigest()

    def load(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        path = self.path(name)
        if not path.is_file():
            raise FileNotFoundError(f"input image {name!r} not found; upload it with POST /upload/image")
        with Image.open(path) as img:
            return image_to_array(img)

    def validate_image(self, data: bytes) -> Image.Image:
        """Decode fully and check format and size; raises :class:`InvalidUploadError`."""
        if len(data) > self.max_bytes:
            raise InvalidUploadError(f"upload is {len(data)} bytes; the limit is {self.max_bytes}")
        if not data:
            raise InvalidUploadError("upload is empty")
        try:
            with Image.open(io.BytesIO(data)) as probe:
                fmt = probe.format
                if fmt not in ALLOWED_UPLOAD_FORMATS:
                    raise InvalidUploadError(f"unsupported image format {fmt}; allowed: {', '.join(ALLOWED_UPLOAD_FORMATS)}")
                w, h = probe.size
                if w * h > MAX_UPLOAD_PIXELS:
                    raise InvalidUploadError(f"image is {w}x{h}; the limit is {MAX_UPLOAD_PIXELS} pixels")
                probe.verify()
            img = Image.open(io.BytesIO(data))
            img.load()
            return img
        except InvalidUploadError:
            raise
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise InvalidUploadError(f"not a readable image: {exc}") from exc

    def save_upload(self, data: bytes, filename: str, *, subfolder: str = "", overwrite: bool = False) -> tuple[str, str]:
        """Validate and store an upload; returns ``(name, subfolder)`` (renamed ``x (1).png`` on collision)."""
        self.validate_image(data)
        filename = os.path.basename(filename.replace("\\", "/")) if filename else "upload.png"
        target = safe_join(self.root, subfolder, filename)
        target.parent.mkdir(parents=True, exist_ok=True)
        if not overwrite:
            stem, suffix = os.path.splitext(filename)
            i = 1
            while target.exists():
                if target.read_bytes() == data:
                    break  # identical re-upload: keep the name (ComfyUI does the same)
                filename = f"{stem} ({i}){suffix}"
                target = safe_join(self.root, subfolder, filename)
                i += 1
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, target)
        return filename, subfolder


class OutputImageStore:
    """ComfyUI's ``output`` and ``temp`` folders, with ``prefix_00001_.png`` names."""

    def __init__(self, output_root: Path, temp_root: Path):
        self.roots = {"output": Path(output_root), "temp": Path(temp_root)}
        for root in self.roots.values():
            root.mkdir(parents=True, exist_ok=True)

    def root(self, kind: str) -> Path:
        if kind not in self.roots:
            raise UnsafePathError(f"type must be one of {sorted(self.roots)}, got {kind!r}")
        return self.roots[kind]

    def write_new(self, data: bytes, *, filename_prefix: str, kind: str, suffix: str = ".png") -> tuple[str, str]:
        """Store bytes under the next free counter; returns ``(filename, subfolder)``. Race-free across processes."""
        prefix = filename_prefix.replace("\\", "/")
        subfolder, _, base = prefix.rpartition("/")
        base = base or "ComfyUI"
        root = self.root(kind)
        folder = safe_join(root, subfolder, "x").parent
        folder.mkdir(parents=True, exist_ok=True)
        existing = [p.name for p in folder.glob(f"{glob_escape(base)}_*_{suffix}")]
        counter = 1 + max((int(m.group(1)) for n in existing if (m := re.match(re.escape(base) + r"_(\d+)_", n))), default=0)
        while True:
            name = f"{base}_{counter:05d}_{suffix}"
            path = safe_join(root, subfolder, name)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                counter += 1
                continue
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            return name, subfolder

    def path(self, filename: str, subfolder: str, kind: str) -> Path:
        return safe_join(self.root(kind), subfolder, filename)


def glob_escape(text: str) -> str:
    return re.sub(r"([*?\[\]])", r"[\1]", text)
