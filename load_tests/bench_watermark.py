"""Watermark robustness and provenance latency benchmark.

Prints, per watermark method and image size, the bit accuracy (share of embedded bits read
back) and the found rate (exact payload recovered, check bits matching) after common edits:
JPEG q90/75/50, resize to 50%, a 10% crop, brightness +20%. Then the latency that
provenance adds per image (watermark, C2PA signing, both through `ProvenanceService.stamp`)
and the cost of `verify`. Writes everything to ``load_tests/results/bench_watermark.json``.

Definitions:
    * resize 50%: INTER_AREA downscale to half width and height; accuracy is the best over
      the reader's own rescale search (`Watermarker.SEARCH_SCALES`), which is what
      `Watermarker.extract` does.
    * crop 10%: centre crop that removes 10% of the width and of the height (5% per side).
    * brightness +20%: RGB values times 1.2, clipped.
    * unmarked: found rate on images that were never marked (false positives).

Test images are synthetic but natural-ish (smooth colour fields, soft-edged blobs,
multi-scale texture and sensor noise), since no photos ship with the repo.

Usage::

    python load_tests/bench_watermark.py            # all methods, 3 images per size
    python load_tests/bench_watermark.py --quick    # dwtDctSvd only, 1 image per size
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # NOTE: run as a script from anywhere; the repo root holds `serve`.

from serve.provenance import GenerationInfo, ModelRef, ProvenanceService  # noqa: E402
from serve.provenance.watermark import Watermarker  # noqa: E402

RESULTS = ROOT / "load_tests" / "results" / "bench_watermark.json"
ATTACKS = ("none", "jpeg_q90", "jpeg_q75", "jpeg_q50", "resize_50", "crop_10", "brightness_+20", "unmarked")
CONFIGS = {  # label -> Watermarker kwargs
    "dwtDctSvd-48": {"method": "dwtDctSvd", "payload_bits": 48},
    "dwtDctSvd-32": {"method": "dwtDctSvd", "payload_bits": 32},
    "rivaGan-32": {"method": "rivaGan", "payload_bits": 32},
}


def natural_image(size: int, seed: int) -> np.ndarray:
    """Smooth colour field + soft blobs + multi-scale texture + noise, uint8 RGB."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    a, b, c = rng.uniform(1.0, 6.0, 3)
    img = np.stack([120 + 90 * np.sin(a * x + b * y), 120 + 80 * np.cos(c * y + 4 * x * x), 120 + 70 * np.sin(5 * x * y + a)], -1)
    for _ in range(8):
        cx, cy = rng.uniform(0, 1, 2)
        r = rng.uniform(0.05, 0.25)
        mask = np.exp(-(((x - cx) ** 2 + (y - cy) ** 2) / (2 * r * r)))[..., None]
        img = img * (1 - 0.6 * mask) + 0.6 * mask * rng.uniform(0, 255, 3)
    for octave in (8, 32, 128):
        coarse = rng.normal(0, 1, (octave, octave, 3))
        img += cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC) * 12 * (8 / octave) ** 0.5
    img += rng.normal(0, 3, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def jpeg(rgb: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def attack(rgb: np.ndarray, name: str) -> np.ndarray:
    h, w = rgb.shape[:2]
    if name in ("none", "unmarked"):
        return rgb
    if name.startswith("jpeg_q"):
        return jpeg(rgb, int(name[len("jpeg_q") :]))
    if name == "resize_50":
        return cv2.resize(rgb, (w // 2, h // 2), interpolation=cv2.INTER_AREA)
    if name == "crop_10":
        dh, dw = int(round(h * 0.05)), int(round(w * 0.05))
        return np.ascontiguousarray(rgb[dh : h - dh, dw : w - dw])
    if name == "brightness_+20":
        return np.clip(rgb.astype(np.float32) * 1.2, 0, 255).astype(np.uint8)
    raise TypeError(f"unknown attack {name!r}")


def robustness(label: str, kwargs: dict, sizes: list[int], n_images: int) -> dict:
    # NOTE: rivaGan decodes cost ~0.5-1.4 s each on CPU; its reader search is off to bound the run.
    wm = Watermarker(**kwargs, search=kwargs["method"] != "rivaGan")
    out: dict = {}
    wm.embed(natural_image(256, seed=0), wm.payload_for("warmup"))  # imports (torch via imwatermark), ONNX sessions
    for size in sizes:
        rows: dict[str, dict[str, list[float]]] = {a: {"acc": [], "found": [], "wrong": []} for a in ATTACKS}
        embed_ms, psnr = [], []
        for i in range(n_images):
            img = natural_image(size, seed=1000 * size + i)
            payload = wm.payload_for(f"bench-{size}-{i}")
            t0 = time.perf_counter()
            marked, res = wm.embed(img, payload)
            embed_ms.append((time.perf_counter() - t0) * 1000)
            psnr.append(res.psnr_db)
            for name in ATTACKS:
                edited = attack(img if name == "unmarked" else marked, name)
                scales = (1.0,) + (wm.SEARCH_SCALES if name == "resize_50" and wm.search else ())
                acc = max(wm.bit_accuracy(edited, payload, s) for s in scales)
                reading = wm.extract(edited)
                rows[name]["acc"].append(acc)
                rows[name]["found"].append(float(reading.found and reading.payload_hex == payload))
                rows[name]["wrong"].append(float(reading.found and reading.payload_hex != payload))
        out[str(size)] = {
            "embed_ms_median": round(statistics.median(embed_ms), 1),
            "psnr_db_mean": round(float(np.mean(psnr)), 2),
            "attacks": {
                a: {
                    "bit_accuracy_mean": round(float(np.mean(v["acc"])), 3),
                    "bit_accuracy_min": round(float(np.min(v["acc"])), 3),
                    "found_rate": round(float(np.mean(v["found"])), 3),
                    "wrong_payload_rate": round(float(np.mean(v["wrong"])), 3),
                }
                for a, v in rows.items()
            },
        }
        logging.info("%s %d done", label, size)
    return out


def latency(sizes: list[int], repeats: int, methods: list[str]) -> dict:
    gen = GenerationInfo(
        workflow={"3": {"class_type": "KSampler", "inputs": {"seed": 1, "steps": 20}}},
        models=[ModelRef(name="demo.safetensors", sha256="ab" * 32)],
        seeds=[1],
        sampler="euler",
        steps=20,
        cfg=7.0,
    )
    out: dict = {}
    with tempfile.TemporaryDirectory() as data_dir:
        for method in methods:
            svc = ProvenanceService(data_dir, watermark_method=method, trust_development_ca=True)
            per_size = {}
            for size in sizes:
                img = natural_image(size, seed=7)
                svc.stamp(img, "png", "warmup", gen)  # imports, ONNX session, first-call costs
                samples: dict[str, list[float]] = {k: [] for k in ("encode_only_ms", "watermark_ms", "sign_ms", "stamp_total_ms", "verify_ms")}
                for r in range(repeats):
                    t0 = time.perf_counter()
                    buf = io.BytesIO()
                    Image.fromarray(img).save(buf, format="PNG", compress_level=4)
                    samples["encode_only_ms"].append((time.perf_counter() - t0) * 1000)
                    t0 = time.perf_counter()
                    st = svc.stamp(img, "png", f"lat-{size}-{r}", gen)
                    samples["stamp_total_ms"].append((time.perf_counter() - t0) * 1000)
                    samples["watermark_ms"].append(st.timings_ms["watermark_ms"])
                    samples["sign_ms"].append(st.timings_ms["sign_ms"])
                    t0 = time.perf_counter()
                    svc.verify(st.data)
                    samples["verify_ms"].append((time.perf_counter() - t0) * 1000)
                med = {k: round(statistics.median(v), 1) for k, v in samples.items()}
                med["added_ms"] = round(med["stamp_total_ms"] - med["encode_only_ms"], 1)
                per_size[str(size)] = med
            out[method] = per_size
    return out


def print_tables(results: dict) -> None:
    short = {"none": "none", "jpeg_q90": "q90", "jpeg_q75": "q75", "jpeg_q50": "q50", "resize_50": "resize50",
             "crop_10": "crop10", "brightness_+20": "bright+20", "unmarked": "unmarked"}
    print("\nBit accuracy (mean) / found rate (exact payload)  -- 'unmarked' found = false positives")
    header = f"{'method':<14}{'size':>5}{'PSNR':>7}{'embed ms':>10} | " + " | ".join(f"{short[a]:^11}" for a in ATTACKS)
    print(header)
    print("-" * len(header))
    for label, per_size in results["robustness"].items():
        for size, r in per_size.items():
            cells = " | ".join(
                f"{r['attacks'][a]['bit_accuracy_mean']:.2f}/{r['attacks'][a]['found_rate']:.2f}".center(11) for a in ATTACKS
            )
            print(f"{label:<14}{size:>5}{r['psnr_db_mean']:>7.1f}{r['embed_ms_median']:>10.1f} | {cells}")
    wrong = {
        (label, size, a): v["wrong_payload_rate"]
        for label, per_size in results["robustness"].items()
        for size, r in per_size.items()
        for a, v in r["attacks"].items()
        if v["wrong_payload_rate"] > 0
    }
    print(f"wrong payload reported as found: {wrong or 'never'}")
    print("\nAdded latency per PNG image (median ms; stamp = watermark + encode + sign + read-back)")
    print(f"{'method':<12}{'size':>5}{'encode only':>13}{'watermark':>11}{'sign':>8}{'stamp total':>13}{'added':>8}{'verify':>9}")
    for method, per_size in results["latency"].items():
        for size, m in per_size.items():
            print(
                f"{method:<12}{size:>5}{m['encode_only_ms']:>13.1f}{m['watermark_ms']:>11.1f}{m['sign_ms']:>8.1f}"
                f"{m['stamp_total_ms']:>13.1f}{m['added_ms']:>8.1f}{m['verify_ms']:>9.1f}"
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3, help="images per size (default 3)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--methods", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--repeats", type=int, default=5, help="latency repeats per size")
    parser.add_argument("--quick", action="store_true", help="dwtDctSvd-48 only, 1 image, 3 repeats")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.quick:
        args.images, args.methods, args.repeats = 1, ["dwtDctSvd-48"], 3
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("serve.provenance.keys").setLevel(logging.ERROR)
    logging.getLogger("serve.provenance.watermark").setLevel(logging.ERROR)
    cv2.setNumThreads(1)

    t0 = time.perf_counter()
    results = {
        "meta": {
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "images_per_size": args.images,
            "sizes": args.sizes,
            "note": "synthetic natural-ish images; CPU only; ratios and accuracies, not GPU figures",
        },
        "robustness": {label: robustness(label, CONFIGS[label], args.sizes, args.images) for label in args.methods},
    }
    lat_methods = sorted({CONFIGS[m]["method"] for m in args.methods})
    results["latency"] = latency(args.sizes, args.repeats, lat_methods)
    results["meta"]["wall_s"] = round(time.perf_counter() - t0, 1)
    print_tables(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {args.out} in {results['meta']['wall_s']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
