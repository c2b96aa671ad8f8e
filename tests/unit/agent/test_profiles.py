"""Agent profiles (YAML) and the price table."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from deployments.agent.constants import DEFAULT_PRICE_TABLE, DEFAULT_PROFILES_DIR
from deployments.agent.pricing import ModelPrice, PriceTable, UnknownModelPriceError, load_price_table
from deployments.agent.profiles import (
    ProfileError,
    UnknownProfileError,
    get_profile,
    load_profile,
    load_profiles,
)
from deployments.agent.tools import default_registry
from tests.unit.agent.conftest import FakeImageEngineClient, make_profile

PROFILE = """
name: {name}
model: m
system_prompt: hi
allowed_tools: {tools}
max_steps: 4
"""


def test_default_profile_loads_against_the_builtin_tools():
    profiles = load_profiles(DEFAULT_PROFILES_DIR, default_registry(FakeImageEngineClient()))
    default = profiles["default"]
    assert set(default.allowed_tools) == {"calculator", "generate_image", "get_artifact", "evaluate_image"}
    assert default.max_steps >= 1 and default.timeout_s > 0 and default.max_cost_usd is not None
    assert load_price_table(DEFAULT_PRICE_TABLE).price(default.model).input_per_mtok == 0.0


def test_unknown_tool_in_profile_fails_at_load(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(PROFILE.format(name="p", tools="[calculator, shell]"))
    with pytest.raises(ProfileError, match=r"allows tool 'shell', which is not registered.*calculator@1.1.0"):
        load_profile(path, default_registry())


def test_pinned_versions(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(PROFILE.format(name="p", tools="[calculator@1.1.0]"))
    registry = default_registry()
    assert [t.ref for t in load_profile(path, registry).resolve_tools(registry)] == ["calculator@1.1.0"]
    path.write_text(PROFILE.format(name="p", tools="[calculator@2.0.0]"))
    with pytest.raises(ProfileError, match="known versions: 1.1.0"):
        load_profile(path, registry)


def test_bad_profiles(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed")
    with pytest.raises(ProfileError, match="cannot read"):
        load_profile(bad)
    bad.write_text(PROFILE.format(name="b", tools="[calculator]") + "max_stepz: 3\n")
    with pytest.raises(ProfileError, match="max_stepz"):
        load_profile(bad)
    bad.write_text(PROFILE.format(name="b", tools="calculator"))
    with pytest.raises(ProfileError, match="list of tool names"):
        load_profile(bad)
    (tmp_path / "bad.yaml").unlink()
    (tmp_path / "a.yaml").write_text(PROFILE.format(name="same", tools="[]"))
    (tmp_path / "b.yml").write_text(PROFILE.format(name="same", tools="[]"))
    with pytest.raises(ProfileError, match="two agent profiles"):
        load_profiles(tmp_path)


def test_profiles_are_frozen_and_lookup_is_clear():
    profile = make_profile()
    with pytest.raises(ValidationError):
        profile.max_steps = 1000
    with pytest.raises(UnknownProfileError, match="known profiles: test"):
        get_profile({"test": profile}, "nope")


def test_price_table():
    table = PriceTable(models={"a": ModelPrice(input_per_mtok=1.0, output_per_mtok=4.0)})
    assert table.cost("a", 1_000_000, 500_000) == pytest.approx(3.0)
    with pytest.raises(UnknownModelPriceError, match="no price for model 'b'"):
        table.cost("b", 1, 1)
    with_default = PriceTable(default=ModelPrice(input_per_mtok=2.0, output_per_mtok=2.0))
    assert with_default.cost("anything", 500_000, 0) == pytest.approx(1.0)


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__]))
