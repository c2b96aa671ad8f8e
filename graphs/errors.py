"""Domain exceptions of the workflow engine; ``serve`` maps them to HTTP."""

from __future__ import annotations

from typing import Any


class GraphError(Exception):
    """Base class of workflow-engine errors."""


class DuplicateNodeError(GraphError):
    """Two node classes claim the same ``node_id``."""


class RegistryFrozenError(GraphError):
    """The registry was frozen at startup; nodes can no longer be added."""


class WorkflowParseError(GraphError):
    """The prompt is not ComfyUI API-format JSON."""


class WorkflowValidationError(GraphError):
    """Raised with a ``ValidationResult`` when a workflow has no valid outputs."""

    def __init__(self, result: Any):
        self.result = result
        super().__init__(result.error.message if result.error else "invalid workflow")


class NodeExecutionError(GraphError):
    """A node raised while running; carries which node and the original exception type."""

    def __init__(self, node_id: str, class_type: str, exception_type: str, message: str):
        self.node_id = node_id
        self.class_type = class_type
        self.exception_type = exception_type
        self.message = message
        super().__init__(f"{class_type} (node {node_id}): {exception_type}: {message}")


class ExecutionInterrupted(GraphError):
    """The prompt was interrupted or cancelled between nodes or sampler steps."""

    def __init__(self, node_id: str | None = None, class_type: str | None = None):
        self.node_id = node_id
        self.class_type = class_type
        super().__init__(f"interrupted at node {node_id}" if node_id else "interrupted")
