"""What the request path reports while it runs: the metrics it records (a Protocol that
`switchpoint.telemetry.Metrics` implements, with a no-op default) and the span attributes it sets,
named as in docs/architecture.md and the OpenTelemetry GenAI semantic conventions."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Protocol

from opentelemetry import trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.trace import Span, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from switchpoint.config import ModelConfig, ProviderConfig
from switchpoint.quota.labels import Labels

# W3C trace context and baggage, in from gRPC metadata and out to providers. Stateless: one
# instance serves every sidecar in the process.
PROPAGATOR = CompositePropagator([TraceContextTextMapPropagator(), W3CBaggagePropagator()])

_NO_SPAN: AbstractContextManager[Span] = nullcontext(trace.INVALID_SPAN)


def records_spans(tracer: Tracer) -> bool:
    """False for the no-op tracer a telemetry without span exporters hands out."""
    return not isinstance(tracer, trace.NoOpTracer)


def current_span(tracer: Tracer, name: str) -> AbstractContextManager[Span]:
    """`tracer.start_as_current_span(name)`, or a shared no-op context when nothing records spans.
    The API's no-op tracer still builds a span and swaps the current context twice, a few
    microseconds per span on every request; skipping it changes nothing a provider call sees,
    because a no-op span carries its parent's trace context unchanged."""
    if not records_spans(tracer):
        return _NO_SPAN
    return tracer.start_as_current_span(name)


class MetricsSink(Protocol):
    def set_labels(self, labels: Labels) -> None:
        """Tenants and stages outside `labels` are recorded as `other` from now on."""

    def request(self, *, model: str, outcome: str, tenant: str, stage: str) -> None: ...

    def tokens(
        self, *, model: str, input_tokens: int, output_tokens: int, tenant: str, stage: str
    ) -> None: ...

    def cost(self, *, model: str, usd: float, tenant: str, stage: str) -> None: ...

    def cache(self, *, hit: bool, kind: str) -> None: ...

    def provider_latency(
        self, *, model: str, provider: str, seconds: float, outcome: str
    ) -> None: ...

    def ttft(self, *, model: str, seconds: float) -> None: ...

    def routing_overhead(self, *, rpc: str, seconds: float) -> None: ...

    def split(self, *, split: str, arm: str, outcome: str, usd: float) -> None:
        """A request an A/B split sent to `arm` (switchpoint.splits)."""


class NullMetrics:
    """Records nothing: for engines built without telemetry (unit tests, benches)."""

    def set_labels(self, labels: Labels) -> None:
        return None

    def request(self, *, model: str, outcome: str, tenant: str, stage: str) -> None:
        return None

    def tokens(
        self, *, model: str, input_tokens: int, output_tokens: int, tenant: str, stage: str
    ) -> None:
        return None

    def cost(self, *, model: str, usd: float, tenant: str, stage: str) -> None:
        return None

    def cache(self, *, hit: bool, kind: str) -> None:
        return None

    def provider_latency(self, *, model: str, provider: str, seconds: float, outcome: str) -> None:
        return None

    def ttft(self, *, model: str, seconds: float) -> None:
        return None

    def routing_overhead(self, *, rpc: str, seconds: float) -> None:
        return None

    def split(self, *, split: str, arm: str, outcome: str, usd: float) -> None:
        return None


def trace_headers(context: Context) -> dict[str, str]:
    """The trace context (traceparent, baggage) of `context`, for an outgoing provider request."""
    headers: dict[str, str] = {}
    PROPAGATOR.inject(headers, context=context)
    return headers


def attempt_attributes(
    model: ModelConfig, provider: ProviderConfig, attempt: int, max_tokens: int | None
) -> dict[str, str | int]:
    attributes: dict[str, str | int] = {
        "gen_ai.system": provider.kind,
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": model.wire_model,
        "switchpoint.model": model.name,
        "switchpoint.provider": model.provider,
        "switchpoint.attempt": attempt,
    }
    if max_tokens is not None:
        attributes["gen_ai.request.max_tokens"] = max_tokens
    return attributes
