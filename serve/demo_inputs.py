"""Example input images for the example workflows (pose skeleton, edge map, img2img source)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter


def _pose(size: int = 256) -> Image.Image:
    """An OpenPose-style skeleton: coloured limbs on black, like ControlNet pose inputs."""
    img = Image.new("RGB", (size, size), "black")
    d = ImageDraw.Draw(img)
    s = size / 256
    pts = {"head": (128, 50), "neck": (128, 80), "rs": (100, 85), "ls": (156, 85), "re": (80, 120), "le": (180, 110),
           "rh": (70, 155), "lh": (200, 80), "hip": (128, 150), "rk": (110, 195), "lk": (148, 195), "rf": (105, 240),
           "lf": (160, 238)}
    limbs = [("head", "neck", (255, 0, 0)), ("neck", "rs", (255, 85, 0)), ("neck", "ls", (255, 170, 0)),
             ("rs", "re", (255, 255, 0)), ("re", "rh", (170, 255, 0)), ("ls", "le", (85, 255, 0)),
             ("le", "lh", (0, 255, 0)), ("neck", "hip", (0, 255, 85)), ("hip", "rk", (0, 255, 170)),
             ("rk", "rf", (0, 255, 255)), ("hip", "lk", (0, 170, 255)), ("lk", "lf", (0, 85, 255))]
    for a, b, color in limbs:
        (x1, y1), (x2, y2) = pts[a], pts[b]
        d.line([(x1 * s, y1 * s), (x2 * s, y2 * s)], fill=color, width=max(2, int(6 * s)))
    for x, y in pts.values():
        r = 4 * s
        d.ellipse([x * s - r, y * s - r, x * s + r, y * s + r], fill=(255, 255, 255))
    return img


def _source(size: int = 256) -> Image.Image:
    """A simple landscape: sky gradient, sun, hills."""
    img = Image.new("RGB", (size, size))
    d = ImageDraw.Draw(img)
    for y in range(size):
        t = y / size
        d.line([(0, y), (size, y)], fill=(int(80 + 120 * t), int(140 + 60 * t), int(230 - 80 * t)))
    d.ellipse([size * 0.65, size * 0.12, size * 0.85, size * 0.32], fill=(255, 220, 120))
    d.polygon([(0, size * 0.7), (size * 0.3, size * 0.5), (size * 0.6, size * 0.72), (size, size * 0.55), (size, size), (0, size)],
              fill=(60, 130, 70))
    d.rectangle([size * 0.42, size * 0.55, size * 0.52, size * 0.72], fill=(150, 90, 60))
    return img


def _edges(size: int = 256) -> Image.Image:
    """A Canny-like edge map of the source image (white edges on black)."""
    gray = _source(size).convert("L").filter(ImageFilter.FIND_EDGES)
    return gray.point(lambda v: 255 if v > 24 else 0).convert("RGB")


EXAMPLE_INPUTS = {"example_pose.png": _pose, "example_edges.png": _edges, "example_source.png": _source}


def write_example_inputs(input_dir: Path, force: bool = False) -> list[str]:
    input_dir = Path(input_dir)
    input_dir.mkdir(parents=True, exist_ok=True)
    for name, make in EXAMPLE_INPUTS.items():
        path = input_dir / name
        if force or not path.exists():
            make().save(path, format="PNG")
    return list(EXAMPLE_INPUTS)
