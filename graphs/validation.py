"""Validate a workflow against the registry and answer like ComfyUI's ``/prompt``.

Result shape (ComfyUI): ``error = {type, message, details, extra_info}`` and
``node_errors = {node_id: {errors: [...], dependent_outputs: [...], class_type}}``.
Only root causes are reported: a node that fails only because an upstream node failed
gets no entry of its own. Like ComfyUI, a workflow with at least one valid output is
accepted and runs its valid outputs; the others are reported in ``node_errors``.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, Field

from graphs.registry import ChoiceProvider, NodeRegistry
from graphs.spec import InputSpec
from graphs.workflow import Workflow, is_link


class PromptError(BaseModel):
    type: str
    message: str
    details: str = ""
    extra_info: dict[str, Any] = Field(default_factory=dict)


class NodeErrors(BaseModel):
    errors: list[PromptError]
    dependent_outputs: list[str] = Field(default_factory=list)
    class_type: str


class ValidationResult(BaseModel):
    ok: bool
    error: PromptError | None = None
    output_node_ids: list[str] = Field(default_factory=list)
    node_errors: dict[str, NodeErrors] = Field(default_factory=dict)

    def response_body(self) -> dict[str, Any]:
        """The ``400`` body of ComfyUI's ``POST /prompt``."""
        return {
            "error": self.error.model_dump() if self.error else None,
            "node_errors": {k: v.model_dump() for k, v in self.node_errors.items()},
        }


def _err(type_: str, message: str, details: str = "", **extra: Any) -> PromptError:
    return PromptError(type=type_, message=message, details=details, extra_info=extra)


def _input_error(type_: str, message: str, details: str, name: str, spec: InputSpec | None, value: Any) -> PromptError:
    return _err(
        type_,
        message,
        details,
        input_name=name,
        input_config=spec.object_info() if spec else None,
        received_value=value if isinstance(value, (int, float, str, bool, type(None))) else repr(value)[:200],
    )


def _convert(value: Any, spec: InputSpec) -> Any:
    """ComfyUI-style conversion of a literal to the widget type; raises ValueError/TypeError."""
    if spec.type == "INT":
        if isinstance(value, bool):
            raise TypeError("boolean is not an INT")
        if isinstance(value, float):
            if not math.isfinite(value) or value != int(value):
                raise ValueError("not an integer")
        return int(value)
    if spec.type == "FLOAT":
        if isinstance(value, bool):
            raise TypeError("boolean is not a FLOAT")
        out = float(value)
        if not math.isfinite(out):
            raise ValueError("not a finite number")
        return out
    if spec.type == "STRING":
        if isinstance(value, (dict, list)):
            raise TypeError("not a string")
        return str(value)
    if spec.type == "BOOLEAN":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise TypeError("not a boolean")
    return value


