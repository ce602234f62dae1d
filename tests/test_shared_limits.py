"""Shared budgets' limits held in Redis: the lease script grants against the pool's own limit,
replicas whose configs disagree follow it (and say so), a limit set on one replica reaches the
others at their next round, and new windows start from the latest setting. The real Gate and a
real private redis-server, no fakes; each test drives `sync()` itself."""

from __future__ import annotations

import logging
import random
import time

import pytest
from redis.asyncio import Redis

from switchpoint._native import Gate
from switchpoint.quota.shared import QuotaStore, SharedQuota
from switchpoint.quota.shared.store import NANOS_PER_USD
from tests.redis_fixtures import redis_client, redis_server
from tests.redis_server import RedisServer
from tests.test_shared_state import TOTAL_KEY, committed_usd, config, replica, spend, store

__all__ = ["redis_client", "redis_server", "store"]  # fixtures, imported for pytest to find

LIMITS_KEY = "switchpoint:budget-limit:team"


def limit_of(gate: Gate, budget: int) -> float:
    return gate.budget_state(budget, time.time()).limit_usd


async def spend_alternately(
    replicas: list[tuple[Gate, int, SharedQuota]], cost: float, rounds: int = 200
) -> float:
    """Calls of `cost` on each replica in turn until every one refuses; the total admitted."""
    total = 0.0
    for _ in range(rounds):
        admitted = [await spend(gate, quota, budget, cost) for gate, budget, quota in replicas]
        total += cost * sum(admitted)
        if not any(admitted):
            return total
    raise AssertionError(f"still admitting after {rounds} rounds")


# --- the Lua script ----------------------------------------------------------------------------


async def test_the_pool_grants_against_the_limit_it_holds(
    store: QuotaStore, redis_client: Redis
) -> None:
    key = store.budget_key("b", "day", 0)
    first = await store.lease_budget(key, replica="a", want=6, limit=10, limit_seq=0, expire=0)
    # Another replica's config offers more: the pool keeps the limit it was created with.
    second = await store.lease_budget(key, replica="b", want=20, limit=100, limit_seq=0, expire=0)
    assert (first.granted, second.granted) == (6, 4)
    assert (second.limit, second.limit_seq) == (10, 0)
    await store.report(key, replica="a", reporter="a/1", seq=1, spent=3, expire=0)
    # A later setting replaces it. Lowered under committed 3 + leased 7, each lease takes the
    # caller's unspent lease back down to what the limit leaves.
    lowered = await store.lease_budget(key, replica="b", want=1, limit=5, limit_seq=1, expire=0)
    assert (lowered.granted, lowered.outstanding, lowered.limit, lowered.limit_seq) == (0, 0, 5, 1)
    stale = await store.lease_budget(key, replica="a", want=1, limit=10, limit_seq=0, expire=0)
    assert (stale.granted, stale.outstanding, stale.limit) == (0, 2, 5)
    assert int(await redis_client.hget(key, "committed") or 0) == 3
    assert int(await redis_client.hget(key, "leased") or 0) == 2


async def test_the_pool_never_grants_past_its_limit(store: QuotaStore) -> None:
    """Random leases, reports and settings by three replicas: a grant never takes committed +
    leased past the pool's limit, and once every replica has leased after a setting, what is
    committed and leased fits in it."""
    rng = random.Random(13)
    key = store.budget_key("b", "day", 0)
    replicas = ["a", "b", "c"]
    outstanding = dict.fromkeys(replicas, 0)
    seqs = dict.fromkeys(replicas, 0)
    settings = 0
    for _ in range(300):
        name = rng.choice(replicas)
        if rng.random() < 0.3 and outstanding[name] > 0:
            seqs[name] += 1
            spent = rng.randint(1, outstanding[name])
            reply = await store.report(
                key, replica=name, reporter=name, seq=seqs[name], spent=spent, expire=0
            )
            outstanding[name] = reply.outstanding
            continue
        if rng.random() < 0.1:
            settings += 1
        offer = rng.randint(0, 1000)  # a stale config, or a new setting when the seq grew
        lease = await store.lease_budget(
            key, replica=name, want=rng.randint(0, 300), limit=offer, limit_seq=settings, expire=0
        )
        outstanding[name] = lease.outstanding
        assert lease.limit_seq == settings
        if lease.granted > 0:
            assert lease.committed + sum(outstanding.values()) <= lease.limit
    for name in replicas:
        lease = await store.lease_budget(key, replica=name, want=0, limit=0, limit_seq=0, expire=0)
        outstanding[name] = lease.outstanding
    assert lease.committed + sum(outstanding.values()) <= max(lease.limit, lease.committed)


