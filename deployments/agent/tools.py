"""Agent tools: the `Tool` contract, the `ToolRegistry`, and the built-in tools.

A tool has a name, a version, a description and a pydantic model of its arguments. The
runner validates the model's arguments against that model *before* the tool runs, so a
tool body only ever sees valid, typed arguments. Trajectories record ``(name, version)``
of every call.

Adding a tool takes a few lines::

    class EchoArgs(BaseModel):
        text: str = Field(..., max_length=200, description="Text to echo back.")

    @registry.tool(name="echo", version="1.0.0", description="Echo the text back.")
    async def echo(args: EchoArgs, ctx: ToolContext) -> Observation:
        return Observation(data={"text": args.text})

Built-ins: ``calculator`` (safe arithmetic, parsed with `ast`, never `eval`) and the image
tools ``generate_image``, ``get_artifact`` and ``evaluate_image``, written against an
injected `ImageEngineClient` (see `deployments.agent.image_client` for the HTTP one).
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import io
import math
import operator
import re
import tokenize
import typing
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

# -- observations and context -------------------------------------------------------------


class ObservationError(BaseModel):
    """Why a step produced no result: ``type`` is one of the ``OBS_*`` codes in `constants`."""

    type: str
    message: str
    details: Any = None


class ImageObservation(BaseModel):
    """An image a tool produced or looked at; the viewer shows ``url`` inline."""

    artifact_id: str
    url: str | None = None


class Observation(BaseModel):
    """What a tool returns to the model. JSON-serialisable; treated as untrusted data by the runner.

    Args:
        ok (`bool`, *optional*, defaults to True): False when ``error`` is set.
        data (`Any`, *optional*): the tool's result.
        error (`ObservationError`, *optional*): set on failure (the model sees it and may recover).
        images (`list[ImageObservation]`, *optional*): images to show in the trajectory viewer.
    """

    ok: bool = True
    data: Any = None
    error: ObservationError | None = None
    images: list[ImageObservation] = Field(default_factory=list)

    @classmethod
    def failure(cls, type_: str, message: str, details: Any = None) -> "Observation":
        return cls(ok=False, error=ObservationError(type=type_, message=message, details=details))


@dataclass(frozen=True)
class ToolContext:
    """Read-only facts about the call; tools must not use it to change the run."""

    run_id: str
    step_index: int
    profile_name: str
    extra: dict[str, Any] = field(default_factory=dict)


# -- the contract ---------------------------------------------------------------------------


class Tool(ABC):
    """A versioned tool. Subclasses set the four class attributes and implement `run`.

    Args on subclasses:
        name (`str`): what the model writes as ``action``; ``[a-z][a-z0-9_]*``.
        version (`str`): dotted version (``1.0.0``); registries key tools by ``(name, version)``.
        description (`str`): one or two sentences the model reads.
        args_model (`type[BaseModel]`): the arguments; validated before `run` is called.
    """

    name: str
    version: str
    description: str
    args_model: type[BaseModel]

    @abstractmethod
    async def run(self, args: BaseModel, ctx: ToolContext) -> Observation:
        """Run with validated ``args``. Raising is fine: the runner turns it into an error observation."""

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def parameters_schema(self) -> dict[str, Any]:
        """JSON schema of the arguments (pydantic's, with ``additionalProperties: false``)."""
        schema = self.args_model.model_json_schema()
        schema.setdefault("additionalProperties", False)
        return schema

    def spec(self) -> dict[str, Any]:
        """What a prompt or a constrained decoder needs to know about this tool."""
        return {"name": self.name, "version": self.version, "description": self.description,
                "parameters": self.parameters_schema()}


class FunctionTool(Tool):
    """A tool made from an async function ``fn(args, ctx) -> Observation`` (see `ToolRegistry.tool`)."""

    def __init__(self, *, name: str, version: str, description: str, args_model: type[BaseModel],
                 fn: Callable[[Any, ToolContext], Awaitable[Observation]]):
        self.name, self.version, self.description, self.args_model = name, version, description, args_model
        self._fn = fn

    async def run(self, args: BaseModel, ctx: ToolContext) -> Observation:
        return await self._fn(args, ctx)


# -- the registry ---------------------------------------------------------------------------

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_VERSION_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z.+\-]{0,31}$")