def validate_workflow(
    wf: Workflow,
    registry: NodeRegistry,
    choices: ChoiceProvider | None = None,
    context: Any = None,
    partial_execution_targets: list[str] | None = None,
) -> ValidationResult:
    """Check every node, link and value; decide which outputs can run.

    Args:
        wf: the parsed workflow.
        registry: the node registry.
        choices: resolves dynamic choice lists (model files present, uploaded images).
        context: passed to nodes' custom ``validate`` hooks (e.g. to find input files).
        partial_execution_targets: only these output nodes (ComfyUI's field of the same name).

    Returns:
        A :class:`ValidationResult`; ``ok`` is true when at least one output is valid.
    """
    # 1. Structure: every node an object with a known class_type.
    for node_id, node in wf.nodes.items():
        if "__invalid__" in node.inputs and not node.class_type:
            return ValidationResult(
                ok=False,
                error=_err("invalid_prompt", f"Node {node_id!r} is not an object with class_type and inputs.", f"Node ID '#{node_id}'"),
            )
        if not node.class_type:
            return ValidationResult(
                ok=False,
                error=_err("invalid_prompt", "Cannot execute because a node is missing the class_type property.", f"Node ID '#{node_id}'"),
            )
        if node.class_type not in registry:
            return ValidationResult(
                ok=False,
                error=_err(
                    "missing_node_type",
                    f"Node '{node.class_type}' not found. It is not one of the supported nodes (see GET /object_info).",
                    f"Node ID '#{node_id}'",
                    node_id=node_id,
                    class_type=node.class_type,
                ),
            )

    # 2. Outputs.
    outputs = [nid for nid, n in wf.nodes.items() if registry.spec(n.class_type).output_node]
    if partial_execution_targets:
        outputs = [nid for nid in outputs if nid in set(map(str, partial_execution_targets))]
    if not outputs:
        return ValidationResult(ok=False, error=_err("prompt_no_outputs", "Prompt has no outputs"))

    # 3. Per-node validation, memoised, root causes only.
    own_errors: dict[str, list[PromptError]] = {}
    valid: dict[str, bool] = {}
    visiting: set[str] = set()

    def check(node_id: str) -> bool:
        if node_id in valid:
            return valid[node_id]
        if node_id in visiting:
            own_errors.setdefault(node_id, []).append(
                _err("dependency_cycle", "Dependency cycle detected", f"node {node_id} depends on itself through its inputs")
            )
            valid[node_id] = False
            return False
        visiting.add(node_id)
        node = wf.nodes[node_id]
        spec = registry.spec(node.class_type)
        errors: list[PromptError] = []
        upstream_ok = True
        converted: dict[str, Any] = {}
        if "__invalid__" in node.inputs:
            errors.append(_err("invalid_input_type", "Node inputs must be an object", f"{node_id}.inputs"))
        for name in spec.required:
            if name not in node.inputs:
                errors.append(_input_error("required_input_missing", "Required input is missing", name, name, spec.required[name], None))
        for name, value in node.inputs.items():
            if name == "__invalid__":
                continue
            inp = spec.input(name)
            if inp is None:
                continue  # ComfyUI ignores unknown inputs (UI-only widgets such as control_after_generate)
            if isinstance(value, list) and not is_link(value):
                errors.append(_input_error(
                    "bad_linked_input",
                    "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                    f"{name}, {value!r}", name, inp, value,
                ))
                continue
            if is_link(value):
                src_id, slot = str(value[0]), value[1]
                src = wf.nodes.get(src_id)
                if src is None:
                    errors.append(_input_error("bad_linked_input", "Linked node does not exist", f"{name} links to missing node {src_id!r}", name, inp, value))
                    continue
                src_spec = registry.spec(src.class_type)
                if slot < 0 or slot >= len(src_spec.outputs):
                    errors.append(_input_error(
                        "bad_linked_input", "Bad linked input, output slot out of range",
                        f"{name}: {src.class_type} has {len(src_spec.outputs)} outputs, link asks for slot {slot}", name, inp, value,
                    ))
                    continue
                received = src_spec.outputs[slot].type
                expected = inp.type
                if received != expected and not (expected == "COMBO" or received == "*"):
                    if not (inp.type in ("INT", "FLOAT", "STRING", "BOOLEAN") and received == inp.type):
                        errors.append(_input_error(
                            "return_type_mismatch", "Return type mismatch between linked nodes",
                            f"{name}, received_type({received}) mismatch input_type({expected})", name, inp, value,
                        ))
                        continue
                if not check(src_id):
                    upstream_ok = False
                continue
            # literal value
            if inp.is_link:
                errors.append(_input_error(
                    "bad_linked_input", f"Input '{name}' of type {inp.type} must be a link [node_id, slot_index], not a literal value",
                    f"{name}, {value!r}"[:200], name, inp, value,
                ))
                continue
            if inp.type == "COMBO":
                allowed = list(inp.choices or ())
                if inp.choices_from:
                    allowed = choices(inp.choices_from) if choices else allowed
                if value not in allowed:
                    shown = allowed if len(allowed) <= 20 else allowed[:20] + ["..."]
                    errors.append(_input_error("value_not_in_list", "Value not in list", f"{name}: '{value}' not in {shown}", name, inp, value))
                    continue
                converted[name] = value
                continue
            try:
                cv = _convert(value, inp)
            except (TypeError, ValueError):
                errors.append(_input_error("invalid_input_type", f"Failed to convert an input value to a {inp.type} value", f"{name}, {value!r}"[:200], name, inp, value))
                continue
            if inp.min is not None and isinstance(cv, (int, float)) and cv < inp.min:
                errors.append(_input_error("value_smaller_than_min", f"Value {cv} smaller than min of {inp.min}", f"{name}", name, inp, value))
                continue
            if inp.max is not None and isinstance(cv, (int, float)) and cv > inp.max:
                errors.append(_input_error("value_bigger_than_max", f"Value {cv} bigger than max of {inp.max}", f"{name}", name, inp, value))
                continue
            converted[name] = cv
        if not errors:
            try:
                message = registry.get(node.class_type)().validate(context, converted)
            except Exception as exc:  # a node's own check must never take the server down
                errors.append(_err("exception_during_validation", "Exception when validating node", f"{type(exc).__name__}: {exc}"))
            else:
                if message:
                    errors.append(_err("custom_validation_failed", "Custom validation failed for node", message))
        visiting.discard(node_id)
        if errors:
            own_errors.setdefault(node_id, []).extend(errors)
        valid[node_id] = not errors and upstream_ok and node_id not in own_errors
        return valid[node_id]

    good_outputs: list[str] = []
    failed_outputs: list[str] = []
    for out_id in outputs:
        (good_outputs if check(out_id) else failed_outputs).append(out_id)

    # dependent_outputs: which failed outputs sit downstream of each erroring node.
    def upstream_of(out_id: str) -> set[str]:
        seen: set[str] = set()
        stack = [out_id]
        while stack:
            nid = stack.pop()
            if nid in seen or nid not in wf.nodes:
                continue
            seen.add(nid)
            stack.extend(l.node_id for l in wf.nodes[nid].links().values())
        return seen

    node_errors: dict[str, NodeErrors] = {}
    ups = {o: upstream_of(o) for o in failed_outputs}
    for nid, errs in own_errors.items():
        node_errors[nid] = NodeErrors(
            errors=errs,
            dependent_outputs=[o for o in failed_outputs if nid in ups[o]],
            class_type=wf.nodes[nid].class_type,
        )

    if not good_outputs:
        details = "".join(f"{e.message}: {e.details}\n" for ne in node_errors.values() for e in ne.errors)
        return ValidationResult(
            ok=False,
            error=_err("prompt_outputs_failed_validation", "Prompt outputs failed validation", details.strip()),
            node_errors=node_errors,
        )
    return ValidationResult(ok=True, output_node_ids=good_outputs, node_errors=node_errors)
