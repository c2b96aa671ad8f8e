"""Declarative node specs: ComfyUI's names and wire format, typed objects instead of tuples.

A node class declares ``SPEC = NodeSpec(...)``; the validator reads bounds and choices
from the spec so bad values are rejected before any model work starts, and
``/object_info`` is generated from the same objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

# Socket types that carry references or tensors (links only; never literal values).
LINK_TYPES = frozenset(
    {"MODEL", "CLIP", "VAE", "CONDITIONING", "LATENT", "IMAGE", "MASK", "CONTROL_NET"}
)
# Widget types that accept literal values.
PRIMITIVE_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})

MAX_RESOLUTION = 16384
MAX_SEED = 0xFFFFFFFFFFFFFFFF


@dataclass(frozen=True)
class InputSpec:
    """One input socket or widget.

    Args:
        type: ``INT``, ``FLOAT``, ``STRING``, ``BOOLEAN``, ``COMBO`` or a link type such as ``MODEL``.
        default: value used by ``/object_info`` clients; a missing required input is an error.
        min / max / step / round: numeric bounds (``value_smaller_than_min`` / ``value_bigger_than_max``).
        choices: static choice list for ``COMBO``.
        choices_from: name of a dynamic choice source (``checkpoints``, ``controlnet``, ``loras``,
            ``vae``, ``input_images``) resolved by a :class:`ChoiceProvider` when validating.
        multiline: hint for UIs (``STRING``).
        image_upload: hint for UIs (``LoadImage``).
        tooltip: short help for UIs.
    """

    type: str
    default: Any = None
    min: float | None = None
    max: float | None = None
    step: float | None = None
    round: float | None = None
    choices: tuple[Any, ...] | None = None
    choices_from: str | None = None
    multiline: bool = False
    image_upload: bool = False
    tooltip: str | None = None

    @property
    def is_link(self) -> bool:
        return self.type in LINK_TYPES

    def object_info(self, choices: list[Any] | None = None) -> list[Any]:
        """The ComfyUI ``/object_info`` encoding of this input (``[type, options]``)."""
        if self.type == "COMBO":
            opts: dict[str, Any] = {}
            if self.image_upload:
                opts["image_upload"] = True
            if self.default is not None:
                opts["default"] = self.default
            if self.tooltip:
                opts["tooltip"] = self.tooltip
            values = list(choices if choices is not None else (self.choices or ()))
            return [values, opts] if opts else [values]
        if self.is_link:
            return [self.type, {"tooltip": self.tooltip}] if self.tooltip else [self.type]
        opts = {}
        for key in ("default", "min", "max", "step", "round", "tooltip"):
            value = getattr(self, key)
            if value is not None:
                opts[key] = value
        if self.multiline:
            opts["multiline"] = True
        return [self.type, opts]


def Int(default: int = 0, min: int | None = None, max: int | None = None, step: int = 1, **kw: Any) -> InputSpec:  # noqa: N802,A002
    return InputSpec("INT", default=default, min=min, max=max, step=step, **kw)


def Float(default: float = 0.0, min: float | None = None, max: float | None = None, step: float = 0.01, **kw: Any) -> InputSpec:  # noqa: N802,A002
    return InputSpec("FLOAT", default=default, min=min, max=max, step=step, **kw)


def String(default: str = "", multiline: bool = False, **kw: Any) -> InputSpec:  # noqa: N802
    return InputSpec("STRING", default=default, multiline=multiline, **kw)


def Boolean(default: bool = False, **kw: Any) -> InputSpec:  # noqa: N802
    return InputSpec("BOOLEAN", default=default, **kw)


def Combo(choices: tuple[Any, ...] | list[Any] | None = None, *, source: str | None = None, default: Any = None, **kw: Any) -> InputSpec:  # noqa: N802
    if choices is None and source is None:
        raise TypeError("Combo needs static choices or a dynamic source")
    static = tuple(choices) if choices is not None else None
    if default is None and static:
        default = static[0]
    return InputSpec("COMBO", default=default, choices=static, choices_from=source, **kw)


def Link(type_: str, **kw: Any) -> InputSpec:  # noqa: N802
    if type_ not in LINK_TYPES:
        raise TypeError(f"unknown link type {type_!r}; expected one of {sorted(LINK_TYPES)}")
    return InputSpec(type_, **kw)


@dataclass(frozen=True)
class OutputSpec:
    type: str
    name: str | None = None

    @property
    def display_name(self) -> str:
        return self.name or self.type


@dataclass(frozen=True)
class NodeSpec:
    """What a node accepts and returns; the registry key is ``node_id`` (ComfyUI's class_type)."""

    node_id: str
    category: str
    required: dict[str, InputSpec] = field(default_factory=dict)
    optional: dict[str, InputSpec] = field(default_factory=dict)
    outputs: tuple[OutputSpec, ...] = ()
    output_node: bool = False
    display_name: str | None = None
    description: str = ""

    def input(self, name: str) -> InputSpec | None:
        return self.required.get(name) or self.optional.get(name)


class Node:
    """Base class of every node: a spec plus one async ``run`` that forwards to the backends.

    ``run`` receives the execution context and the resolved inputs by name and returns a
    tuple with one value per declared output (output nodes may return a ``NodeResult``).
    """

    SPEC: ClassVar[NodeSpec]

    async def run(self, ctx: Any, **inputs: Any) -> Any:  # pragma: no cover - interface
        raise NotImplementedError

    def cache_salt(self, ctx: Any, inputs: dict[str, Any]) -> str | None:
        """Extra cache-key material for nodes whose result depends on the outside world.

        ComfyUI calls this ``IS_CHANGED``. ``LoadImage`` returns the file's content hash so
        replacing an upload under the same name invalidates the cached result.
        """
        return None

    def validate(self, ctx: Any, inputs: dict[str, Any]) -> str | None:
        """Custom validation of literal inputs (ComfyUI's ``VALIDATE_INPUTS``); a message means failure."""
        return None


@dataclass
class NodeResult:
    """What an output node returns: its values plus the ``ui`` dict sent with ``executed``."""

    values: tuple[Any, ...] = ()
    ui: dict[str, Any] = field(default_factory=dict)