class DuplicateToolError(ValueError):
    """A ``(name, version)`` pair was registered twice."""


class UnknownToolError(KeyError):
    """No tool under this name (or this name and version)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown tool"


class RegistryFrozenError(RuntimeError):
    """`ToolRegistry.register` was called after `ToolRegistry.freeze`."""


def version_key(version: str) -> tuple:
    """Sort key for dotted versions: numeric parts compare as numbers (``1.10`` > ``1.9``)."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"[.+\-]", version))


def parse_tool_ref(ref: str) -> tuple[str, str | None]:
    """``"calculator@1.1.0"`` -> ``("calculator", "1.1.0")``; ``"calculator"`` -> ``("calculator", None)``."""
    name, sep, version = ref.partition("@")
    return name.strip(), (version.strip() or None) if sep else None


class ToolRegistry:
    """Tools keyed by ``(name, version)``; loud on duplicates; the latest version wins a bare name.

    Construct empty and register, or use `default_registry` for the built-ins::

        registry = ToolRegistry()
        registry.register(CalculatorTool())
        registry.get("calculator")            # latest version
        registry.resolve("calculator@1.1.0")  # exact
    """

    def __init__(self) -> None:
        self._tools: dict[tuple[str, str], Tool] = {}
        self._frozen = False

    def register(self, tool: Tool) -> Tool:
        """Add ``tool``.

        Raises:
            DuplicateToolError: ``(tool.name, tool.version)`` is already registered.
            ValueError: the name, version, description or args model is malformed.
            RegistryFrozenError: the registry was frozen.
        """
        if self._frozen:
            raise RegistryFrozenError(f"cannot register {tool.name!r}: the tool registry is frozen")
        if not _NAME_RE.match(getattr(tool, "name", "") or ""):
            raise ValueError(f"tool name {getattr(tool, 'name', None)!r} must match {_NAME_RE.pattern}")
        if tool.name == "final_answer":
            raise ValueError("'final_answer' is reserved for the model's answer; pick another tool name")
        if not _VERSION_RE.match(getattr(tool, "version", "") or ""):
            raise ValueError(f"tool {tool.name!r}: version {getattr(tool, 'version', None)!r} must look like '1.0.0'")
        if not (isinstance(getattr(tool, "args_model", None), type) and issubclass(tool.args_model, BaseModel)):
            raise ValueError(f"tool {tool.name!r}: args_model must be a pydantic BaseModel subclass")
        if not getattr(tool, "description", "").strip():
            raise ValueError(f"tool {tool.name!r}: a description is required (the model reads it)")
        key = (tool.name, tool.version)
        if key in self._tools:
            raise DuplicateToolError(
                f"tool {tool.name}@{tool.version} is already registered; bump the version to add a new one")
        self._tools[key] = tool
        return tool

    def tool(self, *, name: str, version: str, description: str,
             args_model: type[BaseModel] | None = None) -> Callable:
        """Decorator registering an async function ``fn(args: ArgsModel, ctx) -> Observation``.

        Args:
            args_model (`type[BaseModel]`, *optional*): defaults to the annotation of ``fn``'s first
                parameter (pass it when that annotation cannot be resolved, e.g. a model local to a function).
        """

        def deco(fn: Callable[[Any, ToolContext], Awaitable[Observation]]) -> Callable:
            model = args_model
            if model is None:
                params = list(inspect.signature(fn).parameters.values())
                try:  # resolves string annotations (``from __future__ import annotations``)
                    hints = typing.get_type_hints(fn)
                except NameError:
                    hints = {}
                model = hints.get(params[0].name) if params else None
            if not (isinstance(model, type) and issubclass(model, BaseModel)):
                raise ValueError(f"tool {name!r}: annotate the first parameter with a module-level pydantic model, "
                                 "or pass args_model=")
            self.register(FunctionTool(name=name, version=version, description=description, args_model=model, fn=fn))
            return fn

        return deco

    def freeze(self) -> None:
        """Refuse further registrations (called once at startup)."""
        self._frozen = True

    def versions(self, name: str) -> list[str]:
        return sorted((v for (n, v) in self._tools if n == name), key=version_key)

    def get(self, name: str, version: str | None = None) -> Tool:
        """The tool ``name`` at ``version`` (the latest when ``None``).

        Raises:
            UnknownToolError: no such name or version.
        """
        if version is not None:
            tool = self._tools.get((name, version))
            if tool is None:
                known = self.versions(name)
                hint = f"known versions: {', '.join(known)}" if known else f"registered tools: {', '.join(self.names())}"
                raise UnknownToolError(f"no tool {name}@{version}; {hint}")
            return tool
        versions = self.versions(name)
        if not versions:
            raise UnknownToolError(f"no tool named {name!r}; registered tools: {', '.join(self.names()) or '(none)'}")
        return self._tools[(name, versions[-1])]

    def resolve(self, ref: str) -> Tool:
        """Look up ``name`` or ``name@version``."""
        name, version = parse_tool_ref(ref)
        return self.get(name, version)

    def names(self) -> list[str]:
        return sorted({n for (n, _) in self._tools})

    def refs(self) -> list[str]:
        return sorted(t.ref for t in self._tools.values())

    def __contains__(self, name: str) -> bool:
        return any(n == name for (n, _) in self._tools)

    def __len__(self) -> int:
        return len(self._tools)

    def export_schema(self, tools: list[Tool] | None = None) -> list[dict[str, Any]]:
        """Tool specs (name, version, description, JSON-schema parameters) for prompts.

        Args:
            tools (`list[Tool]`, *optional*): defaults to the latest version of every tool.
        """
        chosen = tools if tools is not None else [self.get(n) for n in self.names()]
        return [t.spec() for t in chosen]


