"""HTTP models of the ``/v1/agent`` routes (``<Noun>Create`` / ``<Noun>Public``)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class AgentRunCreate(BaseModel):
    """``POST /v1/agent/runs``."""

    profile: str = Field("default", min_length=1, max_length=64, description="Agent profile name.")
    input: str = Field(..., min_length=1, max_length=20000, description="The task for the agent.")


class AgentRunPublic(BaseModel):
    id: str
    status: str = Field(..., description="queued, running, or a final status "
                                         "(succeeded, failed, max_steps, budget_exceeded, loop_detected, cancelled, error).")
    profile: str
    input: str
    model: str | None = None
    final_answer: str | None = None
    error: dict[str, Any] | None = None
    tools: dict[str, str] | None = Field(None, description="Tool name -> exact version the run could use.")
    steps: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0
    cancel_requested: bool = False
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None

    @classmethod
    def from_run(cls, run: Any) -> "AgentRunPublic":
        return cls(id=run.id, status=run.status, profile=run.profile, input=run.input, model=run.model,
                   final_answer=run.final_answer, error=run.error, tools=run.tools, steps=run.steps,
                   tokens_in=run.tokens_in, tokens_out=run.tokens_out, cost_usd=run.cost_usd,
                   cancel_requested=run.cancel_requested, created_at=run.created_at, started_at=run.started_at,
                   finished_at=run.finished_at)


class AgentRunsPublic(BaseModel):
    data: list[AgentRunPublic]
    count: int


class ToolCallPublic(BaseModel):
    name: str = Field(..., description="Tool name, or 'final_answer'.")
    version: str | None = Field(None, description="Exact tool version (None when the tool was not resolved).")
    arguments: Any = None


class AgentStepPublic(BaseModel):
    index: int
    kind: str = Field(..., description="tool, final_answer, parse_error or guardrail.")
    thought: str = ""
    tool_call: ToolCallPublic | None = Field(None, description="The action the model chose (None when unparseable).")
    observation: Any = None
    raw_text: str | None = None
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0
    latency_ms: float = 0.0
    llm_latency_ms: float | None = None
    tool_latency_ms: float | None = None
    created_at: float

    @classmethod
    def from_step(cls, step: Any) -> "AgentStepPublic":
        call = (ToolCallPublic(name=step.tool, version=step.tool_version, arguments=step.arguments)
                if step.tool is not None else None)
        return cls(index=step.index, kind=step.kind, thought=step.thought, tool_call=call,
                   observation=step.observation, raw_text=step.raw_text, tokens_in=step.tokens_in,
                   tokens_out=step.tokens_out, cost_usd=step.cost_usd, latency_ms=step.latency_ms,
                   llm_latency_ms=step.llm_latency_ms, tool_latency_ms=step.tool_latency_ms,
                   created_at=step.created_at)


class AgentTrajectoryPublic(BaseModel):
    run: AgentRunPublic
    steps: list[AgentStepPublic]


class AgentProfilePublic(BaseModel):
    name: str
    description: str
    model: str
    allowed_tools: list[str]
    max_steps: int
    max_tokens: int
    max_cost_usd: float | None
    timeout_s: float
