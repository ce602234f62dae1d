"""Two `switchpoint serve` processes sharing one budget through one real Redis, hammered together,
with Redis killed and restarted mid-run: the budget holds across both, and the spend Redis ends with
is exactly what the two served, counted once."""

from __future__ import annotations

import asyncio
import signal
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import grpc
import pytest
from redis.asyncio import Redis

from switchpoint.v1 import router_pb2 as pb
from tests.providers.anthropic_server import AnthropicServer
from tests.providers.openai_server import OpenAIServer
from tests.providers.script import hang
from tests.redis_server import RedisServer
from tests.sidecar_harness import one_model_config, user
from tests.support.serve_process import ServeProcess, free_port, serving, write_config

LIMIT_USD = 1.5
SLICE_USD = 0.2


def _config(openai: OpenAIServer, redis_url: str, port: int, replica: str) -> dict[str, Any]:
    return {
        "server": {"grpc_address": f"127.0.0.1:{port}", "reload_poll_s": None},
        **one_model_config(openai.base_url, api_key_env="T_OAI"),
        "budgets": [{"name": "shared-day", "window": "day", "limit_usd": LIMIT_USD}],
        "shared_state": {
            "redis_url": redis_url,
            "slice_usd": SLICE_USD,
            "sync_interval_s": 0.1,
            "replica_id": replica,
            "policy": "fail-closed",
            "timeout_s": 0.3,
        },
    }


def _chat() -> pb.ChatRequest:
    return pb.ChatRequest(messages=user("hello there"), params=pb.GenerationParams(max_tokens=10))


async def _round(replicas: list[ServeProcess], calls: int) -> list[pb.ChatResponse]:
    async def one(replica: ServeProcess) -> pb.ChatResponse | grpc.aio.AioRpcError:
        try:
            return await replica.stub.Chat(_chat(), timeout=10)
        except grpc.aio.AioRpcError as exc:
            return exc

    results = await asyncio.gather(*(one(r) for r in replicas for _ in range(calls)))
    for result in results:
        if isinstance(result, grpc.aio.AioRpcError):
            assert result.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, result.details()
    return [r for r in results if isinstance(r, pb.ChatResponse)]


async def _committed_usd(redis: RedisServer) -> float:
    client = Redis.from_url(redis.url)
    try:
        keys = [k async for k in client.scan_iter("switchpoint:budget:*")]
        assert len(keys) == 1
        committed = int(await client.hget(keys[0], "committed") or 0)
        leased = int(await client.hget(keys[0], "leased") or 0)
    finally:
        await client.aclose()
    assert leased == 0, "a stopped replica kept a lease"
    return committed / 1e9


@pytest.mark.timeout(120)
async def test_two_processes_share_a_budget_through_a_redis_restart(
    openai_server: OpenAIServer,
    anthropic_server: AnthropicServer,
    redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    openai_server.script.default = hang(0.02)
    served: list[pb.ChatResponse] = []
    async with AsyncExitStack() as stack:
        replicas = []
        for index in range(2):
            port = free_port()
            path = tmp_path / f"replica{index}.yaml"
            write_config(path, _config(openai_server, redis_server.url, port, f"p{index}"))
            replicas.append(await stack.enter_async_context(serving(path, port)))
        served += await _round(replicas, 10)
        redis_server.stop()
        # Fail-closed: the replicas go on spending what they had leased, no more.
        served += await _round(replicas, 10)
        redis_server.start()
        for _ in range(40):
            await asyncio.sleep(0.3)  # leases resync with the restarted (empty) Redis
            batch = await _round(replicas, 10)
            served += batch
            if not batch:
                break  # the shared budget is spent: both replicas refuse everything
        for replica in replicas:
            replica.signal(signal.SIGTERM)
        for replica in replicas:
            assert await replica.exit_code(15) == 0, "".join(replica.output)
    total = sum(r.cost_usd for r in served)
    assert total <= LIMIT_USD + 2 * SLICE_USD
    assert total > LIMIT_USD - 2 * SLICE_USD, "the shared budget was not used up"
    # Redis came back empty: the replicas told it again what they had reported, and what they
    # spent during the outage, each exactly once.
    assert await _committed_usd(redis_server) == pytest.approx(total, abs=1e-6)
