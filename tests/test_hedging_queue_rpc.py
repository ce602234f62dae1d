"""Hedged Chat calls and the priority queue, through real gRPC and real HTTP."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import pytest

from switchpoint.v1 import router_pb2 as pb
from tests.providers.anthropic_server import AnthropicServer
from tests.providers.fixtures import ANTHROPIC_TEST_KEY, OPENAI_TEST_KEY
from tests.providers.openai_server import OpenAIServer
from tests.providers.script import echo_answer, hang
from tests.sidecar_harness import running_sidecar, user
from tests.support.waiting import wait_until

ENV = {"T_OAI": OPENAI_TEST_KEY, "T_ANT": ANTHROPIC_TEST_KEY}


def _config(openai: OpenAIServer, anthropic: AnthropicServer) -> dict[str, Any]:
    def model(name: str, provider: str, price: float, **extra: Any) -> dict[str, Any]:
        return {
            "name": name,
            "provider": provider,
            "price": {"input_per_mtok": price, "output_per_mtok": price},
            "context_window": 100000,
            "quality": 0.5,
            # 100 ms + 10 tokens x 10 ms: the hedge fires 200 ms into a call without samples.
            "latency_prior": {"ttft_ms": 100, "tpot_ms": 10},
            **extra,
        }

    return {
        "providers": {
            "oai": {"kind": "openai", "base_url": openai.base_url, "api_key_env": "T_OAI"},
            "ant": {"kind": "anthropic", "base_url": anthropic.base_url, "api_key_env": "T_ANT"},
        },
        "models": [
            model("gpt", "oai", 1.0, max_concurrency=1),
            model("claude", "ant", 2.0),
        ],
        "routing": {"stages": {"fast": {"models": ["gpt", "claude"], "hedge": True}}},
    }


def _chat(*models: str, hedge: bool = False, stage: str = "") -> pb.ChatRequest:
    return pb.ChatRequest(
        messages=user("race us"),
        routing=pb.RoutingOptions(
            models=list(models), weights=pb.Weights(cost=1), hedge=hedge, stage=stage
        ),
        params=pb.GenerationParams(max_tokens=10),
    )


async def test_hedge_takes_the_first_answer_and_cancels_the_other(
    openai_server: OpenAIServer, anthropic_server: AnthropicServer
) -> None:
    openai_server.script.push(hang(1.5))
    async with running_sidecar(_config(openai_server, anthropic_server), ENV) as sidecar:
        started = time.monotonic()
        reply = await sidecar.stub.Chat(_chat("gpt", "claude", hedge=True))
        elapsed = time.monotonic() - started
        for _ in range(50):
            if openai_server.disconnects:
                break
            await asyncio.sleep(0.02)
    assert reply.model == "claude"
    assert [(a.model, a.error_class or "ok") for a in reply.attempts] == [
        ("claude", "ok"),
        ("gpt", "hedge_lost"),
    ]
    assert elapsed < 1.5, "the hedge did not answer before the slow model would have"
    assert openai_server.disconnects == 1, "the losing upstream call was not cancelled"


async def test_stream_hedge_takes_the_first_token_and_cancels_the_other(
    openai_server: OpenAIServer, anthropic_server: AnthropicServer
) -> None:
    # gpt stays silent past its 100 ms prior time to first token: claude's stream is started too,
    # gives the first token, and the client gets claude's answer alone.
    openai_server.script.push(hang(1.5))
    async with running_sidecar(_config(openai_server, anthropic_server), ENV) as sidecar:
        chunks = [c async for c in sidecar.stub.ChatStream(_chat("gpt", "claude", hedge=True))]
        await wait_until(lambda: openai_server.disconnects == 1)
        # gpt runs one call at a time (max_concurrency 1): the lost race gave its slot back.
        after = await sidecar.stub.Chat(_chat("gpt"), timeout=5.0)
    *deltas, final = chunks
    assert final.done
    assert final.model == "claude"
    assert {c.model for c in deltas} == {"claude"}
    assert "".join(c.delta for c in deltas) == echo_answer("claude", "race us")
    # In the order things ended: the losing stream was stopped when the race was decided.
    assert [(a.model, a.error_class or "ok") for a in final.attempts] == [
        ("gpt", "hedge_lost"),
        ("claude", "ok"),
    ]
    assert after.model == "gpt"


async def test_stream_hedge_is_not_started_while_the_first_model_is_on_time(
    openai_server: OpenAIServer, anthropic_server: AnthropicServer
) -> None:
    async with running_sidecar(_config(openai_server, anthropic_server), ENV) as sidecar:
        chunks = [c async for c in sidecar.stub.ChatStream(_chat("gpt", "claude", hedge=True))]
    final = chunks[-1]
    assert final.model == "gpt"
    assert [(a.model, a.error_class or "ok") for a in final.attempts] == [("gpt", "ok")]
    assert anthropic_server.requests == []


async def test_a_client_gone_mid_race_cancels_both_streams(
    openai_server: OpenAIServer, anthropic_server: AnthropicServer
) -> None:
    openai_server.script.push(hang(3.0))
    anthropic_server.script.push(hang(3.0))
    async with running_sidecar(_config(openai_server, anthropic_server), ENV) as sidecar:
        call = sidecar.stub.ChatStream(_chat("gpt", "claude", hedge=True))
        await wait_until(lambda: len(anthropic_server.requests) == 1)  # both streams are racing
        call.cancel()
        await wait_until(lambda: openai_server.disconnects == anthropic_server.disconnects == 1)
        # gpt's one concurrency slot came back with its cancelled stream.
        after = await sidecar.stub.Chat(_chat("gpt"), timeout=5.0)
    assert after.model == "gpt"


async def test_stage_hedging_and_no_hedge_without_it(
    openai_server: OpenAIServer, anthropic_server: AnthropicServer
) -> None:
    openai_server.script.push(hang(0.6), hang(0.6))
    async with running_sidecar(_config(openai_server, anthropic_server), ENV) as sidecar:
        hedged = await sidecar.stub.Chat(_chat(stage="fast"))
        plain = await sidecar.stub.Chat(_chat("gpt", "claude"))
    assert hedged.model == "claude"
    assert plain.model == "gpt"
    assert len(anthropic_server.requests) == 1


async def test_the_queue_sheds_a_call_that_cannot_meet_its_deadline(
    openai_server: OpenAIServer, anthropic_server: AnthropicServer
) -> None:
    openai_server.script.default = hang(0.8)
    async with running_sidecar(_config(openai_server, anthropic_server), ENV) as sidecar:

        async def chat() -> pb.ChatResponse:
            return await sidecar.stub.Chat(_chat("gpt"))

        holder = asyncio.create_task(chat())
        for _ in range(100):
            if openai_server.requests:
                break
            await asyncio.sleep(0.01)
        waiter = asyncio.create_task(chat())
        await asyncio.sleep(0.1)
        queued = (await sidecar.stub.GetStats(pb.StatsRequest(models=["gpt"]))).models[0]
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await sidecar.stub.Chat(_chat("gpt"), timeout=0.5)
        refused_after = time.monotonic() - started
        await holder
        await waiter
        after = (await sidecar.stub.GetStats(pb.StatsRequest(models=["gpt"]))).models[0]
    assert (queued.in_flight, queued.queue_depth) == (1, 1)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "admission queue of 'gpt' refused the call" in (caught.value.details() or "")
    assert refused_after < 0.4, "a call that cannot make its deadline must be refused at once"
    assert after.queue_rejected == 1
    assert after.queue_wait.samples >= 2
    assert after.queue_wait.p99_ms > 0
