"""Two sidecars sharing one budget through one real Redis, with Admin: the limit they apply is the
one Redis holds, whatever each config says; SetBudget or a reload on one replica is followed by
the other within a sync round, and both refuse or admit by it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from redis.asyncio import Redis

from switchpoint.v1 import admin_pb2, admin_pb2_grpc
from switchpoint.v1 import router_pb2 as pb
from tests.providers.fixtures import OPENAI_TEST_KEY
from tests.providers.openai_server import OpenAIServer
from tests.redis_server import RedisServer
from tests.sidecar_harness import RunningSidecar, one_model_config, running_sidecar, user
from tests.support.log_records import recorded

ADMIN_TOKEN = "shared-limits-admin-token"
AUTH = (("authorization", f"Bearer {ADMIN_TOKEN}"),)
ENV = {"K": OPENAI_TEST_KEY, "SWITCHPOINT_ADMIN_TOKEN": ADMIN_TOKEN}
BUDGET = "tenant-day"


def _config(openai: OpenAIServer, redis_url: str, replica: str, limit: float) -> dict[str, Any]:
    return {
        **one_model_config(openai.base_url, api_key_env="K"),
        "budgets": [
            {"name": BUDGET, "match": {"tenant": "*"}, "window": "day", "limit_usd": limit}
        ],
        "shared_state": {
            "redis_url": redis_url,
            "slice_usd": 0.25,
            "sync_interval_s": 0.1,
            "replica_id": replica,
            "timeout_s": 0.3,
        },
    }


class Replica:
    def __init__(self, running: RunningSidecar) -> None:
        self.running = running
        self.admin = admin_pb2_grpc.AdminStub(running.channel)
        self.served_usd = 0.0

    async def chat(self) -> pb.ChatResponse:
        reply = await self.running.stub.Chat(
            pb.ChatRequest(
                messages=user("hello there"),
                routing=pb.RoutingOptions(models=["gpt"], tenant="acme"),
                params=pb.GenerationParams(max_tokens=10),
            )
        )
        self.served_usd += reply.cost_usd
        return reply

    async def refused(self) -> bool:
        """True if a call is refused by the budget; False if it is served."""
        try:
            await self.chat()
        except grpc.aio.AioRpcError as exc:
            error = exc
        else:
            return False
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
        assert f"budget '{BUDGET}[tenant=acme]'" in (error.details() or "")
        return True

    async def budget(self) -> admin_pb2.BudgetState:
        reply = await self.admin.GetBudgets(admin_pb2.GetBudgetsRequest(name=BUDGET), metadata=AUTH)
        [state] = reply.budgets
        return state

    async def stats_limit(self) -> float:
        [left] = (await self.running.stub.GetStats(pb.StatsRequest())).budgets
        return left.limit_usd

    async def set_budget(self, limit: float) -> admin_pb2.Budgets:
        request = admin_pb2.SetBudgetRequest(name=BUDGET, limit_usd=limit)
        return await self.admin.SetBudget(request, metadata=AUTH)

    async def until_limit(self, limit: float) -> None:
        """Waits for this replica's sync rounds (every 0.1 s) to apply `limit`."""
        for _ in range(100):
            if (await self.budget()).limit_usd == pytest.approx(limit):
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"limit still {(await self.budget()).limit_usd}, not {limit}")


@asynccontextmanager
async def _replicas(
    openai: OpenAIServer, redis: RedisServer, *limits: float
) -> AsyncIterator[list[Replica]]:
    """Replicas with these configured limits, started in order, each with one call made (which
    creates its budget instance, and the first creates the window's pool)."""
    async with AsyncExitStack() as stack:
        replicas = []
        for index, limit in enumerate(limits):
            config = _config(openai, redis.url, f"r{index}", limit)
            running = await stack.enter_async_context(running_sidecar(config, ENV))
            replica = Replica(running)
            await replica.chat()
            replicas.append(replica)
        yield replicas


