"""`AgentRunnerConfig`: how the agent runner deployment is wired."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field

from deployments.agent.constants import DEFAULT_PRICE_TABLE, DEFAULT_PROFILES_DIR


class AgentRunnerConfig(BaseModel):
    """Settings of the agent runner (store, profiles, prices, image service, tracing)."""

    database_url: str = Field("sqlite:///data/genserve.db",
                              description="SQLAlchemy URL of the shared store (the same one as the job store).")
    profiles_dir: Path = Field(DEFAULT_PROFILES_DIR, description="Folder of agent profile YAML files.")
    price_table: Path = Field(DEFAULT_PRICE_TABLE, description="YAML price table (USD per million tokens).")
    image_service_url: str = Field("http://127.0.0.1:8000",
                                   description="Base URL of the image service the image tools call.")
    json_schema_mode: bool = Field(True, description="Constrain the model's steps with a JSON schema.")
    tracing_exporter: str | None = Field(None, description="none | console | otlp; None reads "
                                                           "GENSERVE_AGENT_TRACING_EXPORTER (default none).")
    cancel_poll_s: float | None = Field(0.5, gt=0, description="How often a running step checks the store's "
                                                               "cancel flag (requests from other replicas).")
