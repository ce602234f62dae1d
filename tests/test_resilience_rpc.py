"""Failures through real gRPC and real HTTP: retries with backoff and Retry-After, fallback, the
context-window rule, circuit breakers, streaming continuation, deadlines and cancellation."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from switchpoint.engine.path import CONTINUE_PROMPT
from switchpoint.tokens import estimate_text_tokens
from switchpoint.v1 import router_pb2 as pb
from tests.providers.anthropic_server import AnthropicServer, prompt_too_long_error
from tests.providers.fixtures import ANTHROPIC_TEST_KEY, OPENAI_TEST_KEY
from tests.providers.openai_server import OpenAIServer, context_length_error
from tests.providers.script import (
    answer_tokens,
    echo_answer,
    error,
    garbage,
    hang,
    ok,
    reset,
    stream_cut,
)
from tests.sidecar_harness import RunningSidecar, running_sidecar, user

ENV = {"T_OAI": OPENAI_TEST_KEY, "T_ANT": ANTHROPIC_TEST_KEY}
FAST_RETRY = {"max_retries": 2, "base_delay_s": 0.01, "max_delay_s": 0.05}
BREAKER = {"consecutive_failures": 3, "open_s": 0.4, "min_calls": 50}


def _config(openai: OpenAIServer, anthropic: AnthropicServer, **routing: Any) -> dict[str, Any]:
    def model(name: str, provider: str, price: float, window: int) -> dict[str, Any]:
        return {
            "name": name,
            "provider": provider,
            "upstream_model": name,
            "price": {"input_per_mtok": price, "output_per_mtok": price},
            "context_window": window,
            "quality": 0.5,
            "latency_prior": {"ttft_ms": 100, "tpot_ms": 10},
        }

    provider = {"retry": FAST_RETRY, "breaker": BREAKER, "timeout_s": 0.4}
    return {
        "providers": {
            "oai": {
                "kind": "openai",
                "base_url": openai.base_url,
                "api_key_env": "T_OAI",
                **provider,
            },
            "ant": {
                "kind": "anthropic",
                "base_url": anthropic.base_url,
                "api_key_env": "T_ANT",
                **provider,
            },
        },
        # Prices make cost-first order gpt, gpt-mini, claude.
        "models": [
            model("gpt", "oai", 1.0, 100000),
            model("gpt-mini", "oai", 2.0, 50000),
            model("claude", "ant", 3.0, 200000),
        ],
        "routing": {"fallback_chain": ["claude"], **routing},
    }


@pytest.fixture
async def sidecar(
    openai_server: OpenAIServer, anthropic_server: AnthropicServer
) -> AsyncIterator[RunningSidecar]:
    async with running_sidecar(_config(openai_server, anthropic_server), ENV) as running:
        yield running


def _chat(text: str = "tell me something", *models: str) -> pb.ChatRequest:
    return pb.ChatRequest(
        messages=user(text),
        routing=pb.RoutingOptions(
            models=list(models) or ["gpt", "claude"], weights=pb.Weights(cost=1)
        ),
    )


def _attempts(reply: pb.ChatResponse | pb.ChatChunk) -> list[tuple[str, str]]:
    return [(a.model, a.error_class or "ok") for a in reply.attempts]


async def test_429_is_retried_after_retry_after(
    sidecar: RunningSidecar, openai_server: OpenAIServer
) -> None:
    openai_server.script.push(error(429, retry_after=0.3))
    started = time.monotonic()
    reply = await sidecar.stub.Chat(_chat())
    waited = time.monotonic() - started
    assert _attempts(reply) == [("gpt", "rate_limited"), ("gpt", "ok")]
    assert waited >= 0.3, "the retry went out before the provider's Retry-After"
    assert len(openai_server.requests) == 2


async def test_500s_then_success_on_the_same_model(
    sidecar: RunningSidecar, openai_server: OpenAIServer
) -> None:
    openai_server.script.push(error(500), error(502))
    reply = await sidecar.stub.Chat(_chat())
    assert _attempts(reply) == [("gpt", "server_error"), ("gpt", "server_error"), ("gpt", "ok")]
    assert reply.model == "gpt"


async def test_retries_exhausted_moves_to_the_next_model(
    sidecar: RunningSidecar, openai_server: OpenAIServer
) -> None:
    openai_server.script.push(error(503), error(503), error(503))
    reply = await sidecar.stub.Chat(_chat())
    assert _attempts(reply) == [("gpt", "server_error")] * 3 + [("claude", "ok")]
    assert reply.content == echo_answer("claude", "tell me something")


async def test_hang_past_the_timeout_is_retried_then_falls_back(
    sidecar: RunningSidecar, openai_server: OpenAIServer
) -> None:
    openai_server.script.push(hang(3), hang(3), hang(3))
    reply = await sidecar.stub.Chat(_chat())
    assert _attempts(reply) == [("gpt", "timeout")] * 3 + [("claude", "ok")]


async def test_connection_reset_is_retried(
    sidecar: RunningSidecar, openai_server: OpenAIServer
) -> None:
    openai_server.script.push(reset())
    reply = await sidecar.stub.Chat(_chat())
    assert _attempts(reply) == [("gpt", "connect"), ("gpt", "ok")]


async def test_malformed_json_moves_on_without_retrying(
    sidecar: RunningSidecar, openai_server: OpenAIServer
) -> None:
    openai_server.script.push(garbage())
    reply = await sidecar.stub.Chat(_chat())
    assert _attempts(reply) == [("gpt", "bad_response"), ("claude", "ok")]
    assert len(openai_server.requests) == 1


async def test_openai_context_window_error_only_tries_larger_windows(
    sidecar: RunningSidecar, openai_server: OpenAIServer
) -> None:
    openai_server.script.push(error(400, body=context_length_error("gpt")))
    reply = await sidecar.stub.Chat(_chat("long prompt", "gpt", "gpt-mini", "claude"))
    assert _attempts(reply) == [
        ("gpt", "context_window"),
        ("gpt-mini", "context_window_too_small"),
        ("claude", "ok"),
    ]
    assert len(openai_server.requests) == 1, "the smaller model must not be called"


async def test_anthropic_context_window_error_moves_to_a_larger_window(
    openai_server: OpenAIServer, anthropic_server: AnthropicServer
) -> None:
    config = _config(openai_server, anthropic_server)
    # claude is now the cheapest (tried first) and has the smallest window.
    config["models"][2]["context_window"] = 40000
    config["models"][2]["price"] = {"input_per_mtok": 0.5, "output_per_mtok": 0.5}
    async with running_sidecar(config, ENV) as sidecar:
        anthropic_server.script.push(error(400, body=prompt_too_long_error()))
        reply = await sidecar.stub.Chat(_chat("long prompt", "claude", "gpt-mini"))
    assert _attempts(reply) == [("claude", "context_window"), ("gpt-mini", "ok")]


async def test_circuit_breaker_opens_drops_out_of_routing_and_recovers(
    sidecar: RunningSidecar, openai_server: OpenAIServer
) -> None:
    openai_server.script.default = error(500)
    first = await sidecar.stub.Chat(_chat())  # three failures in a row open gpt's breaker
    assert _attempts(first)[-1] == ("claude", "ok")
    route = await sidecar.stub.Route(
        pb.RouteRequest(messages=user("hi"), routing=pb.RoutingOptions(weights=pb.Weights(cost=1)))
    )
    stats = await sidecar.stub.GetStats(pb.StatsRequest(models=["gpt"]))
    calls_while_open = len(openai_server.requests)
    second = await sidecar.stub.Chat(_chat())
    assert "gpt" not in [c.model for c in route.candidates]
    assert any(r.startswith("gpt excluded: circuit breaker open") for r in route.reasons)
    assert (stats.models[0].breaker_state, stats.models[0].breaker_opens) == ("open", 1)
    assert _attempts(second) == [("claude", "ok")]
    assert len(openai_server.requests) == calls_while_open, "an open breaker let a call through"

    openai_server.script.default = ok()
    await asyncio.sleep(0.45)  # open_s: the next call is a half-open trial
    third = await sidecar.stub.Chat(_chat())
    stats = await sidecar.stub.GetStats(pb.StatsRequest(models=["gpt"]))
    assert _attempts(third) == [("gpt", "ok")]
    assert stats.models[0].breaker_state == "closed"


async def test_stream_cut_mid_answer_continues_on_the_next_model(
    sidecar: RunningSidecar, openai_server: OpenAIServer, anthropic_server: AnthropicServer
) -> None:
    openai_server.script.push(stream_cut(3), stream_cut(0), stream_cut(0))
    text = "please stream a reasonably long answer back"
    chunks = [c async for c in sidecar.stub.ChatStream(_chat(text))]
    deltas = [c for c in chunks if not c.done]
    first_part = "".join(c.delta for c in deltas if c.model == "gpt")
    # gpt sends three tokens and dies; its two retries die before any token; claude carries on.
    assert first_part == "".join(answer_tokens(echo_answer("gpt", text))[:3])
    switch = next(c for c in deltas if c.model == "claude")
    assert switch.continued_from == "gpt"
    assert all(not c.continued_from for c in deltas if c is not switch)
    sent = anthropic_server.requests[-1].body
    assert isinstance(sent, dict)
    assert sent["messages"][-2] == {"role": "assistant", "content": first_part}
    assert sent["messages"][-1]["content"] == CONTINUE_PROMPT
    last = chunks[-1]
    assert last.done
    assert _attempts(last) == [("gpt", "connect")] * 3 + [("claude", "ok")]
    gpt_attempt = last.attempts[0]
    assert (gpt_attempt.model, gpt_attempt.error_class) == ("gpt", "connect")
    # Charged as the model's tokenizer ("estimate" here) counts the streamed text: no usage came.
    charged = gpt_attempt.usage.output_tokens
    assert charged == estimate_text_tokens(first_part), "tokens of the dead stream are charged"
    assert last.usage.output_tokens == sum(a.usage.output_tokens for a in last.attempts)
    assert last.cost_usd == pytest.approx(sum(a.cost_usd for a in last.attempts))


async def test_stream_continuation_can_be_turned_off(
    openai_server: OpenAIServer, anthropic_server: AnthropicServer
) -> None:
    config = _config(openai_server, anthropic_server, stream_continuation=False)
    async with running_sidecar(config, ENV) as sidecar:
        openai_server.script.push(stream_cut(2))
        received: list[pb.ChatChunk] = []

        async def consume() -> None:
            async for chunk in sidecar.stub.ChatStream(_chat()):
                received.append(chunk)

        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await consume()
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert len(received) == 2
    assert anthropic_server.requests == []


async def test_deadline_bounds_all_attempts_together(
    sidecar: RunningSidecar, openai_server: OpenAIServer, anthropic_server: AnthropicServer
) -> None:
    openai_server.script.default = hang(3)
    anthropic_server.script.default = hang(3)
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await sidecar.stub.Chat(_chat(), timeout=0.6)
    elapsed = time.monotonic() - started
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # Without the deadline the chain would take 3 x 0.4 s on gpt and then claude.
    assert elapsed < 1.2
    await asyncio.sleep(0.3)
    requests_after = len(openai_server.requests) + len(anthropic_server.requests)
    await asyncio.sleep(0.5)
    assert len(openai_server.requests) + len(anthropic_server.requests) == requests_after, (
        "attempts went on after the deadline"
    )


async def test_client_cancel_cancels_the_upstream_request(
    sidecar: RunningSidecar, openai_server: OpenAIServer
) -> None:
    openai_server.script.default = hang(0.35)  # under the 0.4 s timeout: only a cancel ends it
    call = sidecar.stub.ChatStream(_chat())
    for _ in range(100):
        if openai_server.requests:
            break
        await asyncio.sleep(0.01)
    call.cancel()
    for _ in range(50):
        if openai_server.disconnects:
            break
        await asyncio.sleep(0.02)
    assert openai_server.disconnects == 1, "the provider never saw the request go away"
    assert len(openai_server.requests) == 1, "a cancelled call must not be retried"
