"""Telemetry: spans and context propagation, the /metrics endpoint, and exporter selection."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from opentelemetry import context as otel_context
from opentelemetry import metrics as otel_metrics
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GrpcSpanExporter,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as HttpSpanExporter,
)
from opentelemetry.sdk.trace.export import ConsoleSpanExporter
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import REGISTRY
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from pydantic import ValidationError

from switchpoint.telemetry import (
    BREAKER_HALF_OPEN,
    BREAKER_OPEN,
    SPAN_PROVIDER_CALL,
    SPAN_REQUEST,
    SPAN_ROUTE,
    Telemetry,
    TelemetryConfig,
    span_exporters_from_env,
)

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
SERVED = TelemetryConfig(metrics_address="127.0.0.1:0")


@pytest.fixture
async def served() -> AsyncIterator[Telemetry]:
    telemetry = Telemetry(SERVED, span_exporter=InMemorySpanExporter(), environ={})
    await telemetry.start()
    yield telemetry
    await telemetry.stop()


async def _scrape(telemetry: Telemetry) -> list[Sample]:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://127.0.0.1:{telemetry.metrics_port}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return [s for f in text_string_to_metric_families(response.text) for s in f.samples]


def _value(samples: list[Sample], name: str, **labels: str) -> float:
    """The one sample called `name` whose labels include `labels`."""
    found = [s for s in samples if s.name == name and labels.items() <= s.labels.items()]
    assert len(found) == 1, (name, labels, found)
    return found[0].value


async def test_nested_spans_are_recorded_with_parents() -> None:
    exporter = InMemorySpanExporter()
    telemetry = Telemetry(TelemetryConfig(), span_exporter=exporter, environ={})
    with telemetry.tracer.start_as_current_span(SPAN_REQUEST) as root:
        with telemetry.tracer.start_as_current_span(SPAN_ROUTE):
            pass
        with telemetry.tracer.start_as_current_span(SPAN_PROVIDER_CALL) as call:
            call.set_attribute("gen_ai.system", "openai")
            call.set_attribute("gen_ai.request.model", "gpt-4o-mini")
    await telemetry.stop()

    spans = {span.name: span for span in exporter.get_finished_spans()}
    assert set(spans) == {SPAN_REQUEST, SPAN_ROUTE, SPAN_PROVIDER_CALL}
    root_id = root.get_span_context().span_id
    assert spans[SPAN_REQUEST].parent is None
    for child in (SPAN_ROUTE, SPAN_PROVIDER_CALL):
        parent = spans[child].parent
        assert parent is not None
        assert parent.span_id == root_id
    assert spans[SPAN_PROVIDER_CALL].attributes == {
        "gen_ai.system": "openai",
        "gen_ai.request.model": "gpt-4o-mini",
    }
    assert spans[SPAN_REQUEST].resource.attributes["service.name"] == "switchpoint"


async def test_incoming_trace_context_is_continued_and_propagated() -> None:
    exporter = InMemorySpanExporter()
    telemetry = Telemetry(TelemetryConfig(sample_ratio=0.0), span_exporter=exporter, environ={})
    metadata: list[tuple[str, str | bytes]] = [
        ("user-agent", "grpc-python"),
        ("traceparent", TRACEPARENT),
        ("baggage", "tenant=acme"),
        ("trace-bin", b"\x00\x01"),
    ]
    # Attached (not just passed as the span's parent) so the incoming baggage is current too.
    token = otel_context.attach(telemetry.extract(metadata))
    try:
        with telemetry.tracer.start_as_current_span(SPAN_REQUEST) as span:
            headers: dict[str, str] = {}
            telemetry.inject(headers)
    finally:
        otel_context.detach(token)
    await telemetry.stop()

    # A sampled parent is followed even with ratio 0 (ParentBased).
    (recorded,) = exporter.get_finished_spans()
    assert recorded.context is not None
    assert format(recorded.context.trace_id, "032x") == TRACE_ID
    assert recorded.parent is not None
    assert format(recorded.parent.span_id, "016x") == PARENT_ID
    own_id = format(span.get_span_context().span_id, "016x")
    assert headers["traceparent"] == f"00-{TRACE_ID}-{own_id}-01"
    assert headers["baggage"] == "tenant=acme"


async def test_inject_with_an_explicit_context() -> None:
    telemetry = Telemetry(TelemetryConfig(), span_exporter=InMemorySpanExporter(), environ={})
    headers: dict[str, str] = {}
    telemetry.inject(headers, telemetry.extract([("traceparent", TRACEPARENT)]))
    await telemetry.stop()
    assert headers["traceparent"] == TRACEPARENT


async def test_sample_ratio_zero_records_no_root_spans() -> None:
    exporter = InMemorySpanExporter()
    telemetry = Telemetry(TelemetryConfig(sample_ratio=0.0), span_exporter=exporter, environ={})
    with telemetry.tracer.start_as_current_span(SPAN_REQUEST) as root:
        assert not root.is_recording()
        with telemetry.tracer.start_as_current_span(SPAN_ROUTE):
            pass
    await telemetry.stop()
    assert exporter.get_finished_spans() == ()


async def test_metrics_endpoint_exposes_recorded_values(served: Telemetry) -> None:
    m = served.metrics
    labels = {"tenant": "acme", "stage": "chat"}
    m.request(model="gpt-4o-mini", outcome="ok", **labels)
    m.request(model="gpt-4o-mini", outcome="ok", **labels)
    m.request(model="claude-haiku", outcome="error", **labels)
    m.tokens(model="gpt-4o-mini", input_tokens=120, output_tokens=30, **labels)
    m.cost(model="gpt-4o-mini", usd=0.25, **labels)
    m.cost(model="gpt-4o-mini", usd=0.5, **labels)
    m.cache(hit=True, kind="exact")
    m.cache(hit=False, kind="semantic")
    m.cache(hit=False, kind="semantic")
    m.provider_latency(model="gpt-4o-mini", provider="openai", seconds=0.2, outcome="ok")
    m.provider_latency(model="gpt-4o-mini", provider="openai", seconds=1.5, outcome="ok")
    m.ttft(model="gpt-4o-mini", seconds=0.05)
    m.routing_overhead(rpc="Chat", seconds=0.00003)
    served.observe(
        queues=lambda: {"gpt-4o-mini": 3},
        budgets_remaining=lambda: [({"budget": "daily", "tenant": "acme"}, 12.5)],
        breakers=lambda: [("gpt-4o-mini", BREAKER_HALF_OPEN), ("claude-haiku", BREAKER_OPEN)],
    )

    samples = await _scrape(served)
    assert _value(samples, "switchpoint_requests_total", model="gpt-4o-mini", outcome="ok") == 2
    assert (
        _value(
            samples, "switchpoint_requests_total", model="claude-haiku", outcome="error", **labels
        )
        == 1
    )
    assert _value(samples, "switchpoint_tokens_total", direction="input", **labels) == 120
    assert _value(samples, "switchpoint_tokens_total", direction="output", **labels) == 30
    assert _value(samples, "switchpoint_cost_usd_total", model="gpt-4o-mini") == 0.75
    assert _value(samples, "switchpoint_cache_hits_total", kind="exact") == 1
    assert _value(samples, "switchpoint_cache_misses_total", kind="semantic") == 2
    latency = {"model": "gpt-4o-mini", "provider": "openai", "outcome": "ok"}
    assert _value(samples, "switchpoint_provider_latency_seconds_count", **latency) == 2
    assert _value(samples, "switchpoint_provider_latency_seconds_sum", **latency) == 1.7
    assert _value(samples, "switchpoint_provider_latency_seconds_bucket", le="0.25") == 1
    assert _value(samples, "switchpoint_provider_ttft_seconds_count", model="gpt-4o-mini") == 1
    overhead = "switchpoint_routing_overhead_seconds_bucket"
    assert _value(samples, overhead, rpc="Chat", le="1e-05") == 0
    assert _value(samples, overhead, rpc="Chat", le="2.5e-05") == 0
    assert _value(samples, overhead, rpc="Chat", le="5e-05") == 1
    assert _value(samples, "switchpoint_routing_overhead_seconds_count", rpc="Chat") == 1
    assert _value(samples, "switchpoint_queue_depth", model="gpt-4o-mini") == 3
    assert (
        _value(samples, "switchpoint_budget_remaining_usd", budget="daily", tenant="acme") == 12.5
    )
    assert _value(samples, "switchpoint_breaker_state", model="gpt-4o-mini") == 1
    assert _value(samples, "switchpoint_breaker_state", model="claude-haiku") == 2
    assert _value(samples, "target_info", service_name="switchpoint") == 1


async def test_histogram_buckets_are_inclusive_and_cumulative(served: Telemetry) -> None:
    m = served.metrics
    # On a bound (le is inclusive), between bounds, and past the last bound.
    for seconds in (0.0001, 0.00011, 0.00011, 5.0):
        m.routing_overhead(rpc="Route", seconds=seconds)
    samples = await _scrape(served)
    bucket = "switchpoint_routing_overhead_seconds_bucket"
    assert _value(samples, bucket, rpc="Route", le="5e-05") == 0
    assert _value(samples, bucket, rpc="Route", le="0.0001") == 1
    assert _value(samples, bucket, rpc="Route", le="0.00025") == 3
    assert _value(samples, bucket, rpc="Route", le="0.1") == 3
    assert _value(samples, bucket, rpc="Route", le="+Inf") == 4
    assert _value(samples, "switchpoint_routing_overhead_seconds_count", rpc="Route") == 4
    total = _value(samples, "switchpoint_routing_overhead_seconds_sum", rpc="Route")
    assert total == pytest.approx(5.00032)
    # A later scrape sees later records: the totals are read at scrape time, not copied once.
    m.routing_overhead(rpc="Route", seconds=0.0001)
    m.request(model="a", outcome="ok", tenant="", stage="")
    samples = await _scrape(served)
    assert _value(samples, bucket, rpc="Route", le="0.0001") == 2
    assert _value(samples, "switchpoint_requests_total", model="a") == 1


async def test_gauges_read_their_sources_at_each_scrape(served: Telemetry) -> None:
    depth = {"m": 1}
    served.observe(queues=lambda: dict(depth))
    assert _value(await _scrape(served), "switchpoint_queue_depth", model="m") == 1
    depth["m"] = 7
    assert _value(await _scrape(served), "switchpoint_queue_depth", model="m") == 7


async def test_metrics_server_answers_only_get_metrics(served: Telemetry) -> None:
    base = f"http://127.0.0.1:{served.metrics_port}"
    async with httpx.AsyncClient() as client:
        assert (await client.get(f"{base}/")).status_code == 404
        assert (await client.get(f"{base}/other")).status_code == 404
        assert (await client.post(f"{base}/metrics")).status_code == 405
        assert (await client.get(f"{base}/metrics?x=1")).status_code == 200


async def test_instances_do_not_share_metrics_or_globals() -> None:
    first = Telemetry(SERVED, span_exporter=InMemorySpanExporter(), environ={})
    second = Telemetry(SERVED, span_exporter=InMemorySpanExporter(), environ={})
    await first.start()
    await second.start()
    try:
        assert first.metrics_port != second.metrics_port
        first.metrics.request(model="a", outcome="ok", tenant="t", stage="s")
        second.metrics.request(model="b", outcome="ok", tenant="t", stage="s")
        for telemetry, own, other in ((first, "a", "b"), (second, "b", "a")):
            names = {
                s.labels.get("model") for s in await _scrape(telemetry) if "requests" in s.name
            }
            assert own in names
            assert other not in names
    finally:
        await first.stop()
        await second.stop()
    # Nothing was installed process-wide.
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    assert type(otel_metrics.get_meter_provider()).__name__ == "_ProxyMeterProvider"
    assert b"switchpoint_" not in generate_latest(REGISTRY)


async def test_stop_is_idempotent_and_closes_the_listener() -> None:
    telemetry = Telemetry(SERVED, span_exporter=InMemorySpanExporter(), environ={})
    await telemetry.start()
    port = telemetry.metrics_port
    await asyncio.gather(telemetry.stop(), telemetry.stop())
    await telemetry.stop()
    async with httpx.AsyncClient() as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(f"http://127.0.0.1:{port}/metrics")
    with pytest.raises(RuntimeError):
        await telemetry.start()


async def test_no_metrics_address_serves_nothing() -> None:
    telemetry = Telemetry(TelemetryConfig(), environ={})
    await telemetry.start()
    assert telemetry.metrics_port is None
    assert telemetry.span_exporters == ()
    await telemetry.stop()


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, []),
        ({"OTEL_TRACES_EXPORTER": "none"}, []),
        ({"OTEL_TRACES_EXPORTER": "console"}, [ConsoleSpanExporter]),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"}, [GrpcSpanExporter]),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4317"}, [GrpcSpanExporter]),
        ({"OTEL_TRACES_EXPORTER": "otlp,console"}, [GrpcSpanExporter, ConsoleSpanExporter]),
        (
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            },
            [HttpSpanExporter],
        ),
    ],
)
async def test_exporter_chosen_by_environment(
    environ: dict[str, str], expected: list[type[object]]
) -> None:
    telemetry = Telemetry(TelemetryConfig(), environ=environ)
    try:
        assert [type(exporter) for exporter in telemetry.span_exporters] == expected
    finally:
        await telemetry.stop()


def test_otlp_http_endpoint_gets_the_traces_path() -> None:
    environ = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
    }
    (exporter,) = span_exporters_from_env(environ)
    endpoint = exporter._endpoint if isinstance(exporter, HttpSpanExporter) else None
    exporter.shutdown()
    assert endpoint == "http://collector:4318/v1/traces"


@pytest.mark.parametrize(
    "environ",
    [
        {"OTEL_TRACES_EXPORTER": "zipkin"},
        {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"},
    ],
)
def test_unsupported_exporter_settings_fail_loudly(environ: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="unsupported"):
        span_exporters_from_env(environ)


def test_config_rejects_bad_values() -> None:
    for bad in ({"metrics_address": "9464"}, {"sample_ratio": 1.5}, {"exporter": "otlp"}):
        with pytest.raises(ValidationError):
            TelemetryConfig.model_validate(bad)
    assert TelemetryConfig(metrics_address="[::1]:9464").metrics_address == "[::1]:9464"
