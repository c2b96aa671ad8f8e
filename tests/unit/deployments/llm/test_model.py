"""LLMConfig and LLMModel: defaults, engine choice, cost accounting."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import ValidationError

from deployments.llm import constants
from deployments.llm.engines import EngineUnavailableError, OpenAICompatEngine
from deployments.llm.model import LLMConfig, LLMModel, LLMPrice, build_engine


def test_config_defaults_serve_smollm2_on_the_cpu(tmp_path):
    config = LLMConfig(models_dir=tmp_path)
    assert config.engine == "transformers" and config.model == constants.SMOLLM2_FILENAME
    assert config.resolved_model_id() == "SmolLM2-135M-Instruct"
    assert config.torch_threads == 1 and config.temperature == 0.0


def test_config_checks_cross_field_rules(tmp_path):
    with pytest.raises(ValidationError, match="base_url"):
        LLMConfig(engine="openai", model="gpt-x")
    with pytest.raises(ValidationError, match="max_tokens_limit"):
        LLMConfig(max_tokens=4096, max_tokens_limit=1024)
    with pytest.raises(ValidationError):
        LLMConfig(engine="llama.cpp")
    with pytest.raises(ValidationError):
        LLMConfig(unknown_field=1)


def test_every_config_field_has_a_description():
    for name, field in LLMConfig.model_fields.items():
        assert field.description, name


def test_price_table():
    price = LLMPrice(input_per_1k=0.5, output_per_1k=1.5)
    assert price.cost(2000, 1000) == pytest.approx(2.5)
    assert LLMPrice().cost(10**6, 10**6) == 0.0


def test_model_path_resolves_inside_the_models_folder(llm_models_dir, tmp_path):
    from deployments.checkpoints.layout import ModelNotFoundError

    assert LLMConfig(models_dir=llm_models_dir).model_path().name == constants.SMOLLM2_FILENAME
    with pytest.raises(ModelNotFoundError):
        LLMConfig(models_dir=llm_models_dir, model="missing.gguf").model_path()
    with pytest.raises(FileNotFoundError):
        LLMConfig(models_dir=llm_models_dir, model=str(tmp_path / "absent.gguf")).model_path()


def test_build_engine_picks_the_engine(tmp_path):
    engine = build_engine(LLMConfig(engine="openai", model="served-model", base_url="http://127.0.0.1:9/v1"))
    assert isinstance(engine, OpenAICompatEngine) and engine.model_id == "served-model"
    asyncio.run(engine.aclose())
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(EngineUnavailableError):
            build_engine(LLMConfig(engine="vllm", model=str(tmp_path)))


def test_chat_fills_defaults_and_prices_the_answer(smollm2_model):
    result = asyncio.run(smollm2_model.chat([{"role": "user", "content": "Say hi."}]))
    assert result.tokens_out <= smollm2_model.config.max_tokens == 16
    assert result.cost_usd == pytest.approx(result.tokens_in / 1000 * 0.5 + result.tokens_out / 1000 * 1.5)
    assert result.model == "SmolLM2-135M-Instruct"


def test_stream_chat_prices_the_final_delta(smollm2_model):
    async def collect():
        return [d async for d in smollm2_model.stream_chat([{"role": "user", "content": "Say hi."}], max_tokens=8)]

    deltas = asyncio.run(collect())
    final = deltas[-1].result
    assert final is not None and final.cost_usd > 0 and "".join(deltas) == final.text


def test_max_tokens_limit_is_enforced(smollm2_model):
    with pytest.raises(ValueError, match="limit"):
        smollm2_model.make_request([{"role": "user", "content": "x"}], max_tokens=10**6)


def test_chat_batch_decodes_together(smollm2_model):
    requests = [smollm2_model.make_request([{"role": "user", "content": p}], max_tokens=6) for p in ("Hi", "Hello there")]
    results = asyncio.run(smollm2_model.chat_batch(requests))
    assert len(results) == 2 and all(r.cost_usd > 0 for r in results)


def test_llm_model_builds_its_engine_from_config(llm_models_dir):
    # Full path: config -> fetch (already present) -> load -> chat.
    model = LLMModel(LLMConfig(models_dir=llm_models_dir, max_tokens=6))
    result = asyncio.run(model.chat([{"role": "user", "content": "Hi"}]))
    assert result.tokens_out <= 6 and result.model == "SmolLM2-135M-Instruct"


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__]))
