"""Per-model prices, to turn token counts into cost (the ``max_cost_usd`` guardrail).

Prices are USD per million tokens, input and output separately, loaded from YAML::

    models:
      smollm2-135m-instruct: {input_per_mtok: 0.0, output_per_mtok: 0.0}
      some-hosted-model:     {input_per_mtok: 0.15, output_per_mtok: 0.60}
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from deployments.agent.constants import DEFAULT_PRICE_TABLE


class UnknownModelPriceError(KeyError):
    """The price table has no entry for this model."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown model price"


class ModelPrice(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    input_per_mtok: float = Field(..., ge=0, description="USD per million input (prompt) tokens.")
    output_per_mtok: float = Field(..., ge=0, description="USD per million output (completion) tokens.")


class PriceTable(BaseModel):
    """Prices keyed by model name; ``default`` (optional) prices any other model."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    models: dict[str, ModelPrice] = Field(default_factory=dict, description="Per-model prices.")
    default: ModelPrice | None = Field(None, description="Price of models not listed; None makes them an error.")

    def price(self, model: str) -> ModelPrice:
        """Raises `UnknownModelPriceError` when ``model`` is unlisted and there is no default."""
        found = self.models.get(model, self.default)
        if found is None:
            raise UnknownModelPriceError(f"no price for model {model!r} in the price table "
                                         f"(known: {', '.join(sorted(self.models)) or 'none'}); add it")
        return found

    def cost(self, model: str, tokens_in: int, tokens_out: int) -> float:
        p = self.price(model)
        return (tokens_in * p.input_per_mtok + tokens_out * p.output_per_mtok) / 1_000_000


def load_price_table(path: str | Path = DEFAULT_PRICE_TABLE) -> PriceTable:
    """Load a price table from YAML.

    Raises:
        ValueError: unreadable or invalid file.
    """
    try:
        return PriceTable.model_validate(yaml.safe_load(Path(path).read_text()) or {})
    except (OSError, yaml.YAMLError, ValidationError) as exc:
        raise ValueError(f"invalid price table {path}: {exc}") from None
