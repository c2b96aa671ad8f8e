"""Agent profiles: which model, system prompt, tools and limits a run uses (YAML files).

A profile is immutable once loaded (pydantic ``frozen``): nothing a tool returns can change
a run's limits. Loading checks every allowed tool against the registry, so a typo fails at
startup with the list of registered tools, not in the middle of a run.

Example (``deployments/agent/profiles/default.yaml``)::

    name: default
    model: smollm2-135m-instruct
    system_prompt: You are a careful assistant ...
    allowed_tools: [calculator, generate_image@1.0.0]
    max_steps: 8
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from deployments.agent.constants import DEFAULT_PROFILES_DIR
from deployments.agent.tools import Tool, ToolRegistry, UnknownToolError


class ProfileError(ValueError):
    """A profile file is missing, malformed, or names a tool the registry does not have."""


class UnknownProfileError(KeyError):
    """No profile under this name."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown profile"


class AgentProfile(BaseModel):
    """What a run may do and spend. Frozen: limits cannot change during a run."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$", description="Profile name used in requests.")
    description: str = Field("", description="What the profile is for.")
    model: str = Field(..., min_length=1, description="Model name (key of the price table and of the LLM engine).")
    system_prompt: str = Field(..., min_length=1, max_length=20000, description="The system prompt.")
    allowed_tools: tuple[str, ...] = Field((), description="Tool allow-list: 'name' (latest) or 'name@version'.")
    max_steps: int = Field(10, ge=1, le=500, description="Most steps (model calls) per run.")
    max_tokens: int = Field(20000, ge=1, description="Most tokens (input + output, all steps) per run.")
    max_cost_usd: float | None = Field(None, ge=0, description="Most spend per run; None for no cost limit.")
    timeout_s: float = Field(300.0, gt=0, le=86400, description="Wall-clock limit of the whole run.")
    tool_timeout_s: float = Field(60.0, gt=0, le=3600, description="Limit of one tool call.")
    temperature: float = Field(0.0, ge=0, le=2, description="Sampling temperature of the model.")
    max_tokens_per_step: int = Field(512, ge=1, le=32768, description="Most output tokens of one model call.")
    seed: int | None = Field(0, description="Sampling seed passed to the model (None for unseeded).")
    loop_repeat_threshold: int = Field(3, ge=2, le=50,
                                       description="Stop when the same action and arguments come this many times in a row.")
    loop_alternation_cycles: int = Field(2, ge=2, le=50,
                                         description="Stop when two actions alternate A,B,A,B,... for this many cycles.")
    max_consecutive_errors: int = Field(4, ge=1, le=50,
                                        description="End as 'failed' after this many unusable steps in a row "
                                                    "(unparseable output, unknown/disallowed tool, invalid arguments).")

    @field_validator("allowed_tools", mode="before")
    @classmethod
    def _tools_list(cls, v: Any) -> Any:
        if isinstance(v, str):
            raise ValueError("allowed_tools must be a list of tool names, not a string")
        return tuple(v) if v is not None else ()

    def resolve_tools(self, registry: ToolRegistry) -> list[Tool]:
        """The allowed tools, versions pinned (bare names resolve to the latest version).

        Raises:
            ProfileError: a tool is not registered (names the registered ones).
        """
        tools: list[Tool] = []
        for ref in self.allowed_tools:
            try:
                tool = registry.resolve(ref)
            except UnknownToolError as exc:
                raise ProfileError(f"profile {self.name!r} allows tool {ref!r}, which is not registered ({exc}); "
                                   f"registered tools: {', '.join(registry.refs()) or '(none)'}") from None
            if any(t.name == tool.name for t in tools):
                raise ProfileError(f"profile {self.name!r} lists tool {tool.name!r} twice; keep one version")
            tools.append(tool)
        return tools


def load_profile(path: str | Path, registry: ToolRegistry | None = None) -> AgentProfile:
    """Load and validate one YAML profile; checks its tools when ``registry`` is given.

    Raises:
        ProfileError: unreadable file, bad YAML, invalid fields, or an unknown tool.
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ProfileError(f"cannot read agent profile {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ProfileError(f"agent profile {path} must be a YAML mapping")
    data.setdefault("name", path.stem)
    try:
        profile = AgentProfile.model_validate(data)
    except ValidationError as exc:
        raise ProfileError(f"invalid agent profile {path}: {exc}") from None
    if registry is not None:
        profile.resolve_tools(registry)
    return profile


def load_profiles(directory: str | Path = DEFAULT_PROFILES_DIR,
                  registry: ToolRegistry | None = None) -> dict[str, AgentProfile]:
    """Every ``*.yaml`` / ``*.yml`` profile of ``directory``, keyed by name.

    Raises:
        ProfileError: as `load_profile`, or two files declare the same name.
    """
    profiles: dict[str, AgentProfile] = {}
    for path in sorted(Path(directory).glob("*.y*ml")):
        profile = load_profile(path, registry)
        if profile.name in profiles:
            raise ProfileError(f"two agent profiles are named {profile.name!r} (second one in {path})")
        profiles[profile.name] = profile
    return profiles


def get_profile(profiles: Mapping[str, AgentProfile], name: str) -> AgentProfile:
    """``profiles[name]``, or `UnknownProfileError` naming the known profiles."""
    try:
        return profiles[name]
    except KeyError:
        raise UnknownProfileError(f"no agent profile {name!r}; known profiles: {', '.join(sorted(profiles))}") from None


__all__ = ["AgentProfile", "ProfileError", "UnknownProfileError", "get_profile", "load_profile", "load_profiles"]
