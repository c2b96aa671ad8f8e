"""`HttpImageEngineClient`: the image tools' view of the image service, over its HTTP API.

* ``run_workflow(name, version, params)`` loads ``graphs/examples/<name>.json``, writes the
  agent's parameters into it (`apply_workflow_params`) and calls ``POST /v1/workflows/run``.
  A workflow's *version* is the first 12 hex digits of the sha256 of its file, so a
  trajectory pins the exact graph that ran; asking for another version fails loudly.
* Artifact ids come from the answer of `/v1/workflows/run`; `get_artifact` reads metadata
  from the artifact store (`/v1/artifacts`).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
from pathlib import Path
from typing import Any

import httpx

from deployments.agent.constants import DEFAULT_EXAMPLES_DIR

logger = logging.getLogger(__name__)

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,63}$")
_SAMPLERS = ("KSampler", "KSamplerAdvanced")
_KNOWN_PARAMS = ("prompt", "negative_prompt", "seed", "num_inference_steps", "guidance_scale", "width", "height")


class WorkflowNotFoundError(LookupError):
    """No workflow under this name, or not at the requested version."""


class ImageEngineError(RuntimeError):
    """The image service answered with an error, or not at all."""


# -- artifact ids ------------------------------------------------------------------------------


def artifact_id_for_image(image: dict[str, Any]) -> str:
    """The artifact id of one image of a ``/v1/workflows/run`` answer."""
    return str(image.get("artifact_id") or image["filename"])


# -- workflows --------------------------------------------------------------------------------


def workflow_version(workflow_bytes: bytes) -> str:
    return hashlib.sha256(workflow_bytes).hexdigest()[:12]


def load_named_workflow(name: str, version: str | None = None,
                        examples_dir: Path = DEFAULT_EXAMPLES_DIR) -> tuple[dict[str, Any], str]:
    """Load ``<examples_dir>/<name>.json``; returns ``(workflow, version)``.

    Raises:
        WorkflowNotFoundError: bad name, missing file, or ``version`` differs from the file's.
    """
    if not _NAME_RE.match(name):
        raise WorkflowNotFoundError(f"invalid workflow name {name!r}")
    path = Path(examples_dir) / f"{name}.json"
    if not path.is_file():
        known = sorted(p.stem for p in Path(examples_dir).glob("*.json"))
        raise WorkflowNotFoundError(f"no workflow named {name!r}; known workflows: {', '.join(known)}")
    raw = path.read_bytes()
    current = workflow_version(raw)
    if version is not None and version != current:
        raise WorkflowNotFoundError(f"workflow {name!r} is at version {current}, not {version}")
    return json.loads(raw), current


def _linked_node(workflow: dict[str, Any], link: Any) -> tuple[str, dict[str, Any]] | None:
    if isinstance(link, list) and len(link) == 2 and str(link[0]) in workflow:
        return str(link[0]), workflow[str(link[0])]
    return None


def apply_workflow_params(workflow: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """Write the agent's parameters into an API-format workflow (a modified copy).

    ``prompt`` / ``negative_prompt`` go to the ``CLIPTextEncode`` nodes feeding the sampler's
    ``positive`` / ``negative`` inputs; ``seed``, ``num_inference_steps`` (steps) and
    ``guidance_scale`` (cfg) to every ``KSampler``; ``width`` / ``height`` to the
    ``EmptyLatentImage`` feeding it.

    Raises:
        ValueError: an unknown parameter, or the workflow has no node to take a given one.
    """
    unknown = sorted(set(params) - set(_KNOWN_PARAMS))
    if unknown:
        raise ValueError(f"unknown workflow parameters {unknown}; supported: {list(_KNOWN_PARAMS)}")
    wf = json.loads(json.dumps(workflow))
    samplers = [(nid, n) for nid, n in wf.items() if isinstance(n, dict) and n.get("class_type") in _SAMPLERS]
    if not samplers:
        raise ValueError("the workflow has no KSampler node to take the agent's parameters")
    applied: set[str] = set()
    for _, node in samplers:
        inputs = node.setdefault("inputs", {})
        for param, target in (("prompt", "positive"), ("negative_prompt", "negative")):
            if param in params:
                linked = _linked_node(wf, inputs.get(target))
                if linked and linked[1].get("class_type") == "CLIPTextEncode":
                    linked[1]["inputs"]["text"] = params[param]
                    applied.add(param)
        seed_key = "noise_seed" if node["class_type"] == "KSamplerAdvanced" else "seed"
        for param, key in (("seed", seed_key), ("num_inference_steps", "steps"), ("guidance_scale", "cfg")):
            if param in params:
                inputs[key] = params[param]
                applied.add(param)
        linked = _linked_node(wf, inputs.get("latent_image"))
        if linked and linked[1].get("class_type") == "EmptyLatentImage":
            for param in ("width", "height"):
                if param in params:
                    linked[1]["inputs"][param] = params[param]
                    applied.add(param)
    missing = sorted(set(params) - applied)
    if missing:
        raise ValueError(f"this workflow has no node for the parameters {missing}")
    return wf


# -- metrics ----------------------------------------------------------------------------------


def image_metrics(data: bytes) -> dict[str, Any]:
    """Objective, reference-free metrics of an encoded image.

    ``brightness`` and ``contrast`` are the mean and standard deviation of luma (0-255);
    ``sharpness`` the variance of a 4-neighbour Laplacian of luma; ``colorfulness`` the
    Hasler & Suesstrunk (2003) measure; ``entropy`` the Shannon entropy (bits) of the luma histogram.
    """
    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        fmt = img.format
        rgb = np.asarray(img.convert("RGB"), dtype=np.float64)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    luma = 0.299 * r + 0.587 * g + 0.114 * b
    lap = (-4 * luma[1:-1, 1:-1] + luma[:-2, 1:-1] + luma[2:, 1:-1] + luma[1:-1, :-2] + luma[1:-1, 2:])
    rg, yb = r - g, 0.5 * (r + g) - b
    colorfulness = float(np.sqrt(rg.std() ** 2 + yb.std() ** 2) + 0.3 * np.sqrt(rg.mean() ** 2 + yb.mean() ** 2))
    hist = np.bincount(np.clip(luma, 0, 255).astype(np.uint8).ravel(), minlength=256).astype(np.float64)
    p = hist[hist > 0] / hist.sum()
    return {
        "width": int(rgb.shape[1]), "height": int(rgb.shape[0]), "format": fmt,
        "brightness": round(float(luma.mean()), 3), "contrast": round(float(luma.std()), 3),
        "sharpness": round(float(lap.var()) if lap.size else 0.0, 3),
        "colorfulness": round(colorfulness, 3), "entropy": round(float(-(p * np.log2(p)).sum()), 4),
    }


# -- the client -------------------------------------------------------------------------------


class HttpImageEngineClient:
    """`ImageEngineClient` over the image service's HTTP API.

    Args:
        base_url (`str`): e.g. ``http://127.0.0.1:8000``.
        examples_dir (`Path`, *optional*): where named workflows live (``graphs/examples``).
        timeout_s (`float`, *optional*, defaults to 300): per request; the tool timeout usually cuts first.
        history_items (`int`, *optional*, defaults to 200): how far back ``get_artifact`` looks for provenance.
        client (`httpx.AsyncClient`, *optional*): injected in tests (e.g. with an ASGI transport).
    """

    def __init__(self, base_url: str, *, examples_dir: Path = DEFAULT_EXAMPLES_DIR, timeout_s: float = 300.0,
                 history_items: int = 200, client: httpx.AsyncClient | None = None):
        self.base_url = base_url.rstrip("/")
        self.examples_dir = Path(examples_dir)
        self.history_items = history_items
        self._client = client or httpx.AsyncClient(base_url=self.base_url, timeout=timeout_s)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return await self._client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ImageEngineError(f"image service at {self.base_url} unreachable: {type(exc).__name__}: {exc}") from None

    async def run_workflow(self, name: str, version: str | None, params: dict[str, Any]) -> dict[str, Any]:
        workflow, current = load_named_workflow(name, version, self.examples_dir)
        workflow = apply_workflow_params(workflow, params)
        resp = await self._request("POST", "/v1/workflows/run", json={"workflow": workflow, "include_data": False})
        try:
            body = resp.json()
        except ValueError:
            raise ImageEngineError(f"image service answered {resp.status_code} with a non-JSON body") from None
        if resp.status_code != 200 or body.get("status") != "success":
            detail = body.get("error") or body.get("detail") or body
            raise ImageEngineError(f"workflow {name!r} did not succeed (HTTP {resp.status_code}): "
                                   f"{json.dumps(detail, default=str)[:500]}")
        images = [{"artifact_id": artifact_id_for_image(img), "url": img.get("url")} for img in body.get("images", [])]
        return {"artifact_ids": [i["artifact_id"] for i in images], "prompt_id": body.get("prompt_id"),
                "workflow": name, "workflow_version": current, "images": images}

    async def _meta(self, artifact_id: str) -> dict[str, Any] | None:
        if not re.match(r"^[A-Za-z0-9_.-]{1,128}$", artifact_id):
            return None
        resp = await self._request("GET", f"/v1/artifacts/{artifact_id}")
        if resp.status_code == 404:
            return None
        if resp.status_code != 200:
            raise ImageEngineError(f"GET /v1/artifacts/{artifact_id} answered {resp.status_code}")
        return resp.json()

    async def _read(self, artifact_id: str) -> tuple[bytes, str, str] | None:
        meta = await self._meta(artifact_id)
        if meta is None:
            return None
        resp = await self._request("GET", meta["url"])
        if resp.status_code != 200:
            raise ImageEngineError(f"GET {meta['url']} for {artifact_id!r} answered {resp.status_code}")
        return resp.content, resp.headers.get("content-type", ""), meta["url"]

    async def get_artifact(self, artifact_id: str) -> dict[str, Any] | None:
        """Metadata and provenance from the artifact store (``/v1/artifacts/{id}``, its lineage and C2PA summary)."""
        meta = await self._meta(artifact_id)
        if meta is None:
            return None
        out: dict[str, Any] = {
            "artifact_id": artifact_id, "url": meta["url"], "content_type": meta.get("mime"), "size_bytes": meta.get("size_bytes"),
            "sha256": meta.get("sha256"), "prompt_id": meta.get("prompt_id"), "workflow_hash": meta.get("workflow_hash"),
            "workflow_ref": meta.get("workflow_ref"), "models": meta.get("models"), "seeds": meta.get("seeds"),
            "parents": meta.get("parents"),
        }
        lineage = await self._request("GET", f"/v1/artifacts/{artifact_id}/lineage")
        if lineage.status_code == 200:
            out["lineage_edges"] = len(lineage.json().get("edges", []))
        manifest = await self._request("GET", f"/v1/artifacts/{artifact_id}/manifest")
        if manifest.status_code == 200:
            store = manifest.json()
            active = (store.get("manifests") or {}).get(store.get("active_manifest") or "", {})
            out["c2pa"] = {"signed": True, "claim_generator": active.get("claim_generator"),
                           "signer": (active.get("signature_info") or {}).get("common_name")}
        else:
            out["c2pa"] = {"signed": False}
        return out

    async def evaluate(self, artifact_id: str) -> dict[str, Any]:
        read = await self._read(artifact_id)
        if read is None:
            raise LookupError(f"no artifact with id {artifact_id!r}")
        return image_metrics(read[0])