async def test_replicas_configured_with_different_limits_apply_the_one_redis_holds(
    openai_server: OpenAIServer, redis_server: RedisServer
) -> None:
    with recorded("switchpoint.quota.shared.limits") as logs:
        async with _replicas(openai_server, redis_server, 0.5, 5.0) as (first, second):
            budgets = [await replica.budget() for replica in (first, second)]
            stats = [await replica.stats_limit() for replica in (first, second)]
            # The second's $5 never counts: together they are held to the first's $0.5.
            for _ in range(100):
                refusals = [await replica.refused() for replica in (first, second)]
                if all(refusals):
                    break
            served = first.served_usd + second.served_usd
    assert [b.limit_usd for b in budgets] == [0.5, 0.5]
    assert all(b.shared for b in budgets)
    assert stats == [0.5, 0.5]
    assert all(refusals)
    # Up to the limit, past it by no more than a call's estimate error on each replica.
    assert 0.5 - 2 * 0.25 < served <= 0.5 + 0.02
    [warning] = [r for r in logs.records if r.levelno == logging.WARNING]
    assert f"'{BUDGET}[tenant=acme]'" in warning.getMessage()
    assert "this replica's config says $5" in warning.getMessage()


async def test_set_budget_on_one_replica_is_followed_by_the_other(
    openai_server: OpenAIServer, redis_server: RedisServer
) -> None:
    async with _replicas(openai_server, redis_server, 2.0, 2.0) as (first, second):
        closed = await first.set_budget(0.0)
        assert [b.limit_usd for b in closed.budgets] == [0.0]  # applied at once where it was set
        await second.until_limit(0.0)
        assert await second.stats_limit() == 0.0
        assert await second.refused()
        assert await first.refused()

        await first.set_budget(2.0)
        await second.until_limit(2.0)
        await second.chat()
        await first.chat()


async def test_lowering_a_limit_below_the_spend_refuses_on_both_replicas(
    openai_server: OpenAIServer, redis_server: RedisServer
) -> None:
    async with _replicas(openai_server, redis_server, 2.0, 2.0) as (first, second):
        for _ in range(3):
            await first.chat()
        spent = first.served_usd + second.served_usd
        # Below what the two spent together, but above what the second spent alone: only the
        # leases taken back in Redis can stop the second.
        lowered = spent * 0.6
        assert second.served_usd < lowered
        await second.set_budget(lowered)
        await first.until_limit(lowered)
        await _until_nothing_leased(redis_server)
        assert await first.refused()
        assert await second.refused()
        for replica in (first, second):
            assert (await replica.budget()).limit_usd == pytest.approx(lowered)


async def _until_nothing_leased(redis: RedisServer) -> None:
    """Waits for every replica's next round to take its unspent lease back."""
    client = Redis.from_url(redis.url, decode_responses=True)
    try:
        [key] = [k async for k in client.scan_iter("switchpoint:budget:*")]
        for _ in range(100):
            if await client.hget(key, "leased") == "0":
                return
            await asyncio.sleep(0.05)
    finally:
        await client.aclose()
    raise AssertionError("a replica kept its lease past the lowered limit")


async def test_set_budget_changes_nothing_while_redis_is_unreachable(
    openai_server: OpenAIServer, redis_server: RedisServer
) -> None:
    async with _replicas(openai_server, redis_server, 2.0) as (only,):
        with pytest.raises(grpc.aio.AioRpcError) as too_large:
            await only.set_budget(1e12)
        redis_server.stop()
        with pytest.raises(grpc.aio.AioRpcError) as unreachable:
            await only.set_budget(1.0)
        after = await only.budget()
    assert too_large.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "limit_usd: must be <= 9007199.25" in (too_large.value.details() or "")
    assert unreachable.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "Redis is unreachable" in (unreachable.value.details() or "")
    assert "the limit was not changed" in (unreachable.value.details() or "")
    assert after.limit_usd == 2.0


async def test_a_reload_that_changes_the_limit_reaches_the_other_replica(
    openai_server: OpenAIServer, redis_server: RedisServer, tmp_path: Path
) -> None:
    async with _replicas(openai_server, redis_server, 2.0, 2.0) as (first, second):
        await first.set_budget(1.5)
        await second.until_limit(1.5)
        # The reload is the newer setting: it replaces the Admin one, where it was set too.
        path = tmp_path / "reloaded.yaml"
        path.write_text(
            yaml.safe_dump(_config(openai_server, redis_server.url, "r0", 3.0)), encoding="utf-8"
        )
        assert (await first.running.sidecar.reload(path)).ok
        assert (await first.budget()).limit_usd == 3.0  # applied at once where it was reloaded
        await second.until_limit(3.0)
        # A SetBudget after it is the newer setting: both follow it, the reloaded replica too.
        await second.set_budget(1.0)
        await first.until_limit(1.0)
