"""Shared budgets across replicas: the real Gate, a real private redis-server, no fakes.

Replicas are SharedQuota objects with their own Gate each (as separate pods would have), in one
process or, in the last test, in two. Tests that need exact control drive `sync()` themselves and
give the background loop an interval too long to interfere.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Literal

import pytest
import pytest_asyncio
from redis.asyncio import Redis

from switchpoint._native import Gate, GateDenied
from switchpoint.quota.shared import Policy, QuotaStore, SharedQuota, SharedStateConfig
from switchpoint.quota.shared.store import KEY_GRACE_S, NANOS_PER_USD
from tests.redis_fixtures import redis_client, redis_server
from tests.redis_server import RedisServer
from tests.support.tcp_proxy import ReplyDroppingProxy

__all__ = ["redis_client", "redis_server"]  # fixtures, imported for pytest to find

ROOT = Path(__file__).resolve().parent.parent
MANUAL = 3600.0  # a sync interval that never elapses within a test: the test syncs itself
# Settled costs are floats; Redis holds integer nano-USD, rounded down with the remainder
# carried, so after the last report at most a nano per replica is still in the carry.
EXACT = 1e-8


def config(
    url: str, replica: str, *, policy: Policy = "fail-closed", **extra: float
) -> SharedStateConfig:
    values: dict[str, float] = {"slice_usd": 1.0, "sync_interval_s": MANUAL, "timeout_s": 0.5}
    values.update(extra)
    return SharedStateConfig(redis_url=url, replica_id=replica, policy=policy, **values)


def replica(
    url: str,
    name: str,
    *,
    limit_usd: float = 10.0,
    window: Literal["hour", "day", "month", "total"] = "total",
    clock: Callable[[], float] = time.time,
    policy: Policy = "fail-closed",
    **extra: float,
) -> tuple[Gate, int, SharedQuota]:
    gate = Gate()
    budget = gate.add_budget("team", limit_usd=limit_usd, window=window)
    quota = SharedQuota(config(url, name, policy=policy, **extra), gate, clock=clock)
    quota.register_budget(budget, name="team", window=window)
    return gate, budget, quota


async def spend(
    gate: Gate, quota: SharedQuota, budget: int, cost: float, clock: Callable[[], float] = time.time
) -> bool:
    """One call of `cost`, topping up once if refused; False if the budget refuses it."""
    try:
        reservation = gate.reserve([], [budget], 10, cost, clock())
    except GateDenied:
        if not await quota.top_up(budget, cost):
            return False
        try:
            reservation = gate.reserve([], [budget], 10, cost, clock())
        except GateDenied:
            return False
    gate.settle(reservation, 10, cost, clock())
    return True


async def spend_until_refused(gate: Gate, quota: SharedQuota, budget: int, cost: float) -> float:
    total = 0.0
    while await spend(gate, quota, budget, cost):
        total += cost
    return total


async def committed_usd(client: Redis, key: str) -> float:
    return int(await client.hget(key, "committed") or 0) / NANOS_PER_USD


TOTAL_KEY = "switchpoint:budget:team:total:0"


@pytest_asyncio.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[QuotaStore]:
    quota_store = QuotaStore.from_url(redis_server.url, key_prefix="t", timeout_s=1.0)
    yield quota_store
    await quota_store.aclose()


# --- the Lua scripts -------------------------------------------------------------------------


async def test_leases_never_exceed_the_pool(store: QuotaStore) -> None:
    key = store.budget_key("b", "day", 0)
    first = await store.lease(key, replica="a", want=6, limit=10, expire=0)
    second = await store.lease(key, replica="b", want=6, limit=10, expire=0)
    third = await store.lease(key, replica="b", want=6, limit=10, expire=0)
    assert (first.granted, second.granted, third.granted) == (6, 4, 0)
    assert (third.outstanding, third.committed) == (4, 0)
    # Spending part of a lease moves it from the pool's leased part to committed...
    report = await store.report(key, replica="a", reporter="a/1", seq=1, spent=2, expire=0)
    assert (report.applied, report.outstanding, report.committed) == (True, 4, 2)
    # ...so nothing is freed; only giving a lease back is.
    assert (await store.lease(key, replica="b", want=1, limit=10, expire=0)).granted == 0
    assert await store.give_back(key, replica="a") == 4
    assert await store.give_back(key, replica="a") == 0
    assert (await store.lease(key, replica="b", want=9, limit=10, expire=0)).granted == 4


async def test_a_replayed_report_is_not_counted_twice(
    store: QuotaStore, redis_client: Redis
) -> None:
    key = store.budget_key("b", "day", 0)
    await store.lease(key, replica="a", want=5, limit=10, expire=0)
    once = await store.report(key, replica="a", reporter="a/1", seq=1, spent=3, expire=0)
    again = await store.report(key, replica="a", reporter="a/1", seq=1, spent=3, expire=0)
    assert (once.applied, again.applied) == (True, False)
    assert again.committed == 3
    assert again.outstanding == 2
    # Older seqs are replays too; a new seq, or another incarnation's seq 1, are new reports.
    stale = await store.report(key, replica="a", reporter="a/1", seq=0, spent=3, expire=0)
    assert not stale.applied
    newer = await store.report(key, replica="a", reporter="a/1", seq=2, spent=4, expire=0)
    restarted = await store.report(key, replica="a", reporter="a/2", seq=1, spent=1, expire=0)
    assert newer.applied
    assert restarted.applied
    # Spend past the lease is committed in full; the outstanding lease stops at zero.
    assert (restarted.committed, restarted.outstanding, restarted.reported) == (8, 0, 8)
    assert await redis_client.hget(key, "leased") == "0"


async def test_a_lease_restores_spend_that_redis_lost(
    store: QuotaStore, redis_client: Redis
) -> None:
    key = store.budget_key("b", "day", 0)
    await store.lease(key, replica="a", want=5, limit=10, expire=0)
    await store.report(key, replica="a", reporter="a/1", seq=1, spent=3, expire=0)
    await redis_client.flushall()
    reply = await store.lease(key, replica="a", want=10, limit=10, expire=0, known=3)
    assert (reply.restored, reply.committed, reply.granted, reply.reported) == (3, 3, 7, 3)
    # Idempotent: what Redis holds already is not restored again.
    again = await store.lease(key, replica="a", want=0, limit=10, expire=0, known=3)
    assert (again.restored, again.committed) == (0, 3)


async def test_keys_expire_a_grace_period_after_their_window(
    store: QuotaStore, redis_client: Redis
) -> None:
    end = int(time.time()) + 3600
    key = store.budget_key("b", "hour", end - 3600)
    await store.lease(key, replica="a", want=1, limit=10, expire=end + KEY_GRACE_S)
    assert await redis_client.expiretime(key) == end + KEY_GRACE_S
    forever = store.budget_key("b", "total", 0)
    await store.lease(forever, replica="a", want=1, limit=10, expire=0)
    assert await redis_client.ttl(forever) == -1


# --- SharedQuota with the real Gate --------------------------------------------------------


async def test_two_replicas_spending_concurrently_stay_within_the_bound(
    redis_server: RedisServer, redis_client: Redis
) -> None:
    limit, slice_usd, callers, max_cost, max_error = 10.0, 1.0, 3, 0.08, 0.1
    replicas = [
        replica(redis_server.url, name, limit_usd=limit, sync_interval_s=0.02) for name in "ab"
    ]
    settled: list[float] = []

    async def caller(gate: Gate, quota: SharedQuota, budget: int, rng: random.Random) -> None:
        refusals = 0
        while refusals < 20:
            cost = rng.uniform(0.01, max_cost)
            try:
                reservation = gate.reserve([], [budget], 10, cost, time.time())
            except GateDenied:
                if not await quota.top_up(budget, cost):
                    refusals += 1
                    await asyncio.sleep(0.01)
                continue
            refusals = 0
            await asyncio.sleep(rng.uniform(0, 0.002))  # in flight: other callers run
            actual = cost * rng.uniform(1 - max_error, 1 + max_error)
            gate.settle(reservation, 10, actual, time.time())
            settled.append(actual)

    for _, _, quota in replicas:
        await quota.start()
    rng = random.Random(7)
    await asyncio.gather(
        *(
            caller(gate, quota, budget, random.Random(rng.random()))
            for gate, budget, quota in replicas
            for _ in range(callers)
        )
    )
    for _, _, quota in replicas:
        await quota.stop()

    committed = await committed_usd(redis_client, TOTAL_KEY)
    assert committed == pytest.approx(sum(settled), abs=EXACT)
    assert committed <= limit + len(replicas) * slice_usd
    # Tighter, from the accounting: only estimate errors of calls in flight pass the limit.
    assert committed <= limit + len(replicas) * callers * max_cost * max_error
    # And the budget was actually used up, not stranded in leases: each replica stops with less
    # than one call's estimate left, and gave that back.
    assert committed >= limit - len(replicas) * max_cost * (1 + max_error)
    assert await redis_client.hget(TOTAL_KEY, "leased") == "0"


async def test_windows_roll_over_to_new_keys(
    redis_server: RedisServer, redis_client: Redis
) -> None:
    hour = (int(time.time()) // 3600 + 2) * 3600  # a future hour, so keys are not born expired
    now = [hour - 0.5]
    gate, budget, quota = replica(
        redis_server.url, "a", window="hour", clock=lambda: now[0], limit_usd=5.0
    )
    await quota.start()
    assert await spend(gate, quota, budget, 0.2, lambda: now[0])
    in_flight = gate.reserve([], [budget], 10, 0.3, now[0])

    now[0] = hour + 0.5
    # The ledger dropped its lease with the old hour; nothing is admitted until a new one.
    with pytest.raises(GateDenied):
        gate.reserve([], [budget], 10, 0.1, now[0])
    gate.settle(in_flight, 10, 0.3, now[0])  # finished in the new hour: charged there
    assert await quota.sync()

    old_key = f"switchpoint:budget:team:hour:{hour - 3600}"
    new_key = f"switchpoint:budget:team:hour:{hour}"
    assert await committed_usd(redis_client, old_key) == pytest.approx(0.2, abs=EXACT)
    assert await committed_usd(redis_client, new_key) == pytest.approx(0.3, abs=EXACT)
    assert await redis_client.expiretime(old_key) == hour + KEY_GRACE_S
    assert await redis_client.expiretime(new_key) == hour + 3600 + KEY_GRACE_S
    assert await spend(gate, quota, budget, 0.5, lambda: now[0])
    await quota.stop()
    assert await committed_usd(redis_client, new_key) == pytest.approx(0.8, abs=EXACT)


async def test_redis_down_fail_closed_spends_only_the_lease_then_reconciles(
    redis_server: RedisServer, redis_client: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    gate, budget, quota = replica(redis_server.url, "a")
    await quota.start()
    before = await spend_until_refused_or(gate, quota, budget, 0.25, stop_at=0.5)
    assert await quota.sync()
    leased = quota.status().budgets[0].leased_usd
    assert leased is not None

    redis_server.stop()
    with caplog.at_level(logging.WARNING, logger="switchpoint.quota.shared.quota"):
        assert not await quota.sync()
        assert not await quota.sync()  # still down: logged once per transition, not per round
    assert quota.degraded
    assert "ConnectionError" in quota.degraded_reason
    assert len([r for r in caplog.records if "unreachable" in r.message]) == 1
    during = await spend_until_refused(gate, quota, budget, 0.05)
    spent = gate.budget_state(budget, time.time()).spent_usd
    assert spent <= leased + 1e-9
    assert spent > leased - 0.05
    assert not await quota.sync()  # takes the spend from the ledger into the pending queue
    assert quota.pending_usd == pytest.approx(during, abs=EXACT)
    assert quota.status().degraded
    assert quota.status().degraded_episodes == 1

    # Back on the same port, empty (no persistence): the pending spend is reported and what
    # Redis lost is restored from what this replica knows it reported.
    redis_server.start()
    assert await quota.sync()
    assert not quota.degraded
    assert quota.degraded_reason == ""
    assert quota.pending_usd < 1e-9
    assert await committed_usd(redis_client, TOTAL_KEY) == pytest.approx(before + during, abs=EXACT)
    assert await quota.sync()  # nothing reported twice
    assert await committed_usd(redis_client, TOTAL_KEY) == pytest.approx(before + during, abs=EXACT)
    assert await spend(gate, quota, budget, 0.5)  # leases renewed
    await quota.stop()
    final = await committed_usd(redis_client, TOTAL_KEY)
    assert final == pytest.approx(before + during + 0.5, abs=EXACT)


async def test_redis_down_fail_open_spends_past_the_lease_then_reconciles(
    redis_server: RedisServer, redis_client: Redis
) -> None:
    gate, budget, quota = replica(redis_server.url, "a", policy="fail-open")
    await quota.start()
    assert await spend(gate, quota, budget, 0.5)
    redis_server.stop()
    assert not await quota.sync()
    assert quota.degraded
    assert quota.status().budgets[0].leased_usd is None
    # Uncapped locally: well past the $1 slice, up to the budget's own limit.
    assert await spend_until_refused(gate, quota, budget, 0.5) == pytest.approx(9.5)

    redis_server.start()
    assert await quota.sync()
    assert not quota.degraded
    assert await committed_usd(redis_client, TOTAL_KEY) == pytest.approx(10.0, abs=EXACT)
    assert quota.status().budgets[0].leased_usd is not None  # capped by leases again
    assert not await spend(gate, quota, budget, 0.01)
    await quota.stop()
    assert await committed_usd(redis_client, TOTAL_KEY) == pytest.approx(10.0, abs=EXACT)


async def test_a_report_whose_reply_was_lost_is_counted_once(
    redis_server: RedisServer, redis_client: Redis
) -> None:
    proxy = ReplyDroppingProxy(redis_server.port)
    await proxy.start()
    gate, budget, quota = replica(proxy.url, "a", timeout_s=0.3)
    try:
        await quota.start()
        assert await spend(gate, quota, budget, 0.4)
        assert await quota.sync()  # also loads the report script: EVALSHA alone will do next
        assert await spend(gate, quota, budget, 0.3)
        proxy.drop_replies = True
        assert not await quota.sync()  # Redis applies the report; the reply never comes
        assert quota.degraded
        assert "Timeout" in quota.degraded_reason
        assert await committed_usd(redis_client, TOTAL_KEY) == pytest.approx(0.7, abs=EXACT)
        proxy.drop_replies = False
        assert await quota.sync()  # the same report again, with the same seq
        assert await committed_usd(redis_client, TOTAL_KEY) == pytest.approx(0.7, abs=EXACT)
        assert await spend(gate, quota, budget, 0.2)
        await quota.stop()
        assert await committed_usd(redis_client, TOTAL_KEY) == pytest.approx(0.9, abs=EXACT)
        assert await redis_client.hget(TOTAL_KEY, "leased") == "0"
    finally:
        await proxy.aclose()


async def test_two_processes_share_one_budget(
    redis_server: RedisServer, redis_client: Redis
) -> None:
    limit, slice_usd = 6.0, 0.5
    start_at = time.time() + 2.0  # after both interpreters have started
    workers = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.support.shared_quota_worker",
            redis_server.url,
            f"proc-{n}",
            str(limit),
            str(slice_usd),
            str(start_at),
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for n in range(2)
    ]
    outputs = [await worker.communicate() for worker in workers]
    for worker, (_, err) in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, err.decode()
    results = [json.loads(out) for out, _ in outputs]
    assert all(result["calls"] > 0 for result in results)
    settled = sum(result["settled_usd"] for result in results)
    committed = await committed_usd(redis_client, "switchpoint:budget:shared:total:0")
    assert committed == pytest.approx(settled, abs=EXACT)
    assert committed <= limit + 2 * slice_usd
    assert committed >= limit - 2 * 0.08 * 1.1


async def test_leases_start_at_nothing_and_stop_gives_back_or_says_what_was_lost(
    redis_server: RedisServer, redis_client: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    gate, budget, quota = replica(redis_server.url, "a")
    with pytest.raises(GateDenied):  # registered, not yet leased: fail-closed admits nothing
        gate.reserve([], [budget], 10, 0.01, time.time())
    await quota.start()
    assert await spend(gate, quota, budget, 0.3)
    assert not await quota.top_up(budget, 10.0)  # past the limit itself: no lease can help
    await quota.stop()
    await quota.stop()  # a second stop does nothing
    assert await redis_client.hget(TOTAL_KEY, "leased") == "0"
    assert await committed_usd(redis_client, TOTAL_KEY) == pytest.approx(0.3, abs=EXACT)

    gate, budget, quota = replica(redis_server.url, "b")
    await quota.start()
    assert await spend(gate, quota, budget, 0.2)
    redis_server.stop()
    with caplog.at_level(logging.ERROR, logger="switchpoint.quota.shared.quota"):
        await quota.stop()
    assert "$0.200000 of settled spend was not reported" in caplog.text


def test_the_redis_server_helper_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RuntimeError, match="make test"):
        RedisServer()


async def spend_until_refused_or(
    gate: Gate, quota: SharedQuota, budget: int, cost: float, *, stop_at: float
) -> float:
    total = 0.0
    while total + cost <= stop_at and await spend(gate, quota, budget, cost):
        total += cost
    return total
