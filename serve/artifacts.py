"""Artifacts: every output is watermarked, C2PA-signed, stored content-addressed, and recorded with lineage.

``ArtifactService`` is the executor's output sink (``SaveImage``/``PreviewImage``) and the
backend of ``/view``, ``/upload/image``, ``/v1/artifacts`` and ``/v1/verify``. Its write path is
the only way an output reaches storage, so no workflow can skip provenance:

1. collect what made the image (models + sha256, seeds, sampler, sizes, workflow hash) from the
   nodes upstream of the output node, and its input images (uploads used by ``LoadImage``);
2. watermark then sign (``ProvenanceService.stamp``); a failure fails the node, nothing is stored;
3. put the signed bytes in the blob store (local folder or S3, sha256 keys);
4. only then record the artifact row (a failed upload never leaves a "complete" record).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from deployments.common import observability as obs
from serve.stores.artifacts import ArtifactBlobStore, ArtifactNotFoundError, open_blob_store
from serve.stores.files import InputImageStore, UnsafePathError, array_to_pil, safe_join
from serve.stores.records import Artifact, RecordStore, new_artifact_id

logger = logging.getLogger(__name__)

_MODEL_INPUTS = {
    "CheckpointLoaderSimple": [("ckpt_name", "checkpoints", "checkpoint")],
    "ControlNetLoader": [("control_net_name", "controlnet", "controlnet")],
    "LoraLoader": [("lora_name", "loras", "lora")],
    "VAELoader": [("vae_name", "vae", "vae")],
}
_SAMPLERS = ("KSampler", "KSamplerAdvanced")

# Provenance cost per output image, by step: watermark, encode (PNG), sign (C2PA), store (blob put).
_M_PROVENANCE = obs.histogram("genserve_provenance_latency_ms", "Latency of one output's provenance steps (ms)",
                              tag_keys=("step",), boundaries=[1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000])
_M_ARTIFACTS = obs.counter("genserve_artifacts_total", "Output images written (watermarked, signed, stored)", tag_keys=("kind",))


class ModelHasher:
    """sha256 of model files (a diffusers folder hashes its files in order), memoised by size and mtime.

    With a ``records`` store the digests are also kept in the shared database (``model_hashes``),
    so a multi-GB checkpoint is read once per cluster, not once per replica and restart: a
    digest is reused while the file's path, total size and latest modification time match.

    Args:
        records (`RecordStore`, *optional*): shared store for the digests.
    """

    def __init__(self, records: RecordStore | None = None) -> None:
        self.records = records
        self.computed = 0  # digests computed by reading files (not found in memory or the store)
        self._memo: dict[tuple[str, int, int], str] = {}
        self._lock = threading.Lock()

    def __call__(self, path: Path) -> str:
        path = Path(path).resolve()
        entries = sorted(path.rglob("*")) if path.is_dir() else []
        files = [p for p in entries if p.is_file()] if path.is_dir() else [path]
        if not files:
            raise ValueError(f"{path} holds no files to hash")
        # NOTE: folders' own mtimes count too, so renaming a file inside a diffusers folder is a change.
        stats = [p.stat() for p in files]
        mtimes = [st.st_mtime_ns for st in stats] + [p.stat().st_mtime_ns for p in [path, *entries] if p.is_dir()]
        stat_key = (str(path), sum(st.st_size for st in stats), max(mtimes))
        with self._lock:
            if stat_key in self._memo:
                return self._memo[stat_key]
        if self.records is not None:
            known = self.records.get_model_hash(path=stat_key[0], size_bytes=stat_key[1], mtime_ns=stat_key[2])
            if known is not None:
                with self._lock:
                    self._memo[stat_key] = known
                return known
        started = time.perf_counter()
        h = hashlib.sha256()
        for p in files:
            if path.is_dir():
                h.update(p.relative_to(path).as_posix().encode())
            with p.open("rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
        digest = h.hexdigest()
        with self._lock:
            self._memo[stat_key] = digest
            self.computed += 1
        logger.info("hashed model %s (%.1f MB) in %.2f s for provenance", path, stat_key[1] / 1e6,
                    time.perf_counter() - started)
        if self.records is not None:
            self.records.put_model_hash(path=stat_key[0], size_bytes=stat_key[1], mtime_ns=stat_key[2], sha256=digest)
        return digest


def open_store_from_args(artifact_store: str | None, s3_endpoint_url: str | None, data_dir: Path) -> ArtifactBlobStore:
    if not artifact_store:
        return open_blob_store(str((data_dir / "artifacts").resolve()))
    if artifact_store.startswith("s3://"):
        from urllib.parse import urlparse

        from serve.stores.artifacts import S3BlobStore

        parsed = urlparse(artifact_store)
        prefix = parsed.path.lstrip("/")
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        return S3BlobStore(parsed.netloc, endpoint_url=s3_endpoint_url, prefix=prefix, create_bucket=True)
    return open_blob_store(artifact_store)


class ArtifactService:
    """Output sink + artifact queries.

    Args:
        records: artifact/workflow rows in the shared database.
        blobs: blob store for the bytes.
        inputs: uploaded input images (LoadImage reads them; they become artifacts too).
        provenance: ``ProvenanceService`` (``None`` stores unsigned images, for benchmarks only;
            their records say so).
        models_dir: ``ModelsDir`` to find model files for hashing.
    """

    def __init__(self, records: RecordStore, blobs: ArtifactBlobStore, inputs: InputImageStore,
                 provenance: Any = None, models_dir: Any = None):
        self.records = records
        self.blobs = blobs
        self.inputs = inputs
        self.provenance = provenance
        self.models_dir = models_dir
        self.hasher = ModelHasher(records)

    # -- what made an image -----------------------------------------------------------------
    def _models(self, upstream: list[Any]) -> list[dict[str, Any]]:
        out = []
        for node in upstream:
            for input_name, folder, kind in _MODEL_INPUTS.get(node.class_type, []):
                name = node.inputs.get(input_name)
                if not isinstance(name, str):
                    continue
                entry: dict[str, Any] = {"name": name, "kind": kind}
                if self.models_dir is not None:
                    try:
                        entry["sha256"] = self.hasher(self.models_dir.resolve(folder, name))
                    except (FileNotFoundError, ValueError, OSError) as exc:
                        logger.warning("cannot hash model %s/%s: %s", folder, name, exc)
                out.append(entry)
        return out

    def _input_artifacts(self, upstream: list[Any], workflow: Any) -> list[tuple[Artifact | None, bytes, str, str]]:
        """Uploads used upstream: (artifact or None, bytes, title, role)."""
        found = []
        consumers: dict[str, set[str]] = {}
        for node in workflow.nodes.values():
            for link in node.links().values():
                consumers.setdefault(link.node_id, set()).add(node.class_type)
        for node in upstream:
            if node.class_type != "LoadImage":
                continue
            name = node.inputs.get("image")
            try:
                data = self.inputs.path(name).read_bytes()
            except (UnsafePathError, OSError, TypeError):
                continue
            uses = consumers.get(node.node_id, set())
            role = "control_image" if any(u.startswith("ControlNetApply") for u in uses) else (
                "img2img_source" if "VAEEncode" in uses else "upload")
            art = self.records.by_blob(hashlib.sha256(data).hexdigest(), kind="input")
            found.append((art, data, name, role))
        return found

    @staticmethod
    def _sampling(upstream: list[Any]) -> dict[str, Any]:
        seeds, info = [], {}
        for node in reversed(upstream):  # farthest first: sampler order
            if node.class_type in _SAMPLERS:
                seed = node.inputs.get("seed", node.inputs.get("noise_seed"))
                if isinstance(seed, (int, float)):
                    seeds.append(int(seed))
                for key in ("sampler_name", "scheduler", "steps", "cfg", "denoise"):
                    if key in node.inputs and not isinstance(node.inputs[key], list):
                        info[key] = node.inputs[key]
        return {"seeds": seeds, **info}

    # -- sink -------------------------------------------------------------------------------
    def _save_one(self, image: np.ndarray, prefix: str, kind: str, node_id: str, ctx: Any) -> dict[str, Any]:
        from serve.provenance.models import GenerationInfo, Ingredient, ModelRef

        upstream = ctx.upstream(node_id)
        extra = dict(getattr(ctx, "extra", {}) or {})
        workflow_hash = extra.get("workflow_hash") or ctx.workflow.content_hash()
        models = self._models(upstream)
        sampling = self._sampling(upstream)
        inputs = self._input_artifacts(upstream, ctx.workflow)
        artifact_id = new_artifact_id()
        h, w = int(image.shape[0]), int(image.shape[1])

        manifest: dict[str, Any] | None = None
        payload = None
        if self.provenance is not None:
            generation = GenerationInfo(
                job_id=ctx.prompt_id, workflow=ctx.workflow.raw, workflow_hash=workflow_hash,
                models=[ModelRef(name=m["name"], sha256=m.get("sha256"), kind=m["kind"]) for m in models],
                seeds=sampling["seeds"], sampler=sampling.get("sampler_name"), scheduler=sampling.get("scheduler"),
                steps=sampling.get("steps"), cfg=sampling.get("cfg"), denoise=sampling.get("denoise"), width=w, height=h,
                extra={"node_id": node_id, "kind": kind, "workflow_ref": extra.get("workflow_ref"),
                       "parents": [a.id for a, *_ in inputs if a is not None]},
            )
            ingredients = [Ingredient(data=data, title=title, role=role, relationship="inputTo") for _a, data, title, role in inputs]
            stamped = self.provenance.stamp(image, fmt="png", artifact_id=artifact_id, generation=generation, ingredients=ingredients)
            data = stamped.data
            for step in ("watermark_ms", "encode_ms", "sign_ms"):
                if step in stamped.timings_ms:
                    _M_PROVENANCE.observe(stamped.timings_ms[step], tags={"step": step[:-3]})
            manifest = json.loads(stamped.manifest_json)
            payload = stamped.watermark.payload_hex if stamped.watermark and stamped.watermark.applied else None
        else:
            buf = io.BytesIO()
            array_to_pil(image).save(buf, format="PNG", compress_level=4)
            data = buf.getvalue()

        t_put = time.perf_counter()
        key = self.blobs.put(data, "image/png")  # raises ArtifactStoreError: the node fails, nothing recorded
        _M_PROVENANCE.observe((time.perf_counter() - t_put) * 1000, tags={"step": "store"})
        subfolder, _, base = prefix.replace("\\", "/").rpartition("/")
        base = base or "ComfyUI"
        for _ in range(20):
            filename = self.records.next_filename(kind=kind, subfolder=subfolder, base=base)
            try:
                self.records.add_artifact(
                    artifact_id=artifact_id, blob_key=key, kind=kind, filename=filename, subfolder=subfolder,
                    mime="image/png", size_bytes=len(data), prompt_id=ctx.prompt_id, node_id=node_id,
                    workflow_hash=workflow_hash, workflow_ref=extra.get("workflow_ref"), models=models,
                    seeds=sampling["seeds"], parents=[a.id for a, *_ in inputs if a is not None], manifest=manifest,
                    watermark_payload=payload, submitted_by=extra.get("submitted_by"),
                )
                break
            except FileExistsError:
                continue  # another replica took that counter
        else:
            raise RuntimeError(f"could not allocate an output name for prefix {prefix!r}")
        _M_ARTIFACTS.inc(tags={"kind": kind})
        logger.info("artifact %s written for prompt %s node %s (%s/%s)", artifact_id, ctx.prompt_id, node_id, subfolder, filename)
        return {"filename": filename, "subfolder": subfolder, "type": kind}

    async def save_images(self, images: np.ndarray, *, filename_prefix: str, kind: str, node_id: str, ctx: Any) -> list[dict[str, Any]]:
        return [await asyncio.to_thread(self._save_one, images[i], filename_prefix, kind, node_id, ctx)
                for i in range(images.shape[0])]

    # -- uploads and reads ------------------------------------------------------------------------
    def record_upload(self, data: bytes, name: str, subfolder: str, submitted_by: str | None = None) -> Artifact:
        """An uploaded input becomes an artifact (a lineage parent of what is made from it)."""
        key = self.blobs.put(data, "application/octet-stream")
        existing = self.records.by_name(kind="input", subfolder=subfolder, filename=name)
        if existing is not None and existing.blob_key == key:
            return existing
        from PIL import Image

        with Image.open(io.BytesIO(data)) as probe:
            mime = Image.MIME.get(probe.format or "", "application/octet-stream")
        if existing is not None:
            # Overwritten upload: the old record keeps its lineage under a retired name.
            self.records.rename_artifact(existing.id, f"{existing.filename}~{existing.id}")
        try:
            return self.records.add_artifact(artifact_id=new_artifact_id(), blob_key=key, kind="input", filename=name,
                                             subfolder=subfolder, mime=mime, size_bytes=len(data), submitted_by=submitted_by)
        except FileExistsError:
            return self.records.by_name(kind="input", subfolder=subfolder, filename=name)  # type: ignore[return-value]

    def read(self, *, kind: str, filename: str, subfolder: str = "") -> tuple[bytes, str]:
        """Bytes and MIME type behind a ComfyUI ``/view`` triple. Raises FileNotFoundError / UnsafePathError."""
        safe_join(Path("/genserve-root"), subfolder, filename)  # same path rules as the file stores
        if kind == "input":
            path = self.inputs.path(filename, subfolder)
            if path.is_file():
                return path.read_bytes(), _mime(path.name)
        art = self.records.by_name(kind=kind, subfolder=subfolder, filename=filename)
        if art is None:
            raise FileNotFoundError(f"{kind}/{subfolder + '/' if subfolder else ''}{filename} not found")
        try:
            return self.blobs.get(art.blob_key), art.mime
        except ArtifactNotFoundError as exc:
            raise FileNotFoundError(str(exc)) from exc

    def lineage(self, artifact_id: str, depth: int = 8) -> dict[str, Any] | None:
        """The graph around an artifact: ancestors (inputs) and descendants (outputs made from it)."""
        root = self.records.get(artifact_id)
        if root is None:
            return None
        nodes: dict[str, Artifact] = {root.id: root}
        edges: set[tuple[str, str]] = set()
        frontier = [root]
        for _ in range(depth):
            nxt = []
            for art in frontier:
                for pid in art.parents:
                    edges.add((pid, art.id))
                    if pid not in nodes and (p := self.records.get(pid)) is not None:
                        nodes[pid] = p
                        nxt.append(p)
            frontier = nxt
        frontier = [root]
        for _ in range(depth):
            nxt = []
            for art in frontier:
                for child in self.records.children(art.id):
                    edges.add((art.id, child.id))
                    if child.id not in nodes:
                        nodes[child.id] = child
                        nxt.append(child)
            frontier = nxt
        return {
            "root": root.id,
            "nodes": [{"id": a.id, "kind": a.kind, "filename": a.filename, "prompt_id": a.prompt_id,
                       "workflow_hash": a.workflow_hash, "sha256": a.blob_key} for a in nodes.values()],
            "edges": [{"from": a, "to": b, "relationship": "inputTo"} for a, b in sorted(edges)],
        }

    def resolve_watermark(self, payload: str) -> str | None:
        art = self.records.by_watermark(payload)
        return art.id if art else None


def _mime(name: str) -> str:
    import mimetypes

    return mimetypes.guess_type(name)[0] or "application/octet-stream"