#: Longest ``thought`` a constrained decoder may write: small models otherwise ramble inside the
#: string until ``max_tokens`` cuts the JSON (seen with SmolLM2-135M).
MAX_THOUGHT_CHARS = 160


def action_json_schema(tool_specs: list[dict[str, Any]], *, max_thought_chars: int = MAX_THOUGHT_CHARS) -> dict[str, Any]:
    """JSON schema of one ReAct step, for constrained decoding.

    One ``anyOf`` branch per tool (its ``action`` constant and argument schema) plus the
    ``final_answer`` branch, so a schema-following decoder can only produce a known action
    with well-formed arguments.
    """
    thought = {"type": "string", "maxLength": max_thought_chars}
    branches: list[dict[str, Any]] = []
    for spec in tool_specs:
        branches.append({
            "type": "object",
            "properties": {"thought": thought, "action": {"const": spec["name"]},
                           "action_input": spec["parameters"]},
            "required": ["thought", "action", "action_input"],
            "additionalProperties": False,
        })
    branches.append({
        "type": "object",
        "properties": {
            "thought": thought, "action": {"const": "final_answer"},
            "action_input": {"type": "object", "properties": {"answer": {"type": "string", "maxLength": 500}},
                             "required": ["answer"], "additionalProperties": False},
        },
        "required": ["thought", "action", "action_input"],
        "additionalProperties": False,
    })
    return {"title": "AgentStep", "anyOf": branches}


# -- calculator -----------------------------------------------------------------------------

