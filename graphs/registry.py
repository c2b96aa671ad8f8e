"""An explicit node registry that fails loudly on collisions and is frozen at startup."""

from __future__ import annotations

from typing import Any, Callable, Iterable

from graphs.errors import DuplicateNodeError, RegistryFrozenError
from graphs.spec import Node, NodeSpec

ChoiceProvider = Callable[[str], list[str]]
"""Maps a dynamic choice source (``checkpoints``, ``input_images``, ...) to its current values."""


class NodeRegistry:
    """Node classes keyed by their ``SPEC.node_id`` (ComfyUI's ``class_type``).

    Build one with :func:`default_registry` or register nodes yourself (a unit test can
    build a three-node registry)::

        reg = NodeRegistry()
        reg.register(MyNode)
        reg.freeze()
    """

    def __init__(self, nodes: Iterable[type[Node]] = ()):
        self._nodes: dict[str, type[Node]] = {}
        self._frozen = False
        for cls in nodes:
            self.register(cls)

    def register(self, cls: type[Node]) -> type[Node]:
        if self._frozen:
            raise RegistryFrozenError(f"cannot register {cls.__name__}: registry is frozen")
        spec = getattr(cls, "SPEC", None)
        if not isinstance(spec, NodeSpec):
            raise TypeError(f"{cls.__name__} has no SPEC of type NodeSpec")
        if spec.node_id in self._nodes:
            raise DuplicateNodeError(
                f"node id {spec.node_id!r} registered twice "
                f"({self._nodes[spec.node_id].__name__} and {cls.__name__}); node ids must be unique"
            )
        self._nodes[spec.node_id] = cls
        return cls

    def freeze(self) -> "NodeRegistry":
        self._frozen = True
        return self

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._nodes

    def get(self, node_id: str) -> type[Node] | None:
        return self._nodes.get(node_id)

    def spec(self, node_id: str) -> NodeSpec | None:
        cls = self._nodes.get(node_id)
        return cls.SPEC if cls else None

    def names(self) -> list[str]:
        return sorted(self._nodes)

    def object_info(self, choices: ChoiceProvider | None = None, only: str | None = None) -> dict[str, Any]:
        """ComfyUI's ``/object_info`` document for every node (or just ``only``)."""
        out: dict[str, Any] = {}
        for node_id in ([only] if only else self.names()):
            spec = self.spec(node_id)
            if spec is None:
                continue

            def encode(inputs: dict) -> dict:
                encoded = {}
                for name, inp in inputs.items():
                    dyn = choices(inp.choices_from) if (choices and inp.choices_from) else None
                    encoded[name] = inp.object_info(dyn)
                return encoded

            out[node_id] = {
                "input": {"required": encode(spec.required), "optional": encode(spec.optional)},
                "input_order": {"required": list(spec.required), "optional": list(spec.optional)},
                "output": [o.type for o in spec.outputs],
                "output_is_list": [False for _ in spec.outputs],
                "output_name": [o.display_name for o in spec.outputs],
                "name": node_id,
                "display_name": spec.display_name or node_id,
                "description": spec.description,
                "python_module": "nodes",
                "category": spec.category,
                "output_node": spec.output_node,
            }
        return out


def register_node(registry: NodeRegistry) -> Callable[[type[Node]], type[Node]]:
    """Decorator form: ``@register_node(reg)``."""
    return registry.register


def default_registry() -> NodeRegistry:
    """The frozen registry of all built-in nodes."""
    from graphs.nodes import ALL_NODES

    return NodeRegistry(ALL_NODES).freeze()
