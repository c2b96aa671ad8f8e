"""Typed request/response models at the HTTP boundary (ComfyUI shapes where ComfyUI defines them)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


class PromptRequest(BaseModel):
    """ComfyUI's ``POST /prompt`` body."""

    model_config = ConfigDict(extra="allow")

    prompt: dict[str, Any] | None = Field(None, description="API-format workflow: node id -> {class_type, inputs}.")
    client_id: str | None = Field(None, max_length=128, description="Websocket client id that receives this prompt's events.")
    extra_data: dict[str, Any] = Field(default_factory=dict, description="Free-form data kept with the job (ComfyUI: extra_pnginfo, ...).")
    prompt_id: str | None = Field(None, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$", description="Caller-chosen id (idempotent resubmission).")
    front: bool = Field(False, description="Queue in front of the pending prompts.")
    number: float | None = Field(None, description="Accepted for compatibility; ordering is the server's.")
    partial_execution_targets: list[str] | None = Field(None, description="Only run these output nodes.")


class PromptResponse(BaseModel):
    prompt_id: str
    number: int
    node_errors: dict[str, Any] = Field(default_factory=dict)


class PromptErrorResponse(BaseModel):
    error: dict[str, Any] | None
    node_errors: dict[str, Any] = Field(default_factory=dict)


class QueueRequest(BaseModel):
    """``POST /queue``: ``{"clear": true}`` or ``{"delete": [prompt_id, ...]}``."""

    clear: bool = False
    delete: list[str] | None = None


class InterruptRequest(BaseModel):
    prompt_id: str | None = None


class HistoryRequest(BaseModel):
    clear: bool = False
    delete: list[str] | None = None


class UploadResponse(BaseModel):
    name: str
    subfolder: str
    type: str


class ImageRef(BaseModel):
    artifact_id: str | None = None
    filename: str
    subfolder: str = ""
    type: str = "output"
    url: str
    data_base64: str | None = None


class WorkflowRegisterRequest(BaseModel):
    """``POST /v1/workflows``: register a named, versioned workflow."""

    name: str = Field(..., min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._-]+$")
    workflow: dict[str, Any] = Field(..., description="API-format workflow.")
    description: str = Field("", max_length=2000)


class WorkflowVersionPublic(BaseModel):
    name: str
    version: int
    ref: str
    content_hash: str
    description: str = ""
    created_at: float


class WorkflowRunRequest(BaseModel):
    """``POST /v1/workflows/run``: run a workflow (inline, or a registered ``name@version``) and wait for its images."""

    workflow: dict[str, Any] | None = Field(None, description="API-format workflow.")
    workflow_ref: str | None = Field(None, max_length=200, description="Registered workflow: 'name@version' or 'name' (latest).")
    overrides: dict[str, dict[str, Any]] = Field(default_factory=dict,
                                                 description="Per-node input overrides: {node_id: {input: value}} (e.g. seed, text).")
    client_id: str | None = Field(None, max_length=128)
    timeout_s: float = Field(300.0, gt=0, le=3600, description="How long to wait before answering 504 (the job keeps running).")
    include_data: bool = Field(True, description="Inline the images as base64 PNG.")

    @model_validator(mode="after")
    def _one_workflow(self) -> "WorkflowRunRequest":
        if (self.workflow is None) == (self.workflow_ref is None):
            raise ValueError("give exactly one of 'workflow' or 'workflow_ref'")
        return self


class WorkflowRunResponse(BaseModel):
    prompt_id: str
    status: str
    workflow_ref: str | None = None
    outputs: dict[str, Any] = Field(default_factory=dict)
    images: list[ImageRef] = Field(default_factory=list)
    cached_nodes: list[str] = Field(default_factory=list)
    error: dict[str, Any] | None = None
    duration_s: float | None = None


class HealthResponse(BaseModel):
    status: str
    queue_remaining: int
    runner: str
    active: list[str]
