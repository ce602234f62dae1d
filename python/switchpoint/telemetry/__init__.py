"""Traces and metrics: OpenTelemetry providers owned by one `Telemetry` object per server.

Nothing here touches OpenTelemetry's global tracer/meter providers or prometheus_client's global
REGISTRY: every server built by the factory gets its own providers, its own registry and its own
/metrics listener, so tests can run many servers in one process without seeing each other's data.

Spans and events are named in docs/architecture.md ("Observability names"); the names live here
as constants so the engine, the servicer and the tests spell them one way. Metric names are
`switchpoint.*` with OTel units; the Prometheus exporter turns them into e.g.
`switchpoint_requests_total` and `switchpoint_routing_overhead_seconds_bucket`.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Final

from opentelemetry import metrics as otel_metrics
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Tracer
from prometheus_client import CollectorRegistry

from switchpoint.config import TelemetryConfig
from switchpoint.instruments import PROPAGATOR
from switchpoint.telemetry.export import MetricsServer, span_exporters_from_env
from switchpoint.telemetry.metrics import (
    BREAKER_CLOSED,
    BREAKER_HALF_OPEN,
    BREAKER_OPEN,
    OVERHEAD_BUCKETS,
    PROVIDER_LATENCY_BUCKETS,
    BreakerSource,
    BudgetSource,
    Metrics,
    QueueSource,
)

__all__ = [
    "BREAKER_CLOSED",
    "BREAKER_HALF_OPEN",
    "BREAKER_OPEN",
    "EVENT_BREAKER",
    "EVENT_FALLBACK",
    "OVERHEAD_BUCKETS",
    "PROVIDER_LATENCY_BUCKETS",
    "SPAN_CACHE",
    "SPAN_GATE",
    "SPAN_PROVIDER_CALL",
    "SPAN_REQUEST",
    "SPAN_ROUTE",
    "ApplicationProviders",
    "Metrics",
    "Telemetry",
    "TelemetryConfig",
    "span_exporters_from_env",
]

logger = logging.getLogger(__name__)

# Span names (docs/architecture.md). One `PROVIDER_CALL` span per attempt: retries and hedges show.
SPAN_REQUEST: Final = "switchpoint.request"
SPAN_ROUTE: Final = "switchpoint.route"
SPAN_GATE: Final = "switchpoint.gate"
SPAN_CACHE: Final = "switchpoint.cache"
SPAN_PROVIDER_CALL: Final = "switchpoint.provider.call"
# Span events: a fallback switch is recorded on the request span, a breaker change on the attempt
# span that caused it.
EVENT_FALLBACK: Final = "switchpoint.fallback"
EVENT_BREAKER: Final = "switchpoint.breaker.change"


@dataclass(frozen=True, slots=True)
class ApplicationProviders:
    """An embedding application's own OpenTelemetry SDK providers (switchpoint.library): used
    instead of the config's, and never shut down by switchpoint (they are the application's)."""

    tracer_provider: TracerProvider | None = None
    meter_provider: MeterProvider | None = None

    @classmethod
    def installed(cls) -> ApplicationProviders:
        """The process's global providers, where the application installed SDK ones; the API's
        default proxies mean it installed none, and the config's are used."""
        tracer_provider = trace.get_tracer_provider()
        meter_provider = otel_metrics.get_meter_provider()
        return cls(
            tracer_provider if isinstance(tracer_provider, TracerProvider) else None,
            meter_provider if isinstance(meter_provider, MeterProvider) else None,
        )


