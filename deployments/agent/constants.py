"""Constants and environment variable names of the agent runner (env vars prefixed ``GENSERVE_``)."""

from __future__ import annotations

from pathlib import Path

# -- run statuses -------------------------------------------------------------------------
QUEUED = "queued"
RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"
MAX_STEPS = "max_steps"
BUDGET_EXCEEDED = "budget_exceeded"
LOOP_DETECTED = "loop_detected"
CANCELLED = "cancelled"
ERROR = "error"

#: Every run ends in exactly one of these.
FINAL_STATUSES = (SUCCEEDED, FAILED, MAX_STEPS, BUDGET_EXCEEDED, LOOP_DETECTED, CANCELLED, ERROR)
ACTIVE_STATUSES = (QUEUED, RUNNING)

# -- step kinds ---------------------------------------------------------------------------
STEP_TOOL = "tool"                # the model chose a tool; the observation is its result (or the error)
STEP_FINAL = "final_answer"       # the model answered
STEP_PARSE_ERROR = "parse_error"  # the model's output could not be read as an action
STEP_GUARDRAIL = "guardrail"      # a guardrail stopped the run before the chosen action ran

#: The pseudo-action a policy uses to answer.
FINAL_ANSWER_ACTION = "final_answer"

# -- observation error types (closed set, snake_case) -------------------------------------
OBS_PARSE_ERROR = "parse_error"
OBS_UNKNOWN_TOOL = "unknown_tool"
OBS_TOOL_NOT_ALLOWED = "tool_not_allowed"
OBS_INVALID_ARGUMENTS = "invalid_arguments"
OBS_TOOL_ERROR = "tool_error"
OBS_TOOL_TIMEOUT = "tool_timeout"
OBS_CANCELLED = "cancelled"
OBS_LOOP_DETECTED = "loop_detected"
OBS_BUDGET_EXCEEDED = "budget_exceeded"

# -- paths and env vars -------------------------------------------------------------------
PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULT_PROFILES_DIR = PACKAGE_DIR / "profiles"
DEFAULT_PRICE_TABLE = PACKAGE_DIR / "prices.yaml"
# NOTE: the viewer page lives with the other static files of the serving layer; located by
# path (not by importing ``serve``) so this package keeps its imports one-directional.
TRAJECTORY_VIEWER_HTML = PACKAGE_DIR.parents[1] / "serve" / "static" / "trajectory.html"
DEFAULT_EXAMPLES_DIR = PACKAGE_DIR.parents[1] / "graphs" / "examples"

ENV_TRACING_EXPORTER = "GENSERVE_AGENT_TRACING_EXPORTER"  # none (default) | console | otlp
ENV_TRACING_CAPTURE_CONTENT = "GENSERVE_AGENT_TRACING_CAPTURE_CONTENT"  # 1 to record thoughts/answers on spans
ENV_OTLP_ENDPOINT = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
