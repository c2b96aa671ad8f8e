"""Pydantic models of the provenance package: what goes into a manifest and what verify reports."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from serve.provenance.watermark import WatermarkResult


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace: the form whose sha256 is the workflow hash."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def workflow_hash(workflow: dict[str, Any]) -> str:
    """sha256 (hex) of a workflow's canonical JSON."""
    return hashlib.sha256(canonical_json(workflow).encode("utf-8")).hexdigest()


class ModelRef(BaseModel):
    """A model file that took part in a generation."""

    name: str = Field(description="File name as the workflow names it, e.g. 'v1-5-pruned-emaonly.safetensors'.")
    sha256: str | None = Field(default=None, description="sha256 (hex) of the file's bytes.")
    kind: str | None = Field(default=None, description="checkpoint, controlnet, lora, vae, clip, ...")


class GenerationInfo(BaseModel):
    """What made an image: recorded in the ``org.genserve.generation`` assertion.

    ``workflow_hash`` is filled from ``workflow`` when not given.
    """

    model_config = ConfigDict(extra="forbid")

    artifact_id: str | None = Field(default=None, description="genserve artifact id of this output.")
    job_id: str | None = Field(default=None, description="Job (prompt) id that produced it.")
    workflow: dict[str, Any] | None = Field(default=None, description="ComfyUI API-format workflow.")
    workflow_hash: str | None = Field(default=None, description="sha256 of the workflow's canonical JSON.")
    models: list[ModelRef] = Field(default_factory=list, description="Model files used.")
    seeds: list[int] = Field(default_factory=list, description="Seeds, in sampler order.")
    sampler: str | None = Field(default=None, description="Sampler name, e.g. 'euler'.")
    scheduler: str | None = Field(default=None, description="Scheduler name, e.g. 'normal'.")
    steps: int | None = Field(default=None, ge=0, description="Denoising steps.")
    cfg: float | None = Field(default=None, description="Classifier-free guidance scale.")
    denoise: float | None = Field(default=None, ge=0, le=1, description="Denoise strength.")
    width: int | None = Field(default=None, ge=1, description="Output width in pixels.")
    height: int | None = Field(default=None, ge=1, description="Output height in pixels.")
    extra: dict[str, Any] = Field(default_factory=dict, description="Anything else worth recording.")

    @model_validator(mode="after")
    def _fill_hash(self) -> "GenerationInfo":
        if self.workflow is not None:
            computed = workflow_hash(self.workflow)
            if self.workflow_hash is None:
                self.workflow_hash = computed
            elif self.workflow_hash != computed:
                raise ValueError(
                    f"workflow_hash {self.workflow_hash} does not match the workflow (sha256 of its canonical JSON is {computed})"
                )
        return self


class Ingredient(BaseModel):
    """An input image (control image, img2img source, upload) recorded as a C2PA ingredient.

    If the image carries its own C2PA manifest, c2pa keeps that manifest inside ours.
    """

    data: bytes = Field(repr=False, description="The image file's bytes, as received.")
    title: str = Field(description="A name for it, e.g. the uploaded file name.")
    mime: str | None = Field(default=None, description="MIME type; sniffed from the bytes when None.")
    relationship: str = Field(default="inputTo", description="C2PA relationship: inputTo, componentOf or parentOf.")
    role: str | None = Field(default=None, description="control_image, img2img_source, upload, ... (stored as the ingredient description).")


class IngredientSummary(BaseModel):
    """One ingredient of a manifest, as the verify report shows it."""

    title: str | None = None
    format: str | None = None
    relationship: str | None = None
    description: str | None = None
    has_manifest: bool = False
    validation_state: str | None = None


class ManifestSummary(BaseModel):
    """The active manifest, summarised."""

    label: str | None = None
    title: str | None = None
    claim_generator: str | None = None
    signature_issuer: str | None = None
    signature_common_name: str | None = None
    signature_alg: str | None = None
    signed_at: str | None = None
    assertions: list[str] = Field(default_factory=list, description="Assertion labels.")
    actions: list[dict[str, Any]] = Field(default_factory=list)
    generation: dict[str, Any] | None = Field(default=None, description="The org.genserve.generation assertion.")
    ingredients: list[IngredientSummary] = Field(default_factory=list)


class C2paReport(BaseModel):
    """C2PA part of a verify report.

    ``validation_state`` is c2pa's own: ``Invalid``, ``Valid`` (well-formed and correctly signed,
    signer not trusted) or ``Trusted`` (signer chains to a configured trust anchor).
    """

    present: bool = False
    valid: bool = False
    trusted: bool = False
    validation_state: str | None = None
    errors: list[str] = Field(default_factory=list, description="Failure codes with explanations.")
    manifest: ManifestSummary | None = None


class WatermarkReport(BaseModel):
    """Watermark part of a verify report."""

    checked: bool = False
    found: bool = False
    method: str | None = None
    payload: str | None = None
    artifact_id: str | None = Field(default=None, description="Artifact the payload points to, when known.")
    confidence: float | None = None
    reason: str | None = None


class VerifyReport(BaseModel):
    """What `verify` found out about an image."""

    format: str | None = Field(default=None, description="MIME type sniffed from the bytes.")
    width: int | None = None
    height: int | None = None
    c2pa: C2paReport = Field(default_factory=C2paReport)
    watermark: WatermarkReport = Field(default_factory=WatermarkReport)
    pixels_changed_after_signing: bool | None = Field(
        default=None,
        description="True: the signed hash no longer matches the file; False: it matches; None: no manifest to check.",
    )
    artifact_id: str | None = Field(default=None, description="From a valid manifest, else from the watermark.")


class StampedImage(BaseModel):
    """A watermarked, signed image ready for the artifact store."""

    data: bytes = Field(repr=False)
    sha256: str
    mime: str
    width: int
    height: int
    artifact_id: str
    manifest_json: str = Field(repr=False, description="The manifest store as c2pa's Reader reports it.")
    watermark: WatermarkResult
    timings_ms: dict[str, float] = Field(default_factory=dict)
