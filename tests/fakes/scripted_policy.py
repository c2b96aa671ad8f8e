"""`ScriptedPolicyDouble`: a test double of the agent `Policy` that replays pre-written steps.

It stands in for the model in deterministic tests of the ReAct loop and its guardrails. Each
script entry is one of:

* a `PolicyStep` (returned as is, token counts included);
* a dict ``{"thought", "action", "action_input"}`` or ``{"thought", "final_answer"}``, with
  optional ``tokens_in`` / ``tokens_out`` (defaults 10 / 5);
* a string: raw model text, parsed like `LLMPolicy` parses it (so malformed text becomes a
  parse-error step);
* an exception instance: raised (e.g. a crash, or `PolicyUnavailableError`);
* a callable ``fn(messages) -> entry``: decided from what the policy was shown;
* ``ScriptedPolicyDouble.HANG``: never returns (for cancellation and timeout tests).

When the script runs out it raises `ScriptExhaustedError` (``repeat_last=True`` repeats the last entry).
Every call is logged in ``calls`` (the messages and tool specs the policy was shown).
"""

from __future__ import annotations

import asyncio
import copy
from typing import Any, Callable

from deployments.agent.policy import PolicyParseError, PolicyStep, parse_policy_output


class ScriptExhaustedError(AssertionError):
    """The runner asked for more steps than the test scripted."""


class ScriptedPolicyDouble:
    """Test double of `deployments.agent.policy.Policy`: replays a script instead of calling a model.

    Args:
        script (`list`): the steps to return, in order (see the module docstring).
        model_name (`str`, *optional*, defaults to ``"scripted-double"``): the priced model name.
        repeat_last (`bool`, *optional*, defaults to False): keep returning the last entry.
        delay_s (`float`, *optional*, defaults to 0): sleep before each answer.
    """

    HANG = object()

    def __init__(self, script: list[Any], *, model_name: str = "scripted-double", repeat_last: bool = False,
                 delay_s: float = 0.0):
        self.script = list(script)
        self.model_name = model_name
        self.repeat_last = repeat_last
        self.delay_s = delay_s
        self.calls: list[dict[str, Any]] = []
        self._i = 0
        self.started = asyncio.Event()

    def _next_entry(self) -> Any:
        if self._i < len(self.script):
            entry = self.script[self._i]
            self._i += 1
            return entry
        if self.repeat_last and self.script:
            return self.script[-1]
        raise ScriptExhaustedError(f"script of {len(self.script)} steps exhausted (call {len(self.calls)})")

    async def next_step(self, messages: list[dict[str, str]], tools_schema: list[dict[str, Any]]) -> PolicyStep:
        self.calls.append({"messages": copy.deepcopy(messages), "tools_schema": tools_schema})
        self.started.set()
        entry = self._next_entry()
        if callable(entry) and not isinstance(entry, type):
            entry = entry(messages)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if entry is self.HANG:
            await asyncio.Event().wait()
        if isinstance(entry, BaseException):
            raise entry
        if isinstance(entry, PolicyStep):
            return copy.copy(entry)
        if isinstance(entry, str):
            try:
                step = parse_policy_output(entry)
            except PolicyParseError as exc:
                step = PolicyStep(parse_error=str(exc))
            step.raw_text, step.tokens_in, step.tokens_out = entry, 10, 5
            return step
        if isinstance(entry, dict):
            tokens_in, tokens_out = int(entry.get("tokens_in", 10)), int(entry.get("tokens_out", 5))
            if "final_answer" in entry:
                return PolicyStep(thought=entry.get("thought", ""), final_answer=entry["final_answer"],
                                  tokens_in=tokens_in, tokens_out=tokens_out, raw_text=str(entry))
            return PolicyStep(thought=entry.get("thought", ""), action=entry["action"],
                              action_input=entry.get("action_input", {}), tokens_in=tokens_in,
                              tokens_out=tokens_out, raw_text=str(entry))
        raise TypeError(f"unsupported script entry {type(entry).__name__}")


def scripted_factory(policy: ScriptedPolicyDouble) -> Callable[[Any], ScriptedPolicyDouble]:
    """A ``policy_factory`` for `AgentRunner` that always hands out ``policy``."""
    return lambda _profile: policy