_BIN_OPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
}
_UNARY_OPS: dict[type, Callable[[Any], Any]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_FUNCS: dict[str, Callable[..., Any]] = {
    "abs": abs, "round": round, "min": min, "max": max, "sqrt": math.sqrt, "log": math.log, "log10": math.log10,
    "exp": math.exp, "sin": math.sin, "cos": math.cos, "tan": math.tan, "floor": math.floor, "ceil": math.ceil,
}
_CONSTS = {"pi": math.pi, "e": math.e}
_MAX_ABS = 1e300
_MAX_INT = 10**300
_MAX_DIGITS = 300  # decimal digits of any intermediate result; also bounds round()'s ndigits
_MAX_POW_EXP = 1000
_MAX_NODES = 200


class CalculatorError(ValueError):
    """The expression is not plain arithmetic, or its value is out of range."""


def _caret_to_power(expression: str) -> str:
    """Rewrites the ``^`` operator token as ``**``, so it parses with a power's precedence."""
    if "^" not in expression:
        return expression
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(expression).readline))
    except (tokenize.TokenError, SyntaxError):
        return expression  # ast.parse reports the problem
    return tokenize.untokenize(
        (tok.type, "**" if tok.type == tokenize.OP and tok.string == "^" else tok.string) for tok in tokens)


def _check_power(base: int | float, exponent: int | float) -> None:
    # NOTE: bound powers before computing them: 9**9**9, or (999999**1000)**50, would hang the worker.
    if abs(exponent) > _MAX_POW_EXP or (
        abs(base) > 1 and exponent > 0 and exponent * math.log10(abs(base)) > _MAX_DIGITS
    ):
        raise CalculatorError(f"power too large (results are limited to {_MAX_DIGITS} digits)")


