"""The LLM stage: engines (transformers on CPU, vLLM, OpenAI-compatible endpoints),
the plain :class:`~deployments.llm.model.LLMModel`, its Serve wrapper and OpenAI routes.

Import the submodules directly; this package imports nothing heavy on its own.
"""
