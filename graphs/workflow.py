"""ComfyUI API-format JSON -> a typed graph.

API format: ``{node_id: {"class_type": str, "inputs": {name: literal | [node_id, slot]}}}``.
Parsing only checks the *shape* of the document; ``validation`` checks it against the registry.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from graphs.errors import WorkflowParseError


@dataclass(frozen=True)
class LinkRef:
    """A link to output ``slot`` of node ``node_id``."""

    node_id: str
    slot: int


def is_link(value: Any) -> bool:
    """ComfyUI's rule: a 2-element list whose first item is a node id and second an int."""
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], (str, int))
        and not isinstance(value[0], bool)
        and isinstance(value[1], int)
        and not isinstance(value[1], bool)
    )


@dataclass
class NodeInstance:
    node_id: str
    class_type: str
    inputs: dict[str, Any]
    title: str | None = None

    def links(self) -> dict[str, LinkRef]:
        return {k: LinkRef(str(v[0]), v[1]) for k, v in self.inputs.items() if is_link(v)}


@dataclass
class Workflow:
    nodes: dict[str, NodeInstance] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)

    def content_hash(self) -> str:
        """sha256 of the canonical JSON (sorted keys, no whitespace): the workflow's identity."""
        return workflow_hash(self.raw)


def workflow_hash(raw: dict[str, Any]) -> str:
    canonical = json.dumps(raw, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def parse_workflow(data: str | bytes | dict[str, Any]) -> Workflow:
    """Parse API-format JSON.

    Args:
        data: the JSON text or the already-decoded object.

    Returns:
        The typed :class:`Workflow`.

    Raises:
        WorkflowParseError: the text is not JSON, or the top level is not an object of nodes.
            Node-level problems (missing ``class_type``, unknown nodes, bad links) are left
            to ``validate_workflow`` so they come back as ComfyUI-style ``node_errors``.
    """
    if isinstance(data, (str, bytes)):
        try:
            data = json.loads(data)
        except json.JSONDecodeError as exc:
            raise WorkflowParseError(f"prompt is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from exc
    if not isinstance(data, dict):
        raise WorkflowParseError(
            f"prompt must be a JSON object mapping node ids to nodes, got {type(data).__name__}"
        )
    if "nodes" in data and "links" in data and isinstance(data.get("nodes"), list):
        raise WorkflowParseError(
            "this looks like a ComfyUI UI workflow (nodes/links lists); export it with "
            "'Save (API Format)' and submit that instead"
        )
    wf = Workflow(raw=data)
    for node_id, node in data.items():
        node_id = str(node_id)
        if not isinstance(node, dict):
            wf.nodes[node_id] = NodeInstance(node_id, "", {"__invalid__": node})
            continue
        inputs = node.get("inputs", {})
        class_type = node.get("class_type", "")
        title = (node.get("_meta") or {}).get("title") if isinstance(node.get("_meta"), dict) else None
        wf.nodes[node_id] = NodeInstance(
            node_id,
            class_type if isinstance(class_type, str) else "",
            inputs if isinstance(inputs, dict) else {"__invalid__": inputs},
            title,
        )
    return wf