class Telemetry:
    """One server's tracer, metrics, propagator and /metrics listener."""

    def __init__(
        self,
        config: TelemetryConfig,
        *,
        span_exporter: SpanExporter | None = None,
        environ: Mapping[str, str] | None = None,
        application: ApplicationProviders | None = None,
    ) -> None:
        env = os.environ if environ is None else environ
        self.config = config
        self._application = application or ApplicationProviders()
        resource = Resource.create(
            {SERVICE_NAME: env.get("OTEL_SERVICE_NAME") or config.service_name}
        )
        # shutdown_on_exit=False: stop() shuts down; an atexit hook would also keep every
        # instance a test ever built alive until the process ends.
        self._tracer_provider = TracerProvider(
            sampler=ParentBased(TraceIdRatioBased(config.sample_ratio)),
            resource=resource,
            shutdown_on_exit=False,
        )
        if span_exporter is not None:
            # Given exporters are the tests' in-memory ones: export synchronously, visibly at once.
            self.span_exporters: tuple[SpanExporter, ...] = (span_exporter,)
            self._tracer_provider.add_span_processor(SimpleSpanProcessor(span_exporter))
        else:
            self.span_exporters = tuple(span_exporters_from_env(env))
            for exporter in self.span_exporters:
                self._tracer_provider.add_span_processor(BatchSpanProcessor(exporter))
        # With nothing to export to, recording spans is pure cost (about half of a Route call's
        # CPU when measured): the API's no-op tracer still carries the caller's trace context
        # through to provider requests.
        self.tracer: Tracer = (
            self._tracer_provider.get_tracer("switchpoint")
            if self.span_exporters
            else trace.NoOpTracer()
        )
        if self._application.tracer_provider is not None:
            # The embedding application's own provider: its exporters and sampler decide.
            self.tracer = self._application.tracer_provider.get_tracer("switchpoint")

        self._registry = CollectorRegistry(auto_describe=True)
        # Scope labels would add otel_scope_* to every series for no information: one scope.
        reader = PrometheusMetricReader(scope_info_enabled=False, registry=self._registry)
        self._meter_provider = MeterProvider(
            metric_readers=[reader], resource=resource, shutdown_on_exit=False
        )
        meter_provider = self._application.meter_provider or self._meter_provider
        self.metrics = Metrics(meter_provider.get_meter("switchpoint"), self._registry)
        self.propagator = PROPAGATOR
        self.metrics_port: int | None = None
        self._server = MetricsServer(self._registry)
        self._started = False
        self._stop_task: asyncio.Task[None] | None = None

    def extract(self, metadata: Iterable[tuple[str, str | bytes]]) -> Context:
        """The trace context (and baggage) carried by incoming gRPC invocation metadata."""
        carrier: dict[str, str] = {}
        for key, value in metadata:
            if isinstance(value, bytes):
                continue  # "-bin" metadata; W3C headers are text
            name = key.lower()
            # Repeated list headers (tracestate, baggage) combine as in HTTP.
            carrier[name] = f"{carrier[name]},{value}" if name in carrier else value
        return self.propagator.extract(carrier)

    def inject(self, headers: MutableMapping[str, str], context: Context | None = None) -> None:
        """Write traceparent (and baggage) for `context`, default the current one, into headers."""
        self.propagator.inject(headers, context=context)

    def observe(
        self,
        *,
        queues: QueueSource | None = None,
        budgets_remaining: BudgetSource | None = None,
        breakers: BreakerSource | None = None,
    ) -> None:
        """Install the sources behind the queue, budget and breaker gauges (read at scrape time)."""
        self.metrics.observe(queues=queues, budgets_remaining=budgets_remaining, breakers=breakers)

    async def start(self) -> None:
        if self._started or self._stop_task is not None:
            raise RuntimeError("Telemetry.start() after start() or stop()")
        self._started = True
        if self.config.metrics_address is not None:
            self.metrics_port = await self._server.start(self.config.metrics_address)
            logger.info("serving Prometheus metrics on port %d", self.metrics_port)

    async def stop(self) -> None:
        """Stop serving /metrics, flush pending spans and shut both providers down. Idempotent."""
        if self._stop_task is None:
            self._stop_task = asyncio.ensure_future(self._stop())
        # Shielded: a caller cancelled mid-stop must not leave the providers half shut down.
        await asyncio.shield(self._stop_task)

    async def _stop(self) -> None:
        await self._server.stop()
        # Flushing a batch to a slow collector blocks for up to its export timeout: keep it off
        # the event loop so in-flight RPCs of a draining server are not stalled.
        await asyncio.to_thread(self._shutdown_providers)

    def _shutdown_providers(self) -> None:
        self._tracer_provider.force_flush()
        self._tracer_provider.shutdown()
        self._meter_provider.shutdown()
