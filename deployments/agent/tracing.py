"""OpenTelemetry spans for agent runs, named and attributed after the GenAI semantic conventions.

One ``invoke_agent {profile}`` span per run, with a ``chat {model}`` span per model call and an
``execute_tool {tool}`` span per tool call under it. Attributes use the ``gen_ai.*`` names
(``gen_ai.operation.name``, ``gen_ai.agent.name``, ``gen_ai.conversation.id``,
``gen_ai.request.model``, ``gen_ai.usage.input_tokens`` / ``output_tokens``,
``gen_ai.tool.name`` / ``call.id`` / ``type``, ...); genserve extras are under ``genserve.agent.*``.
Message content (thoughts, answers, inputs) is *not* recorded unless ``capture_content`` is set,
as the conventions recommend.

Tracing is off by default (`AgentTracer.disabled`). `build_tracer` picks an exporter:
``none``, ``console``, ``otlp`` (needs ``opentelemetry-exporter-otlp-proto-http``) or ``memory``
(tests: spans land in ``tracer.memory_exporter``). It uses its own ``TracerProvider`` so it
never replaces a process-wide provider someone else configured.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any, Iterator

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from deployments.agent.constants import ENV_OTLP_ENDPOINT, ENV_TRACING_CAPTURE_CONTENT, ENV_TRACING_EXPORTER

logger = logging.getLogger(__name__)

# GenAI semantic-convention attribute names (opentelemetry-semantic-conventions, gen_ai registry).
OPERATION = "gen_ai.operation.name"
PROVIDER = "gen_ai.provider.name"
AGENT_NAME = "gen_ai.agent.name"
AGENT_DESCRIPTION = "gen_ai.agent.description"
CONVERSATION_ID = "gen_ai.conversation.id"
REQUEST_MODEL = "gen_ai.request.model"
REQUEST_MAX_TOKENS = "gen_ai.request.max_tokens"
REQUEST_TEMPERATURE = "gen_ai.request.temperature"
REQUEST_SEED = "gen_ai.request.seed"
RESPONSE_FINISH_REASONS = "gen_ai.response.finish_reasons"
USAGE_INPUT = "gen_ai.usage.input_tokens"
USAGE_OUTPUT = "gen_ai.usage.output_tokens"
TOOL_NAME = "gen_ai.tool.name"
TOOL_CALL_ID = "gen_ai.tool.call.id"
TOOL_TYPE = "gen_ai.tool.type"
TOOL_DESCRIPTION = "gen_ai.tool.description"
ERROR_TYPE = "error.type"

PROVIDER_NAME = "genserve"


class AgentTracer:
    """Creates the run / chat / tool spans. Construct with `build_tracer` or `AgentTracer.disabled`.

    Args:
        tracer: an OpenTelemetry ``Tracer`` (a no-op one when tracing is off).
        capture_content (`bool`, *optional*, defaults to False): also record input, thoughts and answers.
        provider: the ``TracerProvider`` behind ``tracer`` when this object owns it (flushed by `shutdown`).
    """

    def __init__(self, tracer: trace.Tracer, *, capture_content: bool = False, provider: Any = None):
        self.tracer = tracer
        self.capture_content = capture_content
        self.provider = provider
        self.memory_exporter: Any = None

    @classmethod
    def disabled(cls) -> "AgentTracer":
        return cls(trace.NoOpTracer())

    @property
    def enabled(self) -> bool:
        return not isinstance(self.tracer, trace.NoOpTracer)

    @contextlib.contextmanager
    def invoke_agent(self, *, run_id: str, profile: str, model: str, description: str = "",
                     input_text: str | None = None) -> Iterator[trace.Span]:
        attrs: dict[str, Any] = {OPERATION: "invoke_agent", PROVIDER: PROVIDER_NAME, AGENT_NAME: profile,
                                 CONVERSATION_ID: run_id, REQUEST_MODEL: model}
        if description:
            attrs[AGENT_DESCRIPTION] = description
        if self.capture_content and input_text is not None:
            attrs["genserve.agent.input"] = input_text
        with self.tracer.start_as_current_span(f"invoke_agent {profile}", kind=SpanKind.INTERNAL, attributes=attrs,
                                               record_exception=False, set_status_on_exception=False) as span:
            yield span

    def end_run(self, span: trace.Span, *, status: str, tokens_in: int, tokens_out: int, cost_usd: float,
                steps: int, error: dict[str, Any] | None, final_answer: str | None) -> None:
        span.set_attributes({USAGE_INPUT: tokens_in, USAGE_OUTPUT: tokens_out, "genserve.agent.status": status,
                             "genserve.agent.cost_usd": cost_usd, "genserve.agent.steps": steps})
        if self.capture_content and final_answer is not None:
            span.set_attribute("genserve.agent.final_answer", final_answer)
        if status in ("error", "failed"):
            span.set_attribute(ERROR_TYPE, (error or {}).get("type", status))
            span.set_status(Status(StatusCode.ERROR, (error or {}).get("message", status)))

    @contextlib.contextmanager
    def chat(self, *, model: str, max_tokens: int, temperature: float, seed: int | None,
             step_index: int) -> Iterator[trace.Span]:
        attrs: dict[str, Any] = {OPERATION: "chat", PROVIDER: PROVIDER_NAME, REQUEST_MODEL: model,
                                 REQUEST_MAX_TOKENS: max_tokens, REQUEST_TEMPERATURE: temperature,
                                 "genserve.agent.step": step_index}
        if seed is not None:
            attrs[REQUEST_SEED] = seed
        with self.tracer.start_as_current_span(f"chat {model}", kind=SpanKind.CLIENT, attributes=attrs,
                                               record_exception=True, set_status_on_exception=True) as span:
            yield span

    def end_chat(self, span: trace.Span, *, tokens_in: int, tokens_out: int, finish_reason: str | None,
                 thought: str | None, parse_error: str | None) -> None:
        span.set_attributes({USAGE_INPUT: tokens_in, USAGE_OUTPUT: tokens_out})
        if finish_reason:
            span.set_attribute(RESPONSE_FINISH_REASONS, [finish_reason])
        if self.capture_content and thought:
            span.set_attribute("genserve.agent.thought", thought)
        if parse_error:
            span.set_attribute("genserve.agent.parse_error", parse_error)

    @contextlib.contextmanager
    def execute_tool(self, *, name: str, version: str, call_id: str, description: str) -> Iterator[trace.Span]:
        attrs = {OPERATION: "execute_tool", TOOL_NAME: name, TOOL_CALL_ID: call_id, TOOL_TYPE: "function",
                 TOOL_DESCRIPTION: description, "genserve.agent.tool.version": version}
        with self.tracer.start_as_current_span(f"execute_tool {name}", kind=SpanKind.INTERNAL, attributes=attrs,
                                               record_exception=True, set_status_on_exception=True) as span:
            yield span

    def end_tool(self, span: trace.Span, *, error: dict[str, Any] | None) -> None:
        if error:
            span.set_attribute(ERROR_TYPE, error.get("type", "tool_error"))
            span.set_status(Status(StatusCode.ERROR, error.get("message", "")))

    def shutdown(self) -> None:
        if self.provider is not None:
            self.provider.shutdown()


def build_tracer(exporter: str | None = None, *, service_name: str = "genserve-agent",
                 capture_content: bool | None = None, otlp_endpoint: str | None = None) -> AgentTracer:
    """An `AgentTracer` exporting to ``exporter``.

    Args:
        exporter (`str`, *optional*): ``none`` / ``console`` / ``otlp`` / ``memory``; defaults to
            ``$GENSERVE_AGENT_TRACING_EXPORTER`` or ``none`` (tracing off).
        service_name (`str`, *optional*): the ``service.name`` resource attribute.
        capture_content (`bool`, *optional*): defaults to ``$GENSERVE_AGENT_TRACING_CAPTURE_CONTENT == "1"``.
        otlp_endpoint (`str`, *optional*): defaults to ``$OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` (exporter default).

    Raises:
        ValueError: unknown exporter name.
        ImportError: ``otlp`` without the OTLP exporter package installed.
    """
    exporter = (exporter or os.environ.get(ENV_TRACING_EXPORTER) or "none").strip().lower()
    if capture_content is None:
        capture_content = os.environ.get(ENV_TRACING_CAPTURE_CONTENT, "") == "1"
    if exporter in ("none", "off", ""):
        return AgentTracer.disabled()
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    memory = None
    if exporter == "console":
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    elif exporter == "memory":
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        memory = InMemorySpanExporter()
        provider.add_span_processor(SimpleSpanProcessor(memory))
    elif exporter == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError as exc:
            raise ImportError("the 'otlp' agent tracing exporter needs the package "
                              "opentelemetry-exporter-otlp-proto-http; install it or pick 'console'") from exc
        endpoint = otlp_endpoint or os.environ.get(ENV_OTLP_ENDPOINT)
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint) if endpoint
                                                       else OTLPSpanExporter()))
    else:
        raise ValueError(f"unknown agent tracing exporter {exporter!r}; use none, console, otlp or memory")
    tracer = AgentTracer(provider.get_tracer("genserve.agent"), capture_content=capture_content, provider=provider)
    tracer.memory_exporter = memory
    return tracer
