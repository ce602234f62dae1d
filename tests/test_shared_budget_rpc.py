"""Two sidecars sharing one budget through one real Redis: the bound holds across replicas, and a
Redis outage is reported (GetStats, health) and reconciled without losing or doubling spend."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from switchpoint.v1 import router_pb2 as pb
from tests.providers.anthropic_server import AnthropicServer
from tests.providers.fixtures import OPENAI_TEST_KEY
from tests.providers.openai_server import OpenAIServer
from tests.providers.script import hang
from tests.redis_server import RedisServer
from tests.sidecar_harness import RunningSidecar, one_model_config, running_sidecar, user

LIMIT_USD = 2.0
SLICE_USD = 0.25


def _config(openai: OpenAIServer, redis_url: str, replica: str) -> dict[str, Any]:
    return {
        **one_model_config(openai.base_url, api_key_env="K"),
        "budgets": [{"name": "shared-day", "window": "day", "limit_usd": LIMIT_USD}],
        "shared_state": {
            "redis_url": redis_url,
            "slice_usd": SLICE_USD,
            "sync_interval_s": 0.1,
            "replica_id": replica,
            "policy": "fail-closed",
        },
    }


def _chat() -> pb.ChatRequest:
    return pb.ChatRequest(
        messages=user("hello there"),
        routing=pb.RoutingOptions(models=["gpt"]),
        params=pb.GenerationParams(max_tokens=10),
    )


async def _spend_until_refused(sidecar: RunningSidecar, calls: int) -> list[pb.ChatResponse]:
    results = await asyncio.gather(
        *(sidecar.stub.Chat(_chat()) for _ in range(calls)), return_exceptions=True
    )
    for r in results:
        if isinstance(r, grpc.aio.AioRpcError):
            assert r.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, r.details()
    return [r for r in results if isinstance(r, pb.ChatResponse)]


async def test_two_replicas_hold_one_budget(
    openai_server: OpenAIServer, anthropic_server: AnthropicServer, redis_server: RedisServer
) -> None:
    openai_server.script.default = hang(0.05)
    env = {"K": OPENAI_TEST_KEY}
    async with AsyncExitStack() as stack:
        replicas = [
            await stack.enter_async_context(
                running_sidecar(_config(openai_server, redis_server.url, f"r{i}"), env)
            )
            for i in range(2)
        ]
        served: list[pb.ChatResponse] = []
        for _ in range(40):
            rounds = await asyncio.gather(*(_spend_until_refused(r, 40) for r in replicas))
            batch = [reply for replies in rounds for reply in replies]
            served += batch
            if not batch:
                break  # both replicas refused everything: the shared pool is spent
            await asyncio.sleep(0.15)  # let leases sync so the next round sees the shared pool
        stats = await replicas[0].stub.GetStats(pb.StatsRequest())
        health = health_pb2_grpc.HealthStub(replicas[0].channel)
        shared_health = await health.Check(
            health_pb2.HealthCheckRequest(service="switchpoint.v1.SharedState")
        )
    # Stopped: every replica reported its spend and gave its unused lease back.
    total = sum(r.cost_usd for r in served)
    assert total > LIMIT_USD - 2 * SLICE_USD, "the shared budget was not used up"
    assert total <= LIMIT_USD + 2 * SLICE_USD
    assert stats.shared_state == "ok"
    assert shared_health.status == health_pb2.HealthCheckResponse.SERVING
    committed = await _committed_usd(redis_server)
    assert committed == pytest.approx(total, abs=1e-6)


async def _committed_usd(redis: RedisServer) -> float:
    from redis.asyncio import Redis

    client = Redis.from_url(redis.url)
    try:
        keys = [k async for k in client.scan_iter("switchpoint:budget:*")]
        assert len(keys) == 1
        committed = await client.hget(keys[0], "committed")
        leased = await client.hget(keys[0], "leased")
    finally:
        await client.aclose()
    assert int(leased or 0) == 0
    return int(committed or 0) / 1e9


async def test_redis_outage_is_reported_and_reconciled(
    openai_server: OpenAIServer, anthropic_server: AnthropicServer, redis_server: RedisServer
) -> None:
    env = {"K": OPENAI_TEST_KEY}
    config = _config(openai_server, redis_server.url, "solo")
    async with running_sidecar(config, env) as sidecar:
        before = [await sidecar.stub.Chat(_chat()) for _ in range(3)]
        redis_server.stop()
        await asyncio.sleep(0.5)
        during = [await sidecar.stub.Chat(_chat()) for _ in range(2)]
        degraded = await sidecar.stub.GetStats(pb.StatsRequest())
        health = health_pb2_grpc.HealthStub(sidecar.channel)
        await asyncio.sleep(1.2)
        shared_health = await health.Check(
            health_pb2.HealthCheckRequest(service="switchpoint.v1.SharedState")
        )
        overall = await health.Check(health_pb2.HealthCheckRequest(service=""))
        redis_server.start()
        for _ in range(50):
            if (await sidecar.stub.GetStats(pb.StatsRequest())).shared_state == "ok":
                break
            await asyncio.sleep(0.1)
        recovered = await sidecar.stub.GetStats(pb.StatsRequest())
    assert degraded.shared_state.startswith("degraded: ")
    assert shared_health.status == health_pb2.HealthCheckResponse.NOT_SERVING
    assert overall.status == health_pb2.HealthCheckResponse.SERVING
    assert recovered.shared_state == "ok"
    # Redis came back empty: the replica re-commits what it had reported, plus what it spent
    # during the outage, exactly once.
    spent = sum(r.cost_usd for r in before + during)
    assert await _committed_usd(redis_server) == pytest.approx(spent, abs=1e-6)
