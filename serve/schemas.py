"""Typed request/response models at the HTTP boundary (ComfyUI shapes where ComfyUI defines them)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


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
    filename: str
    subfolder: str = ""
    type: str = "output"
    url: str
    data_base64: str | None = None


class WorkflowRunRequest(BaseModel):
    """``POST /v1/workflows/run``: run a workflow and wait for its images."""

    workflow: dict[str, Any] = Field(..., description="API-format workflow.")
    client_id: str | None = Field(None, max_length=128)
    timeout_s: float = Field(300.0, gt=0, le=3600, description="How long to wait before answering 504 (the job keeps running).")
    include_data: bool = Field(True, description="Inline the images as base64 PNG.")


class WorkflowRunResponse(BaseModel):
    prompt_id: str
    status: str
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
