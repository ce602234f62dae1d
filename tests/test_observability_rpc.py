"""Traces and metrics of real calls: the span tree of a Chat that falls back once, trace context in
and out, and the Prometheus endpoint scraped over HTTP."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

from switchpoint.config import TelemetryConfig
from switchpoint.telemetry import Telemetry
from switchpoint.v1 import router_pb2 as pb
from tests.providers.anthropic_server import AnthropicServer
from tests.providers.fixtures import ANTHROPIC_TEST_KEY, OPENAI_TEST_KEY
from tests.providers.openai_server import OpenAIServer
from tests.providers.script import error, hang
from tests.sidecar_harness import running_sidecar, user

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


def _config(openai: OpenAIServer, anthropic: AnthropicServer) -> dict[str, Any]:
    def model(name: str, provider: str, price: float) -> dict[str, Any]:
        return {
            "name": name,
            "provider": provider,
            "upstream_model": f"{name}-upstream",
            "price": {"input_per_mtok": price, "output_per_mtok": price},
            "context_window": 100000,
            "quality": 0.5,
            "latency_prior": {"ttft_ms": 100, "tpot_ms": 10},
        }

    no_retry = {"max_retries": 0}
    return {
        "providers": {
            "oai": {
                "kind": "openai",
                "base_url": openai.base_url,
                "api_key_env": "T_OAI",
                "retry": no_retry,
            },
            "ant": {
                "kind": "anthropic",
                "base_url": anthropic.base_url,
                "api_key_env": "T_ANT",
                "retry": no_retry,
            },
        },
        "models": [model("gpt", "oai", 1.0), model("claude", "ant", 2.0)],
    }


def _by_name(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


async def _fallback_call(
    openai_server: OpenAIServer, anthropic_server: AnthropicServer
) -> tuple[pb.ChatResponse, tuple[ReadableSpan, ...], str]:
    """A Chat that fails on gpt and is served by claude; its reply, spans and /metrics text."""
    exporter = InMemorySpanExporter()
    telemetry = Telemetry(
        TelemetryConfig(metrics_address="127.0.0.1:0"), span_exporter=exporter, environ={}
    )
    openai_server.script.push(error(500))
    env = {"T_OAI": OPENAI_TEST_KEY, "T_ANT": ANTHROPIC_TEST_KEY}
    async with running_sidecar(
        _config(openai_server, anthropic_server), env, telemetry=telemetry
    ) as sidecar:
        request = pb.ChatRequest(
            messages=user("trace me please"),
            routing=pb.RoutingOptions(
                models=["gpt", "claude"], weights=pb.Weights(cost=1), tenant="acme"
            ),
        )
        metadata = (("traceparent", TRACEPARENT), ("baggage", "team=checkout"))
        reply = await sidecar.stub.Chat(request, metadata=metadata)
        port = sidecar.sidecar.metrics_port
        assert port is not None
        async with httpx.AsyncClient() as client:
            scraped = await client.get(f"http://127.0.0.1:{port}/metrics")
    assert reply.model == "claude"
    assert scraped.status_code == 200
    return reply, exporter.get_finished_spans(), scraped.text


async def test_fallback_once_span_tree_and_trace_context(
    openai_server: OpenAIServer, anthropic_server: AnthropicServer
) -> None:
    reply, spans, _ = await _fallback_call(openai_server, anthropic_server)
    [root] = _by_name(spans, "switchpoint.request")
    assert root.context is not None
    assert f"{root.context.trace_id:032x}" == TRACE_ID, "the caller's trace was not continued"
    assert root.parent is not None
    assert f"{root.parent.span_id:016x}" == PARENT_ID
    assert root.attributes is not None
    assert root.attributes["rpc.method"] == "Chat"
    assert root.attributes["switchpoint.model"] == "claude"
    assert [e.name for e in root.events] == ["switchpoint.fallback"]
    fallback = root.events[0].attributes or {}
    assert (fallback["switchpoint.from_model"], fallback["error.type"]) == ("gpt", "server_error")

    children = {s.name for s in spans if s.parent and s.parent.span_id == root.context.span_id}
    assert {"switchpoint.route", "switchpoint.gate", "switchpoint.provider.call"} <= children
    calls = _by_name(spans, "switchpoint.provider.call")
    assert len(calls) == 2
    failed, served = sorted(calls, key=lambda s: s.start_time or 0)
    assert failed.attributes is not None
    assert served.attributes is not None
    assert failed.attributes["gen_ai.system"] == "openai"
    assert failed.attributes["gen_ai.request.model"] == "gpt-upstream"
    assert failed.attributes["error.type"] == "server_error"
    assert served.attributes["gen_ai.system"] == "anthropic"
    assert served.attributes["gen_ai.usage.input_tokens"] == reply.usage.input_tokens
    assert served.attributes["gen_ai.usage.output_tokens"] == reply.usage.output_tokens

    # Outgoing calls carry the trace: each provider saw a traceparent of this trace.
    for server, span in ((openai_server, failed), (anthropic_server, served)):
        headers = server.requests[-1].headers
        assert span.context is not None
        assert headers["traceparent"] == f"00-{TRACE_ID}-{span.context.span_id:016x}-01"
        assert headers["baggage"] == "team=checkout"


async def test_fallback_once_metrics_scraped_over_http(
    openai_server: OpenAIServer, anthropic_server: AnthropicServer
) -> None:
    reply, _, scraped = await _fallback_call(openai_server, anthropic_server)
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(scraped)
        for s in family.samples
    }

    def value(name: str, **labels: str) -> float:
        matches = [
            v
            for (n, ls), v in samples.items()
            if n == name and all(dict(ls).get(k) == want for k, want in labels.items())
        ]
        assert matches, f"no sample {name} {labels}"
        return sum(matches)

    # "acme" is named nowhere in the config: its series carry the one "other" label.
    assert value("switchpoint_requests_total", model="claude", outcome="ok", tenant="other") == 1
    assert value("switchpoint_provider_latency_seconds_count", model="gpt", outcome="error") == 1
    assert value("switchpoint_provider_latency_seconds_count", model="claude", outcome="ok") == 1
    assert value("switchpoint_tokens_total", model="claude", direction="output") == (
        reply.usage.output_tokens
    )
    assert abs(value("switchpoint_cost_usd_total", model="claude") - reply.cost_usd) < 1e-12
    assert value("switchpoint_routing_overhead_seconds_count", rpc="Chat") == 1
    assert value("switchpoint_breaker_state", model="gpt") == 0
    assert value("switchpoint_queue_depth", model="claude") == 0


async def test_route_without_span_export_still_counts_and_times_every_call(
    openai_server: OpenAIServer, anthropic_server: AnthropicServer
) -> None:
    # No span exporter: Route takes the path that skips trace context entirely (nothing reads
    # it); the request counter and the overhead histogram must still see every call, failures
    # included.
    telemetry = Telemetry(TelemetryConfig(metrics_address="127.0.0.1:0"), environ={})
    env = {"T_OAI": OPENAI_TEST_KEY, "T_ANT": ANTHROPIC_TEST_KEY}
    async with running_sidecar(
        _config(openai_server, anthropic_server), env, telemetry=telemetry
    ) as sidecar:
        metadata = (("traceparent", TRACEPARENT),)
        for _ in range(3):
            decision = await sidecar.stub.Route(
                pb.RouteRequest(messages=user("route me"), routing=pb.RoutingOptions(tenant="t")),
                metadata=metadata,
            )
            assert decision.model
        with pytest.raises(grpc.aio.AioRpcError) as rejected:
            await sidecar.stub.Route(pb.RouteRequest(), metadata=metadata)
        assert rejected.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        port = sidecar.sidecar.metrics_port
        assert port is not None
        async with httpx.AsyncClient() as client:
            scraped = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
    samples = [s for f in text_string_to_metric_families(scraped) for s in f.samples]

    def value(name: str, **labels: str) -> float:
        return sum(
            s.value for s in samples if s.name == name and labels.items() <= s.labels.items()
        )

    # Tenant "t" is named nowhere in the config: counted as "other", in Rust as in Python.
    assert value("switchpoint_requests_total", outcome="ok", tenant="other") == 3
    assert value("switchpoint_requests_total", outcome="invalid_argument") == 1
    assert value("switchpoint_routing_overhead_seconds_count", rpc="Route") == 4
    assert value("switchpoint_routing_overhead_seconds_sum", rpc="Route") > 0


async def test_without_a_span_exporter_providers_still_get_the_callers_trace(
    openai_server: OpenAIServer, anthropic_server: AnthropicServer
) -> None:
    # Nothing records spans, so the sidecar makes none: the caller's own trace context (and
    # baggage) is what each provider request carries on, through the fallback too.
    telemetry = Telemetry(TelemetryConfig(metrics_address=None), environ={})
    openai_server.script.push(error(500))
    env = {"T_OAI": OPENAI_TEST_KEY, "T_ANT": ANTHROPIC_TEST_KEY}
    async with running_sidecar(
        _config(openai_server, anthropic_server), env, telemetry=telemetry
    ) as sidecar:
        request = pb.ChatRequest(
            messages=user("trace me please"),
            routing=pb.RoutingOptions(models=["gpt", "claude"], weights=pb.Weights(cost=1)),
        )
        metadata = (("traceparent", TRACEPARENT), ("baggage", "team=checkout"))
        reply = await sidecar.stub.Chat(request, metadata=metadata)
        untraced = await sidecar.stub.Chat(request)
    assert (reply.model, untraced.model) == ("claude", "gpt")
    traced = [openai_server.requests[0].headers, anthropic_server.requests[0].headers]
    for headers in traced:
        assert headers["traceparent"] == TRACEPARENT
        assert headers["baggage"] == "team=checkout"
    assert "traceparent" not in openai_server.requests[1].headers


async def test_a_stream_the_client_cancels_is_counted_cancelled_not_ok(
    openai_server: OpenAIServer, anthropic_server: AnthropicServer
) -> None:
    # The provider sends one chunk and stalls: only the client's cancel ends the call.
    openai_server.script.push(hang(10.0, after_chunks=1))
    telemetry = Telemetry(TelemetryConfig(metrics_address="127.0.0.1:0"), environ={})
    env = {"T_OAI": OPENAI_TEST_KEY, "T_ANT": ANTHROPIC_TEST_KEY}
    async with running_sidecar(
        _config(openai_server, anthropic_server), env, telemetry=telemetry
    ) as sidecar:
        request = pb.ChatRequest(
            messages=user("a long answer please"), routing=pb.RoutingOptions(models=["gpt"])
        )
        call = sidecar.stub.ChatStream(request)
        first = await call.read()
        assert isinstance(first, pb.ChatChunk)
        call.cancel()
        port = sidecar.sidecar.metrics_port
        assert port is not None
        outcomes: dict[str, float] = {}
        async with httpx.AsyncClient() as client:
            for _ in range(200):  # bounded: the handler finishes as soon as it sees the cancel
                scraped = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
                outcomes = {
                    s.labels["outcome"]: s.value
                    for f in text_string_to_metric_families(scraped)
                    for s in f.samples
                    if s.name == "switchpoint_requests_total"
                }
                if outcomes:
                    break
                await asyncio.sleep(0.02)
    assert outcomes == {"cancelled": 1}
