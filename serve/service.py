"""The application service behind the routes: stores, validation, the runner. No HTTP here.

One instance per ingress replica. Built by the ingress deployment with Serve backends, or by
tests and ``genserve run`` with in-process backends.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

from graphs.backends import Backends
from graphs.errors import WorkflowParseError
from graphs.executor import Executor, OutputCache
from graphs.registry import NodeRegistry, default_registry
from graphs.validation import ValidationResult, validate_workflow
from graphs.workflow import parse_workflow
from serve.config import AppArgs
from serve.artifacts import ArtifactService, open_store_from_args
from serve.runner import JobRunner
from serve.stores.files import InputImageStore
from serve.stores.jobs import TERMINAL, Job, JobStore
from serve.stores.records import RecordStore

logger = logging.getLogger(__name__)

MODEL_SOURCES = {"checkpoints": "checkpoints", "controlnet": "controlnet", "loras": "loras", "vae": "vae"}


def build_provenance(args: AppArgs) -> Any:
    """The provenance service for these args (dev credentials under data_dir unless configured)."""
    from serve.provenance import ProvenanceService

    return ProvenanceService(args.data_dir, watermark_method=args.watermark_method,
                             trust_development_ca=args.trust_development_ca, training_mining=args.training_mining)


class SubmitError(Exception):
    """A prompt was refused; ``body`` is ComfyUI's 400 body."""

    def __init__(self, body: dict[str, Any]):
        self.body = body
        super().__init__(body.get("error", {}).get("message", "invalid prompt") if body.get("error") else "invalid prompt")


def _error_body(type_: str, message: str, details: str = "") -> dict[str, Any]:
    return {"error": {"type": type_, "message": message, "details": details, "extra_info": {}}, "node_errors": {}}


class GenServeService:
    """Everything an ingress replica does besides HTTP.

    Args:
        args: app arguments (folders, database URL, runner limits).
        backends: stage backends (Serve handles or in-process models).
        registry: node registry (default: all built-in nodes).
        provenance: a ``ProvenanceService``; default: built from ``args`` (``None`` when
            ``args.provenance`` is off).
    """

    def __init__(self, args: AppArgs, backends: Backends, registry: NodeRegistry | None = None,
                 provenance: Any = "auto"):
        from deployments.checkpoints.layout import ModelsDir

        self.args = args
        self.data_dir = Path(args.data_dir)
        self.store = JobStore(args.resolved_database_url)
        self.registry = registry or default_registry()
        self.models = ModelsDir(Path(args.models_dir))
        self.inputs = InputImageStore(self.data_dir / "input", max_bytes=args.max_upload_bytes)
        self.records = RecordStore(args.resolved_database_url)
        self.blobs = open_store_from_args(args.artifact_store, args.s3_endpoint_url, self.data_dir)
        if provenance == "auto":
            provenance = build_provenance(args) if args.provenance else None
        self.artifacts = ArtifactService(self.records, self.blobs, self.inputs, provenance, self.models)
        if provenance is not None and provenance.resolve_watermark is None:
            provenance.resolve_watermark = self.artifacts.resolve_watermark
        self.provenance = provenance
        self.sink = self.artifacts
        self.cache = OutputCache()
        self.executor = Executor(self.registry, self.cache)
        self.backends = backends
        self.runner = JobRunner(
            store=self.store, executor=self.executor, backends=backends, sink=self.sink, inputs=self.inputs,
            max_concurrent=args.max_concurrent_jobs, lease_s=args.lease_s, max_attempts=args.max_attempts,
        )

    # -- choices for validation / object_info ---------------------------------------------
    def choices(self, source: str) -> list[str]:
        if source == "input_images":
            return self.inputs.list()
        if source in MODEL_SOURCES:
            try:
                return self.models.list(MODEL_SOURCES[source])
            except FileNotFoundError:
                return []
        raise ValueError(f"unknown choice source {source!r}")

    # -- submit ---------------------------------------------------------------------------
    def validate(self, prompt: Any, partial: list[str] | None = None) -> tuple[Any, ValidationResult]:
        try:
            wf = parse_workflow(prompt)
        except WorkflowParseError as exc:
            raise SubmitError(_error_body("invalid_prompt", str(exc))) from exc
        result = validate_workflow(wf, self.registry, self.choices, context=self, partial_execution_targets=partial)
        return wf, result

    def submit(self, prompt: Any, *, client_id: str | None = None, extra_data: dict[str, Any] | None = None,
               prompt_id: str | None = None, front: bool = False, partial: list[str] | None = None,
               submitted_by: str | None = None) -> tuple[Job, ValidationResult]:
        """Validate and enqueue (committed before returning).

        Raises:
            SubmitError: no prompt, bad JSON or no valid output (body is ComfyUI's 400 shape).
        """
        if prompt is None:
            raise SubmitError(_error_body("no_prompt", "No prompt provided", "No prompt provided"))
        wf, result = self.validate(prompt, partial)
        if not result.ok:
            raise SubmitError(result.response_body())
        if prompt_id is not None:
            existing = self.store.get(prompt_id)
            if existing is not None:
                return existing, result  # idempotent resubmission with the same id
        job = self.store.create_job(
            prompt=wf.raw, output_ids=result.output_node_ids, client_id=client_id, extra_data=extra_data or {},
            prompt_id=prompt_id, front=front, workflow_hash=wf.content_hash(), submitted_by=submitted_by,
        )
        
        self.runner.wake()
        return job, result

    async def wait(self, prompt_id: str, timeout_s: float) -> Job | None:
        """Poll the shared store until the job is finished (any replica may run it)."""
        deadline = time.monotonic() + timeout_s
        delay = 0.02
        while True:
            job = await asyncio.to_thread(self.store.get, prompt_id)
            if job is not None and job.status in TERMINAL:
                return job
            if time.monotonic() > deadline:
                return job
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 0.25)

    def resolve_workflow_ref(self, ref: str) -> Any:
        """``name@version`` or ``name`` (latest) -> registered workflow version; 404 HTTPException when unknown."""
        from fastapi import HTTPException

        name, _, ver = ref.partition("@")
        if ver and not ver.isdigit():
            raise HTTPException(status_code=400, detail=f"workflow ref {ref!r}: version must be an integer")
        version = self.records.get_workflow(name, int(ver) if ver else None)
        if version is None:
            raise HTTPException(status_code=404, detail=f"unknown workflow {ref!r}; register it with POST /v1/workflows")
        return version

    # -- ComfyUI views --------------------------------------------------------------------
    @staticmethod
    def queue_item(job: Job) -> list[Any]:
        return [job.number, job.prompt_id, job.prompt, job.extra_data, job.output_ids]

    def history_entry(self, job: Job) -> dict[str, Any]:
        status_str = {"success": "success", "error": "error", "interrupted": "error"}.get(job.status, job.status)
        return {
            "prompt": self.queue_item(job),
            "outputs": job.outputs,
            "status": {"status_str": status_str, "completed": job.status == "success", "messages": job.messages},
            "meta": {nid: {"node_id": nid, "display_node": nid, "parent_node": None, "real_node_id": nid}
                     for nid in job.outputs},
        }
