"""Chat, ChatStream and GetStats through a real gRPC server to loopback provider servers that speak
the OpenAI and Anthropic wire protocols over real HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from switchpoint.v1 import router_pb2 as pb
from tests.providers.anthropic_server import AnthropicServer
from tests.providers.fixtures import ANTHROPIC_TEST_KEY, OPENAI_TEST_KEY, leaked_fragments
from tests.providers.openai_server import OpenAIServer
from tests.providers.script import echo_answer, error, garbage, stream_cut
from tests.sidecar_harness import RunningSidecar, running_sidecar, user

OPENAI_PRICE = {"input_per_mtok": 1.0, "output_per_mtok": 2.0}
ANTHROPIC_PRICE = {"input_per_mtok": 3.0, "output_per_mtok": 15.0}


def _config(openai: OpenAIServer, anthropic: AnthropicServer) -> dict[str, Any]:
    common = {"context_window": 100000, "latency_prior": {"ttft_ms": 100, "tpot_ms": 10}}
    return {
        "providers": {
            # No retries: these tests are about one attempt per model (see test_resilience_rpc).
            "oai": {
                "kind": "openai",
                "base_url": openai.base_url,
                "api_key_env": "T_OAI",
                "retry": {"max_retries": 0},
            },
            "ant": {
                "kind": "anthropic",
                "base_url": anthropic.base_url,
                "api_key_env": "T_ANT",
                "retry": {"max_retries": 0},
            },
        },
        "models": [
            {
                **common,
                "name": "gpt-small",
                "provider": "oai",
                "upstream_model": "gpt-4o-mini",
                "price": OPENAI_PRICE,
                "quality": 0.6,
            },
            {
                **common,
                "name": "claude-small",
                "provider": "ant",
                "upstream_model": "claude-3-5-haiku-latest",
                "price": ANTHROPIC_PRICE,
                "quality": 0.7,
            },
        ],
        "routing": {"fallback_chain": ["gpt-small", "claude-small"], "stream_continuation": False},
    }


KEYS = {"T_OAI": OPENAI_TEST_KEY, "T_ANT": ANTHROPIC_TEST_KEY}


@pytest.fixture
async def sidecar(
    openai_server: OpenAIServer, anthropic_server: AnthropicServer
) -> AsyncIterator[RunningSidecar]:
    async with running_sidecar(_config(openai_server, anthropic_server), KEYS) as running:
        yield running


def _chat(text: str, *models: str, request_id: str = "", **params: Any) -> pb.ChatRequest:
    return pb.ChatRequest(
        messages=user(text),
        routing=pb.RoutingOptions(models=list(models)),
        params=pb.GenerationParams(**params),
        request_id=request_id,
    )


def _cost(price: dict[str, float], usage: pb.Usage) -> float:
    return (
        usage.input_tokens * price["input_per_mtok"]
        + usage.output_tokens * price["output_per_mtok"]
    ) / 1e6


async def _stream(sidecar: RunningSidecar, request: pb.ChatRequest) -> list[pb.ChatChunk]:
    return [chunk async for chunk in sidecar.stub.ChatStream(request)]


async def test_chat_openai(sidecar: RunningSidecar, openai_server: OpenAIServer) -> None:
    reply = await sidecar.stub.Chat(
        _chat("say hello to the tests", "gpt-small", request_id="req-1", max_tokens=50)
    )
    assert reply.content == echo_answer("gpt-4o-mini", "say hello to the tests")
    assert (reply.model, reply.provider, reply.request_id) == ("gpt-small", "oai", "req-1")
    assert reply.usage.input_tokens == 5
    assert reply.usage.output_tokens == len(reply.content.split())
    assert reply.cost_usd == pytest.approx(_cost(OPENAI_PRICE, reply.usage))
    assert [(a.model, a.outcome) for a in reply.attempts] == [("gpt-small", "ok")]
    assert reply.decision.model == "gpt-small"
    assert reply.latency_ms > 0
    sent = openai_server.requests[-1]
    assert isinstance(sent.body, dict)
    assert sent.body["model"] == "gpt-4o-mini"
    assert sent.body["max_tokens"] == 50
    assert sent.headers["authorization"] == f"Bearer {OPENAI_TEST_KEY}"


async def test_chat_anthropic_puts_system_prompt_on_top(
    sidecar: RunningSidecar, anthropic_server: AnthropicServer
) -> None:
    request = pb.ChatRequest(
        messages=[
            pb.Message(role="system", content="be terse"),
            pb.Message(role="user", content="what is two plus two"),
        ],
        routing=pb.RoutingOptions(models=["claude-small"]),
    )
    reply = await sidecar.stub.Chat(request)
    assert reply.content == echo_answer("claude-3-5-haiku-latest", "what is two plus two")
    assert reply.cost_usd == pytest.approx(_cost(ANTHROPIC_PRICE, reply.usage))
    sent = anthropic_server.requests[-1]
    assert isinstance(sent.body, dict)
    assert sent.body["system"] == "be terse"
    assert [m["role"] for m in sent.body["messages"]] == ["user"]
    assert sent.headers["x-api-key"] == ANTHROPIC_TEST_KEY


@pytest.mark.parametrize(
    ("model", "upstream"),
    [("gpt-small", "gpt-4o-mini"), ("claude-small", "claude-3-5-haiku-latest")],
)
async def test_chat_stream_relays_tokens(
    sidecar: RunningSidecar, model: str, upstream: str
) -> None:
    chunks = await _stream(sidecar, _chat("stream these five words please", model))
    deltas = [c.delta for c in chunks if not c.done]
    assert len(deltas) > 3, "the answer must arrive token by token, not in one piece"
    assert "".join(deltas) == echo_answer(upstream, "stream these five words please")
    assert chunks[0].decision.model == model
    assert not chunks[1].HasField("decision")
    last = chunks[-1]
    assert last.done
    assert [c.done for c in chunks].count(True) == 1
    assert last.usage.output_tokens == len(deltas)
    assert last.cost_usd == pytest.approx(
        _cost(OPENAI_PRICE if model == "gpt-small" else ANTHROPIC_PRICE, last.usage)
    )
    assert 0 < last.ttft_ms <= last.latency_ms
    assert [(a.model, a.outcome) for a in last.attempts] == [(model, "ok")]


async def test_chat_falls_back_to_the_next_candidate(
    sidecar: RunningSidecar, openai_server: OpenAIServer
) -> None:
    openai_server.script.push(error(500))
    weights = pb.Weights(cost=1)
    request = pb.ChatRequest(
        messages=user("fall back please"),
        routing=pb.RoutingOptions(models=["gpt-small", "claude-small"], weights=weights),
    )
    reply = await sidecar.stub.Chat(request)
    assert reply.model == "claude-small"
    assert [(a.model, a.outcome, a.error_class) for a in reply.attempts] == [
        ("gpt-small", "error", "server_error"),
        ("claude-small", "ok", ""),
    ]


async def test_stream_fails_over_before_the_first_token(
    sidecar: RunningSidecar, openai_server: OpenAIServer
) -> None:
    openai_server.script.push(error(503))
    request = _chat("switch before anything was sent", "gpt-small", "claude-small")
    request.routing.weights.CopyFrom(pb.Weights(cost=1))
    chunks = await _stream(sidecar, request)
    text = "".join(c.delta for c in chunks)
    assert text == echo_answer("claude-3-5-haiku-latest", "switch before anything was sent")
    assert {c.model for c in chunks} == {"claude-small"}
    assert [a.outcome for a in chunks[-1].attempts] == ["error", "ok"]


async def test_stream_cut_after_tokens_is_an_error_not_a_short_answer(
    sidecar: RunningSidecar, openai_server: OpenAIServer
) -> None:
    openai_server.script.push(stream_cut(2))
    received: list[pb.ChatChunk] = []

    async def consume() -> None:
        async for chunk in sidecar.stub.ChatStream(_chat("one two three four five", "gpt-small")):
            received.append(chunk)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await consume()
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "oai" in (caught.value.details() or "")
    assert len(received) == 2
    assert not any(c.done for c in received)


async def test_wrong_api_key_is_a_clear_error_without_the_key() -> None:
    with OpenAIServer(api_key=OPENAI_TEST_KEY) as openai, AnthropicServer() as anthropic:
        config = _config(openai, anthropic)
        config["routing"] = {"fallback_chain": ["gpt-small"]}
        wrong_key = "sk-wrong-" + OPENAI_TEST_KEY[::-1]
        async with running_sidecar(config, {"T_OAI": wrong_key, "T_ANT": "x"}) as sidecar:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await sidecar.stub.Chat(_chat("hello", "gpt-small"))
    details = caught.value.details() or ""
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "provider 'oai' failed (auth)" in details
    assert leaked_fragments(details, wrong_key) == []
    assert "Traceback" not in details


async def test_garbage_response_names_the_provider(
    sidecar: RunningSidecar, openai_server: OpenAIServer
) -> None:
    openai_server.script.push(garbage())
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await sidecar.stub.Chat(_chat("hello", "gpt-small"))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "provider 'oai' failed (bad_response)" in (caught.value.details() or "")


async def test_invalid_request_upstream_is_not_retried_elsewhere(
    sidecar: RunningSidecar, openai_server: OpenAIServer, anthropic_server: AnthropicServer
) -> None:
    openai_server.script.push(error(400))
    request = _chat("bad params", "gpt-small", "claude-small")
    request.routing.weights.CopyFrom(pb.Weights(cost=1))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await sidecar.stub.Chat(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert anthropic_server.requests == []


async def test_get_stats_counts_and_percentiles(
    sidecar: RunningSidecar, openai_server: OpenAIServer
) -> None:
    for _ in range(3):
        await sidecar.stub.Chat(_chat("count me", "gpt-small"))
    await _stream(sidecar, _chat("stream me too please", "gpt-small"))
    openai_server.script.push(error(500), error(500))
    with pytest.raises(grpc.aio.AioRpcError):
        await sidecar.stub.Chat(_chat("fail", "gpt-small"))
    stats = await sidecar.stub.GetStats(pb.StatsRequest(models=["gpt-small"]))
    assert [m.model for m in stats.models] == ["gpt-small"]
    gpt = stats.models[0]
    assert (gpt.requests, gpt.errors) == (5, 1)
    assert gpt.input_tokens > 0
    assert gpt.output_tokens > 0
    assert gpt.cost_usd == pytest.approx((gpt.input_tokens * 1.0 + gpt.output_tokens * 2.0) / 1e6)
    assert gpt.latency.samples == pytest.approx(4, rel=0.05)
    assert 0 < gpt.latency.p50_ms <= gpt.latency.p95_ms <= gpt.latency.p99_ms
    assert gpt.ttft.samples == pytest.approx(1, rel=0.05)
    everything = await sidecar.stub.GetStats(pb.StatsRequest())
    assert {m.model for m in everything.models} == {"gpt-small", "claude-small"}
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await sidecar.stub.GetStats(pb.StatsRequest(models=["nope"]))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "models[0]" in (caught.value.details() or "")


async def test_live_latency_replaces_the_prior_after_enough_streams(
    openai_server: OpenAIServer, anthropic_server: AnthropicServer
) -> None:
    config = _config(openai_server, anthropic_server)
    config["routing"]["min_latency_samples"] = 2
    # A prior far from anything loopback can produce, so the switch to live figures shows.
    config["models"][0]["latency_prior"] = {"ttft_ms": 90000, "tpot_ms": 9000}
    async with running_sidecar(config, KEYS) as sidecar:
        route = pb.RouteRequest(
            messages=user("hi"),
            routing=pb.RoutingOptions(models=["gpt-small"]),
            params=pb.GenerationParams(max_tokens=10),
        )
        before = (await sidecar.stub.Route(route)).candidates[0]
        for _ in range(2):
            await _stream(sidecar, _chat("a few words to stream back", "gpt-small"))
        after = (await sidecar.stub.Route(route)).candidates[0]
    assert not before.latency_observed
    assert before.estimated_latency_ms == pytest.approx(90000 + 10 * 9000)
    assert after.latency_observed
    assert after.estimated_latency_ms < 5000


async def test_get_stats_filters_by_tenant_and_stage(
    openai_server: OpenAIServer, anthropic_server: AnthropicServer
) -> None:
    config = _config(openai_server, anthropic_server)
    config["routing"]["stages"] = {"ui": {"models": ["gpt-small"]}}
    # Stats keep apart the tenants the config names; any other is counted as "other".
    config["budgets"] = [
        {"name": name, "match": {"tenant": name}, "window": "day", "limit_usd": 100.0}
        for name in ("acme", "globex")
    ]
    async with running_sidecar(config, KEYS) as sidecar:
        for tenant, stage in (("acme", "ui"), ("acme", ""), ("globex", "ui"), ("walk-in", "")):
            request = _chat("count me", "gpt-small")
            request.routing.tenant = tenant
            request.routing.stage = stage
            await sidecar.stub.Chat(request)
        acme = await sidecar.stub.GetStats(pb.StatsRequest(models=["gpt-small"], tenant="acme"))
        ui = await sidecar.stub.GetStats(pb.StatsRequest(models=["gpt-small"], stage="ui"))
        both = await sidecar.stub.GetStats(
            pb.StatsRequest(models=["gpt-small"], tenant="acme", stage="ui")
        )
        unnamed = await sidecar.stub.GetStats(pb.StatsRequest(models=["gpt-small"], tenant="x"))
    assert acme.models[0].requests == 2
    assert ui.models[0].requests == 2
    assert both.models[0].requests == 1
    assert both.models[0].cost_usd == pytest.approx(acme.models[0].cost_usd / 2)
    # A tenant the config does not name reads the one "other" bucket: the walk-in's call.
    assert unnamed.models[0].requests == 1
