"""Settings (environment / .env, validated at startup) and the typed app arguments."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from serve.constants import DEFAULT_HOST, DEFAULT_PORT, MAX_UPLOAD_BYTES_DEFAULT


class Settings(BaseSettings):
    """Process-level settings; every field can be set as ``GENSERVE_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="GENSERVE_", env_file=".env", extra="ignore")

    environment: Literal["local", "staging", "production"] = Field(
        "local", description="'local' allows development signing credentials; others require operator credentials."
    )
    data_dir: Path = Field(Path("data"), description="Folder for the SQLite store, inputs, outputs and dev credentials.")
    models_dir: Path = Field(Path("models"), description="ComfyUI-layout models folder (checkpoints, controlnet, loras, vae, llm).")
    database_url: str | None = Field(None, description="SQLAlchemy URL of the shared job store; default: SQLite file in data_dir.")
    host: str = Field(DEFAULT_HOST, description="HTTP bind address of the Serve proxy.")
    port: int = Field(DEFAULT_PORT, description="HTTP port (ComfyUI's default 8188).")
    ray_address: str | None = Field(None, description="Existing Ray cluster to join ('auto' or ray://...); default: start one.")
    num_cpus: float = Field(2, description="Logical CPUs given to a Ray head started by genserve.")
    dashboard_port: int = Field(8265, description="Ray dashboard port.")
    max_upload_bytes: int = Field(MAX_UPLOAD_BYTES_DEFAULT, description="Largest accepted upload in bytes.")
    serve_config: Path | None = Field(None, description="Serve config YAML to deploy instead of the built-in CPU profile.")

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'genserve.db').resolve()}"


@lru_cache
def get_settings() -> Settings:
    """The one accessor, so tests can override settings by clearing the cache or env."""
    return Settings()


class StageOptions(BaseModel):
    """Serve options of one stage deployment (merged over the stage's defaults)."""

    num_replicas: int | Literal["auto"] | None = Field(None, description="Fixed replica count, or 'auto' for autoscaling.")
    autoscaling_config: dict[str, Any] | None = Field(None, description="Ray Serve autoscaling config.")
    ray_actor_options: dict[str, Any] | None = Field(None, description="num_cpus / num_gpus / resources per replica.")
    max_ongoing_requests: int | None = Field(None, description="Concurrent requests a replica accepts.")
    user_config: dict[str, Any] | None = Field(None, description="Batching knobs: max_batch_size, batch_wait_timeout_s, torch_threads.")
    health_check_period_s: float | None = None
    health_check_timeout_s: float | None = None
    logging_config: dict[str, Any] | None = Field(
        None, description="Ray Serve LoggingConfig (encoding, log_level, logs_dir, enable_access_log); default from log_encoding.")


class AppArgs(BaseModel):
    """Arguments of ``serve.app:build_app`` (the ``args:`` block of a Serve config).

    Everything has a default, so ``build_app({})`` serves the demo models on one machine.
    """

    data_dir: str = Field("data", description="Data folder shared by all ingress replicas (same machine) .")
    models_dir: str = Field("models", description="Models folder (ComfyUI layout).")
    database_url: str | None = Field(None, description="Job store URL; default SQLite in data_dir.")
    artifact_store: str | None = Field(None, description="Where outputs go: None = data_dir/output, or s3://bucket/prefix.")
    s3_endpoint_url: str | None = Field(None, description="S3-compatible endpoint URL (MinIO, moto, ...).")
    max_concurrent_jobs: int = Field(8, ge=1, le=256, description="Prompts one ingress replica runs at once.")
    lease_s: float = Field(30.0, gt=1, description="Job lease; a runner that stops heartbeating loses its jobs after this.")
    max_attempts: int = Field(2, ge=1, description="Runs of a job before it is marked failed after lost leases.")
    max_upload_bytes: int = Field(MAX_UPLOAD_BYTES_DEFAULT, gt=0, description="Largest accepted upload.")
    agents: bool = Field(True, description="Deploy the LLM and the agent runner next to the image stages.")
    llm: dict[str, Any] = Field(default_factory=dict, description="LLMConfig fields (engine, model, base_url, ...); models_dir is filled in.")
    image_service_url: str = Field(f"http://127.0.0.1:{DEFAULT_PORT}", description="URL the agent's image tools call (this app's HTTP address).")
    agent_tracing_exporter: str | None = Field(None, description="none | console | otlp for agent spans.")
    ingress: StageOptions = Field(default_factory=StageOptions)
    text_encoder: StageOptions = Field(default_factory=StageOptions)
    sampler: StageOptions = Field(default_factory=StageOptions)
    vae: StageOptions = Field(default_factory=StageOptions)
    llm_stage: StageOptions = Field(default_factory=StageOptions, description="Serve options of the LLM deployment.")
    agent_stage: StageOptions = Field(default_factory=StageOptions, description="Serve options of the AgentRunner deployment.")
    provenance: bool = Field(True, description="Watermark and C2PA-sign every output (turn off only for benchmarks).")
    watermark_method: str | None = Field("dwtDctSvd", description="Invisible watermark method (dwtDctSvd or rivaGan); None disables it.")
    trust_development_ca: bool = Field(False, description="Report images signed by the local development CA as trusted.")
    log_encoding: Literal["JSON", "TEXT"] = Field(
        "JSON", description="Serve log encoding of every deployment: JSON lines carry deployment, replica, request_id and prompt_id.")
    log_level: str = Field("INFO", description="Log level of every deployment (Serve LoggingConfig.log_level).")
    training_mining: dict[str, str] | None = Field(
        None, description="CAWG training/mining assertion entries, e.g. {'cawg.ai_generative_training': 'notAllowed'}.")

    @model_validator(mode="after")
    def _check(self) -> "AppArgs":
        if self.artifact_store and not (self.artifact_store.startswith("s3://") or self.artifact_store.startswith("file://")):
            raise ValueError("artifact_store must be s3://bucket[/prefix] or file:///path")
        return self

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(Path(self.data_dir) / 'genserve.db').resolve()}"