def safe_eval(expression: str) -> int | float:
    """Evaluate arithmetic without `eval`: numbers, ``+ - * / // % **``, parentheses, a few math functions.

    ``^`` is a power, as on calculators (``3^7`` is 2187, ``1 + 2^2`` is 5, ``2^3^2`` is 512),
    not Python's exclusive or. Every intermediate result is limited to 300 digits.

    Raises:
        CalculatorError: anything else (names, attributes, strings, huge powers, ...), with a
            message that says what to send instead.
    """
    try:
        tree = ast.parse(_caret_to_power(expression.strip()), mode="eval")
    except SyntaxError as exc:
        if "=" in expression:
            raise CalculatorError(
                "send only the expression to compute, without '=' or a result (e.g. '1234 + 5678')") from None
        raise CalculatorError(f"not an arithmetic expression: {exc.msg}") from None
    if sum(1 for _ in ast.walk(tree)) > _MAX_NODES:
        raise CalculatorError(f"expression too long (more than {_MAX_NODES} syntax nodes)")

    def ev(node: ast.AST) -> int | float:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return node.value
        if isinstance(node, ast.Name) and node.id in _CONSTS:
            return _CONSTS[node.id]
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY_OPS:
            return _UNARY_OPS[type(node.op)](ev(node.operand))
        if isinstance(node, ast.BinOp) and type(node.op) in _BIN_OPS:
            left, right = ev(node.left), ev(node.right)
            if isinstance(node.op, ast.Pow):
                _check_power(left, right)
            result = _BIN_OPS[type(node.op)](left, right)
            if isinstance(result, complex):
                raise CalculatorError("complex result (e.g. a fractional power of a negative number)")
            if isinstance(result, int) and abs(result) > _MAX_INT:
                raise CalculatorError(f"result too large (more than {_MAX_DIGITS} digits)")
            return result
        if isinstance(node, ast.Call) and node.keywords:
            raise CalculatorError("functions take positional arguments only, e.g. round(2.567, 2)")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCS:
            args = [ev(a) for a in node.args]
            if node.func.id == "round" and len(args) > 1 and isinstance(args[1], int) and abs(args[1]) > _MAX_DIGITS:
                raise CalculatorError(f"round's digits must be between -{_MAX_DIGITS} and {_MAX_DIGITS}")
            return _FUNCS[node.func.id](*args)
        if isinstance(node, ast.BinOp):
            raise CalculatorError(f"unsupported operator in {ast.unparse(node)[:60]!r}; use + - * / // % ** or ^")
        if isinstance(node, ast.Name) or (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
            name = node.id if isinstance(node, ast.Name) else node.func.id  # type: ignore[union-attr]
            raise CalculatorError(f"unknown name {name!r}; functions: {', '.join(_FUNCS)}; constants: pi, e")
        raise CalculatorError(f"unsupported syntax in {ast.unparse(node)[:60]!r} ({type(node).__name__})")

    try:
        value = ev(tree)
    except ZeroDivisionError:
        raise CalculatorError("division by zero") from None
    except (OverflowError, ValueError, TypeError) as exc:
        if isinstance(exc, CalculatorError):
            raise
        raise CalculatorError(f"math error: {exc}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"calculator produced {type(value).__name__}")
    if isinstance(value, float) and (math.isnan(value) or abs(value) > _MAX_ABS):
        raise CalculatorError("result is not a finite number")
    if isinstance(value, int) and abs(value) > 10**300:
        raise CalculatorError("result too large")
    return value


class CalculatorArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # NOTE: the length caps double as stop points for constrained decoding: small models ramble
    # inside an unbounded string until max_tokens cuts the JSON (seen with SmolLM2-135M).
    expression: str = Field(..., min_length=1, max_length=120,
                            description="Arithmetic such as '(3 + 4) * 2 / sqrt(16)'.")


class CalculatorTool(Tool):
    """Exact arithmetic for the model (``+ - * / // % **``, parentheses, sqrt/log/sin/... and pi, e)."""

    name = "calculator"
    # 1.1.0: "^" is a power; errors say what to send instead.
    version = "1.1.0"
    description = ("Evaluate an arithmetic expression: numbers, + - * / // % ** ^, parentheses, "
                   "abs round min max sqrt log log10 exp sin cos tan floor ceil, pi, e.")
    args_model = CalculatorArgs

    async def run(self, args: CalculatorArgs, ctx: ToolContext) -> Observation:  # type: ignore[override]
        try:
            # NOTE: in a thread: evaluation is bounded, but must never stall the event loop of every run.
            result = await asyncio.to_thread(safe_eval, args.expression)
            return Observation(data={"expression": args.expression, "result": result})
        except CalculatorError as exc:
            return Observation.failure("tool_error", str(exc))


# -- image tools ----------------------------------------------------------------------------


@runtime_checkable
class ImageEngineClient(Protocol):
    """How the image tools reach the image service (HTTP today, DeploymentHandles later).

    Methods may be coroutines (preferred) or plain functions; the tools await either.
    """

    def run_workflow(self, name: str, version: str | None, params: dict[str, Any]) -> Any:
        """Run the named workflow; returns ``{"artifact_ids": [...], "prompt_id": ..., ...}``."""

    def get_artifact(self, artifact_id: str) -> Any:
        """Metadata and provenance of an artifact, or ``None`` when unknown."""

    def evaluate(self, artifact_id: str) -> Any:
        """Objective metrics of an artifact as a flat dict."""


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


# NOTE: unbounded repetition plus max_length: xgrammar 0.2.8 fails to compile patterns with a
# large bounded repetition such as {0,199} ("per_rule_fsm_hashes" check), which broke
# constrained decoding of every step schema that contains one.
_WORKFLOW_NAME = r"^[A-Za-z0-9][A-Za-z0-9_\-]*$"
_ARTIFACT_ID = r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$"


class GenerateImageArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: str = Field(..., min_length=1, max_length=300, description="What the image should show.")
    negative_prompt: str | None = Field(None, max_length=200, description="What the image should not show.")
    workflow: str = Field("txt2img", pattern=_WORKFLOW_NAME, max_length=64, description="Name of the image workflow to run.")
    workflow_version: str | None = Field(None, max_length=64,
                                         description="Exact workflow version; the current one when omitted.")
    seed: int | None = Field(None, ge=0, le=2**53, description="Random seed; fixed seeds reproduce images.")
    num_inference_steps: int | None = Field(None, ge=1, le=150, description="Denoising steps.")
    guidance_scale: float | None = Field(None, ge=0.0, le=30.0, description="Classifier-free guidance scale (cfg).")
    width: int | None = Field(None, ge=64, le=2048, multiple_of=8, description="Image width in pixels.")
    height: int | None = Field(None, ge=64, le=2048, multiple_of=8, description="Image height in pixels.")


class _ImageEngineTool(Tool):
    """A tool that reaches the image service through an :class:`ImageEngineClient`."""

    def __init__(self, client: ImageEngineClient):
        self.client = client


class GenerateImageTool(_ImageEngineTool):
    """Run a named, versioned image workflow with the agent's prompt and parameters; returns artifact ids."""

    name = "generate_image"
    version = "1.0.0"
    description = ("Generate an image by running a named image workflow (default 'txt2img') with a prompt and "
                   "optional seed, steps, guidance scale and size. Returns the artifact ids of the images.")
    args_model = GenerateImageArgs

    async def run(self, args: GenerateImageArgs, ctx: ToolContext) -> Observation:  # type: ignore[override]
        params = args.model_dump(exclude={"workflow", "workflow_version"}, exclude_none=True)
        result = await _maybe_await(self.client.run_workflow(args.workflow, args.workflow_version, params))
        if not isinstance(result, dict) or not isinstance(result.get("artifact_ids"), list):
            raise TypeError(f"image engine returned {type(result).__name__} without 'artifact_ids'")
        images = result.get("images") or [{"artifact_id": a} for a in result["artifact_ids"]]
        data = {k: v for k, v in result.items() if k != "images"}
        return Observation(data=data, images=[ImageObservation.model_validate(i) for i in images])


class ArtifactArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    artifact_id: str = Field(..., pattern=_ARTIFACT_ID, max_length=200, description="An artifact id returned by generate_image.")


class GetArtifactTool(_ImageEngineTool):
    """Metadata and provenance of an artifact."""

    name = "get_artifact"
    version = "1.0.0"
    description = "Look up an image artifact by id: its metadata (size, type) and provenance (workflow, seed, prompt)."
    args_model = ArtifactArgs

    async def run(self, args: ArtifactArgs, ctx: ToolContext) -> Observation:  # type: ignore[override]
        meta = await _maybe_await(self.client.get_artifact(args.artifact_id))
        if meta is None:
            return Observation.failure("tool_error", f"no artifact with id {args.artifact_id!r}")
        url = meta.get("url") if isinstance(meta, dict) else None
        return Observation(data=meta, images=[ImageObservation(artifact_id=args.artifact_id, url=url)] if url else [])


class EvaluateImageTool(_ImageEngineTool):
    """Objective metrics of an artifact (size, brightness, contrast, sharpness, colorfulness, ...)."""

    name = "evaluate_image"
    version = "1.0.0"
    description = ("Measure an image artifact objectively: width, height, brightness, contrast, sharpness, "
                   "colorfulness and entropy. Use it to compare images.")
    args_model = ArtifactArgs

    async def run(self, args: ArtifactArgs, ctx: ToolContext) -> Observation:  # type: ignore[override]
        metrics = await _maybe_await(self.client.evaluate(args.artifact_id))
        return Observation(data={"artifact_id": args.artifact_id, "metrics": metrics})


def default_registry(image_client: ImageEngineClient | None = None, *, freeze: bool = True) -> ToolRegistry:
    """The built-in tools; the image tools only when an ``image_client`` is given.

    Args:
        image_client (`ImageEngineClient`, *optional*): how the image tools reach the image service.
        freeze (`bool`, *optional*, defaults to True): freeze the registry before returning it.
    """
    registry = ToolRegistry()
    registry.register(CalculatorTool())
    if image_client is not None:
        registry.register(GenerateImageTool(image_client))
        registry.register(GetArtifactTool(image_client))
        registry.register(EvaluateImageTool(image_client))
    if freeze:
        registry.freeze()
    return registry
