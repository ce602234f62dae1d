"""Two sidecars sharing one RPM limit through one real Redis, end to end over gRPC: together they
serve at most the limit in a UTC minute and refuse the rest with RESOURCE_EXHAUSTED."""

from __future__ import annotations

import asyncio
import time
from contextlib import AsyncExitStack
from typing import Any

import grpc
from redis.asyncio import Redis

from switchpoint.v1 import router_pb2 as pb
from tests.providers.anthropic_server import AnthropicServer
from tests.providers.fixtures import OPENAI_TEST_KEY
from tests.providers.openai_server import OpenAIServer
from tests.providers.script import hang
from tests.redis_server import RedisServer
from tests.sidecar_harness import RunningSidecar, one_model_config, running_sidecar, user

RPM = 20
SLICE = 2  # a tenth of the per-minute pool
# Enough of the current minute left for the whole exchange, so all of it falls in one minute.
MINUTE_LEFT_S = 20.0


def _config(openai: OpenAIServer, redis_url: str, replica: str) -> dict[str, Any]:
    return {
        **one_model_config(openai.base_url, api_key_env="K", per_mtok=1.0),
        "limits": [{"name": "r", "rpm": RPM}],
        "shared_state": {"redis_url": redis_url, "sync_interval_s": 0.1, "replica_id": replica},
    }


def _chat() -> pb.ChatRequest:
    return pb.ChatRequest(
        messages=user("hello there"),
        routing=pb.RoutingOptions(models=["gpt"]),
        params=pb.GenerationParams(max_tokens=10),
    )


async def _burst(sidecar: RunningSidecar, calls: int) -> tuple[int, int]:
    """(served, refused) of `calls` concurrent Chat calls; anything but a refusal fails."""
    results = await asyncio.gather(
        *(sidecar.stub.Chat(_chat()) for _ in range(calls)), return_exceptions=True
    )
    refused = 0
    for result in results:
        if isinstance(result, grpc.aio.AioRpcError):
            assert result.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, result.details()
            assert "rate limit (rpm) 'r'" in (result.details() or "")
            refused += 1
        else:
            assert isinstance(result, pb.ChatResponse), result
    return len(results) - refused, refused


async def test_two_replicas_hold_one_rpm_limit(
    openai_server: OpenAIServer, anthropic_server: AnthropicServer, redis_server: RedisServer
) -> None:
    openai_server.script.default = hang(0.05)
    left = 60.0 - time.time() % 60.0
    if left < MINUTE_LEFT_S:
        await asyncio.sleep(left)
    minute = int(time.time()) // 60 * 60
    served = refused = 0
    async with AsyncExitStack() as stack:
        replicas = [
            await stack.enter_async_context(
                running_sidecar(
                    _config(openai_server, redis_server.url, f"r{i}"), {"K": OPENAI_TEST_KEY}
                )
            )
            for i in range(2)
        ]
        # Rounds until neither replica serves anything: a call refused while its replica's
        # top-up raced another call's is tried again in the next round.
        for _ in range(20):
            rounds = await asyncio.gather(*(_burst(replica, 15) for replica in replicas))
            served += sum(s for s, _ in rounds)
            refused += sum(r for _, r in rounds)
            if not any(s for s, _ in rounds):
                break
            await asyncio.sleep(0.15)
        assert int(time.time()) // 60 * 60 == minute, "the exchange ran into the next minute"
    # Unshared, each replica's own bucket would have served 20 (40 in all).
    assert RPM - 2 * SLICE < served <= RPM
    assert refused > 0
    client = Redis.from_url(redis_server.url, decode_responses=True)
    try:
        keys = [key async for key in client.scan_iter("switchpoint:rate:*")]
        assert keys == [f"switchpoint:rate:r:rpm:{minute}"]
        # Stopped: every served request reported exactly once, unused leases given back.
        assert int(await client.hget(keys[0], "committed") or 0) == served
        assert await client.hget(keys[0], "leased") == "0"
    finally:
        await client.aclose()