async def test_a_setting_is_ordered_per_budget(store: QuotaStore, redis_client: Redis) -> None:
    assert await store.set_limit("b", "*", 5) == 1
    assert await store.set_limit("b", "tenant=acme", 2) == 2
    assert await store.set_limit("other", "*", 9) == 1
    assert await store.read_limits(["b", "nothing"]) == {
        "b": {"seq": 2, "limit:*": 5, "seq:*": 1, "limit:tenant=acme": 2, "seq:tenant=acme": 2},
        "nothing": {},
    }
    assert await redis_client.ttl("t:budget-limit:b") == -1


# --- SharedQuota with the real Gate ------------------------------------------------------------


async def test_replicas_whose_configs_disagree_follow_the_first_and_log_it(
    redis_server: RedisServer, redis_client: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    first = replica(redis_server.url, "a", limit_usd=3.0)
    second = replica(redis_server.url, "b", limit_usd=8.0)
    with caplog.at_level(logging.INFO, logger="switchpoint.quota.shared.limits"):
        for _, _, quota in (first, second, first, second):
            assert await quota.sync()
    assert limit_of(*first[:2]) == limit_of(*second[:2]) == 3.0
    assert await redis_client.hget(TOTAL_KEY, "limit") == str(3 * NANOS_PER_USD)
    [logged] = caplog.records  # once, by the replica that disagrees, however many rounds
    assert logged.levelno == logging.WARNING
    assert "'team'" in logged.message
    assert "limit of $3" in logged.message
    assert "this replica's config says $8" in logged.message

    assert await spend_alternately([first, second], 0.25) == pytest.approx(3.0)
    for _, _, quota in (first, second):
        await quota.stop()
    assert await committed_usd(redis_client, TOTAL_KEY) == pytest.approx(3.0)


async def test_a_limit_set_on_one_replica_is_followed_by_the_other_at_its_next_round(
    redis_server: RedisServer, redis_client: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    first = replica(redis_server.url, "a")
    second = replica(redis_server.url, "b")
    for _, _, quota in (first, second):
        await quota.start()  # the first round: each leases a $1 slice of the $10
    await first[2].set_limit("team", "*", 1.5)
    with caplog.at_level(logging.INFO, logger="switchpoint.quota.shared.limits"):
        assert await first[2].sync()
        assert limit_of(*first[:2]) == 1.5
        assert limit_of(*second[:2]) == 10.0  # not before its own round
        assert await second[2].sync()
    assert limit_of(*second[:2]) == 1.5
    assert await redis_client.hget(TOTAL_KEY, "limit_seq") == "1"
    assert len(caplog.records) == 2  # each replica: its config says $10, Redis $1.5
    assert all("set at run time" in r.message for r in caplog.records)
    assert all(r.levelno == logging.INFO for r in caplog.records)
    # The $2 leased at the start is taken back to the new limit: together they admit $1.5.
    assert await spend_alternately([first, second], 0.25) == pytest.approx(1.5)

    await second[2].set_limit("team", "*", 2.0)  # raised again: both admit the difference
    for _, _, quota in (second, first):
        assert await quota.sync()
    assert await spend_alternately([first, second], 0.25) == pytest.approx(0.5)
    for _, _, quota in (first, second):
        await quota.stop()
    assert await committed_usd(redis_client, TOTAL_KEY) == pytest.approx(2.0)


async def test_lowering_a_limit_below_the_spend_refuses_on_every_replica(
    redis_server: RedisServer, redis_client: Redis
) -> None:
    replicas = [replica(redis_server.url, name) for name in "ab"]
    for gate, budget, quota in replicas:
        await quota.start()
        assert await spend(gate, quota, budget, 0.6)
        assert await quota.sync()  # reported, and leased up to a $1 slice unspent again
    await replicas[0][2].set_limit("team", "*", 1.0)
    for _, _, quota in replicas:
        assert await quota.sync()
    for gate, budget, quota in replicas:
        assert not await spend(gate, quota, budget, 0.01)
        assert limit_of(gate, budget) == 1.0
    assert await redis_client.hget(TOTAL_KEY, "leased") == "0"
    assert await committed_usd(redis_client, TOTAL_KEY) == pytest.approx(1.2)
    for _, _, quota in replicas:
        await quota.stop()


async def test_the_latest_setting_wins_for_every_instance_or_one(
    redis_server: RedisServer,
) -> None:
    gate = Gate()
    quota = SharedQuota(config(redis_server.url, "a"), gate)
    budgets = {}
    for tenant in ("acme", "bob"):
        name = f"team[tenant={tenant}]"
        budgets[tenant] = gate.add_budget(name, limit_usd=10.0, window="total")
        quota.register_budget(
            budgets[tenant],
            name=name,
            window="total",
            budget="team",
            scope=f"tenant={tenant}",
            config_limit_usd=10.0,
        )
    await quota.start()

    async def limits_after(scope: str, limit_usd: float) -> tuple[float, float]:
        await quota.set_limit("team", scope, limit_usd)
        assert await quota.sync()
        return limit_of(gate, budgets["acme"]), limit_of(gate, budgets["bob"])

    assert await limits_after("*", 4.0) == (4.0, 4.0)
    assert await limits_after("tenant=acme", 2.0) == (2.0, 4.0)
    assert await limits_after("*", 3.0) == (3.0, 3.0)
    await quota.stop()


async def test_new_windows_start_from_the_latest_setting(
    redis_server: RedisServer, redis_client: Redis
) -> None:
    hour = (int(time.time()) // 3600 + 2) * 3600  # a future hour, so keys are not born expired
    now = [hour - 0.5]
    gate, budget, quota = replica(
        redis_server.url, "a", window="hour", clock=lambda: now[0], limit_usd=5.0
    )
    await quota.start()
    await quota.set_limit("team", "*", 2.0)
    now[0] = hour + 0.5
    assert await quota.sync()
    new_key = f"switchpoint:budget:team:hour:{hour}"
    assert await redis_client.hmget(new_key, ["limit", "limit_seq"]) == [
        str(2 * NANOS_PER_USD),
        "1",
    ]
    # A replica starting in the new hour, configured with $5, follows the setting too.
    late_gate, late_budget, late = replica(
        redis_server.url, "b", window="hour", clock=lambda: now[0], limit_usd=5.0
    )
    await late.start()
    assert late_gate.budget_state(late_budget, now[0]).limit_usd == 2.0
    assert gate.budget_state(budget, now[0]).limit_usd == 2.0
    for shared in (quota, late):
        await shared.stop()


async def test_a_reloaded_limit_is_written_at_the_next_round_once_redis_is_back(
    redis_server: RedisServer, redis_client: Redis
) -> None:
    gate, budget, quota = replica(redis_server.url, "a", limit_usd=5.0)
    await quota.start()
    redis_server.stop()
    # What a reload does (TokenGate.carry_over): apply at once, and hand it to the lease manager.
    gate.set_budget_limit(budget, 7.0)
    quota.config_limit_changed("team", 7.0)
    assert not await quota.sync()
    assert limit_of(gate, budget) == 7.0
    redis_server.start()  # empty: the pool and the setting are gone
    assert await quota.sync()
    assert await redis_client.hgetall(LIMITS_KEY) == {
        "seq": "1",
        "limit:*": str(7 * NANOS_PER_USD),
        "seq:*": "1",
    }
    assert await redis_client.hget(TOTAL_KEY, "limit_seq") == "1"  # a setting, not a config
    assert limit_of(gate, budget) == 7.0
    other_gate, other_budget, other = replica(redis_server.url, "b", limit_usd=5.0)
    assert await other.sync()
    assert limit_of(other_gate, other_budget) == 7.0
    for shared in (quota, other):
        await shared.stop()
