"""Tool registry, the calculator, and the built-in image tools over a fake image client."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ValidationError

from deployments.agent.tools import (
    CalculatorError,
    CalculatorTool,
    DuplicateToolError,
    GenerateImageArgs,
    Observation,
    RegistryFrozenError,
    Tool,
    ToolContext,
    ToolRegistry,
    UnknownToolError,
    action_json_schema,
    default_registry,
    safe_eval,
    version_key,
)
from tests.unit.agent.conftest import FakeImageEngineClient

CTX = ToolContext(run_id="r", step_index=0, profile_name="p")


class V(BaseModel):
    x: int


def make_tool(version: str, name: str = "thing") -> Tool:
    class T(Tool):
        description = "a thing"
        args_model = V

        async def run(self, args, ctx):
            return Observation(data={"version": self.version, "x": args.x})

    t = T()
    t.name, t.version = name, version
    return t


def test_register_and_latest_version_lookup():
    reg = ToolRegistry()
    for v in ("1.9.0", "1.10.0", "1.2.0"):
        reg.register(make_tool(v))
    assert reg.get("thing").version == "1.10.0"
    assert reg.get("thing", "1.2.0").version == "1.2.0"
    assert reg.resolve("thing@1.9.0").version == "1.9.0"
    assert reg.versions("thing") == ["1.2.0", "1.9.0", "1.10.0"]
    assert version_key("2.0") > version_key("1.99.99")


def test_duplicates_are_loud_and_unknowns_name_what_exists():
    reg = ToolRegistry()
    reg.register(make_tool("1.0.0"))
    with pytest.raises(DuplicateToolError, match="already registered"):
        reg.register(make_tool("1.0.0"))
    with pytest.raises(UnknownToolError, match="known versions: 1.0.0"):
        reg.get("thing", "9.9")
    with pytest.raises(UnknownToolError, match="registered tools: thing"):
        reg.get("other")


def test_bad_tools_and_frozen_registry_are_rejected():
    reg = ToolRegistry()
    with pytest.raises(ValueError, match="reserved"):
        reg.register(make_tool("1.0", name="final_answer"))
    with pytest.raises(ValueError, match="must match"):
        reg.register(make_tool("1.0", name="Bad Name"))
    reg.freeze()
    with pytest.raises(RegistryFrozenError):
        reg.register(make_tool("1.0"))


class EchoArgs(BaseModel):
    text: str


async def test_decorator_makes_a_tool_in_a_few_lines():
    reg = ToolRegistry()

    @reg.tool(name="echo", version="1.0.0", description="Echo the text back.")
    async def echo(args: EchoArgs, ctx: ToolContext) -> Observation:
        return Observation(data={"text": args.text})

    tool = reg.get("echo")
    assert tool.args_model is EchoArgs
    assert (await tool.run(EchoArgs(text="hi"), CTX)).data == {"text": "hi"}

    class LocalArgs(BaseModel):
        n: int

    with pytest.raises(ValueError, match="args_model="):
        @reg.tool(name="local", version="1.0.0", description="d")
        async def bad(args: LocalArgs, ctx: ToolContext) -> Observation:
            return Observation()

    @reg.tool(name="local", version="1.0.0", description="d", args_model=LocalArgs)
    async def good(args: LocalArgs, ctx: ToolContext) -> Observation:
        return Observation(data=args.n)

    assert reg.get("local").args_model is LocalArgs


def test_schema_export_and_action_schema():
    reg = default_registry(FakeImageEngineClient())
    specs = reg.export_schema()
    assert [s["name"] for s in specs] == ["calculator", "evaluate_image", "generate_image", "get_artifact"]
    calc = next(s for s in specs if s["name"] == "calculator")
    assert calc["version"] == "1.1.0" and calc["parameters"]["required"] == ["expression"]
    assert calc["parameters"]["additionalProperties"] is False
    schema = action_json_schema(specs)
    consts = [b["properties"]["action"]["const"] for b in schema["anyOf"]]
    assert consts == ["calculator", "evaluate_image", "generate_image", "get_artifact", "final_answer"]


@pytest.mark.parametrize("expr, value", [
    ("1 + 2 * 3", 7), ("(1 + 2) * 3", 9), ("2 ** 10", 1024), ("7 // 2", 3), ("7 % 4", 3), ("-3 + +1", -2),
    ("sqrt(16) + abs(-2)", 6.0), ("round(pi, 2)", 3.14), ("max(1, 5, 3)", 5), ("1.5e3 / 3", 500.0),
    # "^" is a power, as on calculators, with a power's precedence and right-associativity
    ("3^7", 2187), ("2 ^ 10", 1024), ("1+2^2", 5), ("2^10 + 1", 1025), ("2^3*2", 16), ("-2^2", -4), ("2^3^2", 512),
    ("round(2.567, 2)", 2.57), ("(10**300) // 10**299", 10),
])
def test_calculator_arithmetic(expr, value):
    assert safe_eval(expr) == value


@pytest.mark.parametrize("expr, message", [
    ("__import__('os').system('echo hi')", "unsupported syntax"), ("__import__('os')", "unknown name '__import__'"),
    ("().__class__", "unsupported syntax"), ("x + 1", "unknown name 'x'; functions: abs"),
    ("'a' * 3", "unsupported syntax"), ("9 ** 9 ** 9", "power too large"), ("10 ^ 5000", "power too large"),
    ("((999999**1000)**50)**10 % 7", "power too large"), ("(((999999^1000)^50)^50)^50", "power too large"),
    ("2 ** 996 * 2 ** 996", "result too large"), ("round(7, -10**7)", "round's digits"),
    ("round(2.5, ndigits=1)", "positional arguments only"),
    ("1 / 0", "division by zero"), ("sqrt(-1)", "math error"), ("1 +", "not an arithmetic"),
    ("open('f')", "unknown name 'open'"), ("[1, 2]", "unsupported syntax"), ("lambda: 1", "unsupported syntax"),
    ("(-8) ** 0.5", "complex"), ("5 & 3", "unsupported operator in '5 & 3'; use"),
    ("1234 + 5678 = 6916.67", "without '=' or a result"), ("x = 3", "without '='"), ("1 == 1", "unsupported syntax"),
])
def test_calculator_refuses_everything_else(expr, message):
    with pytest.raises(CalculatorError, match=message):
        safe_eval(expr)


async def test_calculator_tool_reports_errors_as_observations():
    tool = CalculatorTool()
    ok = await tool.run(tool.args_model(expression="6*7"), CTX)
    assert ok.ok and ok.data["result"] == 42
    bad = await tool.run(tool.args_model(expression="import os"), CTX)
    assert not bad.ok and bad.error.type == "tool_error"


async def test_image_tools_use_the_injected_client():
    client = FakeImageEngineClient()
    reg = default_registry(client)
    gen = reg.get("generate_image")
    obs = await gen.run(GenerateImageArgs(prompt="a cat", seed=3, width=128), CTX)
    assert obs.data["artifact_ids"] == ["txt2img_00001_.png"] and obs.images[0].url.startswith("/view?")
    assert client.calls[0] == ("run_workflow", ("txt2img", None, {"prompt": "a cat", "seed": 3, "width": 128}))
    meta = await reg.get("get_artifact").run(reg.get("get_artifact").args_model(artifact_id="a.png"), CTX)
    assert meta.data["provenance"] == {"seed": 1} and meta.images[0].artifact_id == "a.png"
    missing = await reg.get("get_artifact").run(reg.get("get_artifact").args_model(artifact_id="missing.png"), CTX)
    assert not missing.ok
    ev = await reg.get("evaluate_image").run(reg.get("evaluate_image").args_model(artifact_id="a.png"), CTX)
    assert ev.data["metrics"]["sharpness"] == 12.5


def test_image_tool_arguments_are_bounded():
    with pytest.raises(ValidationError):
        GenerateImageArgs(prompt="x", width=100)  # not a multiple of 8
    with pytest.raises(ValidationError):
        GenerateImageArgs(prompt="x", workflow="../../etc/passwd")
    with pytest.raises(ValidationError):
        GenerateImageArgs(prompt="x", shell="rm -rf /")


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__]))
