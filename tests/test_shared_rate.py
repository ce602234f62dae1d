"""Rate limits shared across replicas: the real TokenGate over the real Gate, a real redis-server.

Replicas are a TokenGate + SharedQuota + Gate each, in one process. Time is an injected clock set
in a minute a few minutes ahead (Redis expires keys by its own clock, so they must not be born
expired), so each test decides exactly which UTC minute every call falls in. The sync loop gets an
interval too long to run: tests call `sync()` themselves, or rely on the gate's top-ups.

The bound under test: while Redis is reachable, the replicas together admit at most the RPM limit
in one UTC minute. Each request is counted in full when it is reserved, and Redis never grants
more than the minute's pool, so the (replicas x slice) of the general lease bound is not needed
for requests; it is what may go unused instead, leased and stranded when the minute ends.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from redis.asyncio import Redis

from switchpoint._native import Gate
from switchpoint.config import parse_config
from switchpoint.errors import QuotaExceededError
from switchpoint.quota.gate import TokenGate
from switchpoint.quota.scopes import RequestScope
from switchpoint.quota.shared import SharedQuota
from switchpoint.quota.shared.rate import RATE_KEY_GRACE_S, pool_size, slice_size
from switchpoint.quota.shared_config import Policy
from tests.redis_server import RedisServer
from tests.sidecar_harness import one_model_config

RPM = 30
SLICE = 3  # a tenth of the pool
MANUAL = 3600.0
SCOPE = RequestScope(tenant="acme", stage="")


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def next_minutes() -> float:
    """A minute start a few minutes ahead of the real clock."""
    return (int(time.time()) // 60 + 5) * 60.0


class Replica:
    """One replica: its own Gate, lease manager and token gate, over one shared Redis."""

    def __init__(
        self,
        url: str,
        name: str,
        clock: Clock,
        *,
        policy: Policy = "fail-closed",
        limit: dict[str, Any] | None = None,
    ) -> None:
        config = parse_config(
            {
                **one_model_config("http://127.0.0.1:9/v1", per_mtok=1.0),
                "limits": [limit or {"name": "r", "rpm": RPM}],
                "shared_state": {
                    "redis_url": url,
                    "replica_id": name,
                    "policy": policy,
                    "sync_interval_s": MANUAL,
                    "timeout_s": 0.5,
                },
            }
        )
        self.native = Gate()
        self.quota = SharedQuota(config.shared_state, self.native, clock=clock)
        self.gate = TokenGate(config, self.native, shared=self.quota, clock=clock)
        self.model = config.models[0]

    async def call(self, tokens: int = 10, actual: int | None = None) -> bool:
        """One call through the gate, settled at once; False if a limit refuses it."""
        try:
            hold = await self.gate.reserve(SCOPE, self.model, tokens, 0.0)
        except QuotaExceededError:
            return False
        with hold:
            hold.settle(tokens if actual is None else actual, 0.0)
        return True

    async def calls(self, count: int) -> int:
        return sum([await self.call() for _ in range(count)])

    def refusal(self) -> QuotaExceededError | None:
        return self.gate.refusal(SCOPE, self.model, 10, 0.0)


async def committed(client: Redis, key: str) -> int:
    return int(await client.hget(key, "committed") or 0)


def test_pools_and_slices_are_derived_from_the_limit() -> None:
    assert [pool_size(v) for v in (0.5, 1.0, 30.9, 20_000.0)] == [1, 1, 30, 20_000]
    assert [slice_size(pool_size(v)) for v in (0.5, 19.0, 30.0, 20_000.0)] == [1, 1, 3, 2_000]


async def test_two_replicas_share_one_rpm_pool_within_a_minute(
    redis_server: RedisServer, redis_client: Redis
) -> None:
    minute = next_minutes()
    clock = Clock(minute + 1.0)
    replicas = [Replica(redis_server.url, name, clock) for name in "ab"]
    admitted = [0, 0]

    async def caller(index: int) -> None:
        refusals = 0
        while refusals < 5:
            if await replicas[index].call():
                admitted[index] += 1
                refusals = 0
            else:
                refusals += 1
            await asyncio.sleep(0)

    for replica in replicas:
        await replica.quota.start()
    await asyncio.gather(*(caller(index) for index in (0, 1) for _ in range(3)))
    for replica in replicas:
        await replica.quota.stop()

    total = sum(admitted)
    # Unshared, each replica's own bucket would have admitted 30 (60 in all).
    assert total <= RPM
    assert total > RPM - len(replicas) * SLICE, "the shared pool was not used"
    assert all(admitted), admitted
    key = f"switchpoint:rate:r:rpm:{int(minute)}"
    assert await committed(redis_client, key) == total  # every request reported, once
    assert await redis_client.hget(key, "leased") == "0"  # unused leases given back at stop
    assert await redis_client.expiretime(key) == int(minute) + 60 + RATE_KEY_GRACE_S


async def test_each_minute_has_a_fresh_pool_and_calls_count_where_they_finish(
    redis_server: RedisServer, redis_client: Redis
) -> None:
    minute = next_minutes()
    clock = Clock(minute + 1.0)
    replica = Replica(redis_server.url, "a", clock)
    await replica.quota.start()
    assert replica.refusal() is None  # no lease yet, but a top-up may bring one: admissible
    carried = await replica.gate.reserve(SCOPE, replica.model, 10, 0.0)  # still in flight at :59
    assert await replica.calls(40) == RPM - 1
    # The local bucket has refilled 24 requests, but this replica alone has used the minute's
    # whole limit: refused until the next minute, by the lease.
    clock.now = minute + 50.0
    refusal = replica.refusal()
    assert refusal is not None
    assert (refusal.kind, refusal.name) == ("rpm", "r")
    assert refusal.retry_after_s == pytest.approx(10.0)
    with pytest.raises(QuotaExceededError, match=r"rate limit \(rpm\) 'r' is exhausted"):
        await replica.gate.reserve(SCOPE, replica.model, 10, 0.0)

    clock.now = minute + 119.0  # the next minute, with the local bucket full again
    carried.settle(10, 0.0)  # finished in the new minute: charged there
    assert replica.refusal() is None
    assert await replica.calls(40) == RPM - 1  # the carried call took one of the new pool
    await replica.quota.stop()
    old, new = (f"switchpoint:rate:r:rpm:{int(minute + m)}" for m in (0, 60))
    assert await committed(redis_client, old) == RPM - 1
    assert await committed(redis_client, new) == RPM
    assert await redis_client.expiretime(new) == int(minute) + 120 + RATE_KEY_GRACE_S


async def test_a_replica_refused_by_a_spent_pool_waits_for_the_next_minute(
    redis_server: RedisServer,
) -> None:
    minute = next_minutes()
    clock = Clock(minute + 45.0)
    a, b = (Replica(redis_server.url, name, clock) for name in "ab")
    assert await b.calls(RPM - 10) == RPM - 10
    await b.quota.stop()  # gives back what b leased and did not use
    assert await a.calls(20) == 10
    # a's own usage is far from the limit, so routing still offers it (a top-up might help)...
    assert a.refusal() is None
    # ...but the pool is spent: the refusal says to come back when the minute turns.
    with pytest.raises(QuotaExceededError) as refused:
        await a.gate.reserve(SCOPE, a.model, 10, 0.0)
    assert refused.value.kind == "rpm"
    assert refused.value.retry_after_s == pytest.approx(15.0)
    clock.now = minute + 60.0
    assert await a.call()
    await a.quota.stop()


async def test_tokens_pass_the_limit_only_by_what_calls_used_beyond_estimates(
    redis_server: RedisServer, redis_client: Redis
) -> None:
    minute = next_minutes()
    clock = Clock(minute + 1.0)
    limit = {"name": "t", "tpm": 1_000}
    replicas = [Replica(redis_server.url, name, clock, limit=limit) for name in "ab"]
    used = 0
    for _ in range(20):
        for replica in replicas:
            if await replica.call(tokens=100, actual=150):
                used += 150
    for replica in replicas:
        await replica.quota.stop()
    tokens = await committed(redis_client, f"switchpoint:rate:t:tpm:{int(minute)}")
    assert tokens == used
    # Calls run one at a time here, so at most one call's error (50 tokens) is past the limit.
    assert 1_000 - 2 * 100 < tokens <= 1_000 + 50


async def test_redis_down_fail_closed_spends_only_the_lease_then_reports_once(
    redis_server: RedisServer, redis_client: Redis
) -> None:
    minute = next_minutes()
    clock = Clock(minute + 1.0)
    replica = Replica(redis_server.url, "a", clock)
    await replica.quota.start()
    before = await replica.calls(5)
    assert await replica.quota.sync()
    leased = replica.quota.status().rate_limits[0].leased
    assert leased is not None
    assert leased > before

    redis_server.stop()
    assert not await replica.quota.sync()
    assert replica.quota.degraded
    during = await replica.calls(40)
    assert during == leased - before  # exactly the lease held, no more
    assert not await replica.quota.sync()  # usage queued meanwhile
    assert replica.quota.status().rate_limits[0].pending == during

    # Back on the same port, empty: what this replica had reported is restored, and the usage
    # during the outage reported, each exactly once.
    redis_server.start()
    assert await replica.quota.sync()
    assert not replica.quota.degraded
    key = f"switchpoint:rate:r:rpm:{int(minute)}"
    assert await committed(redis_client, key) == before + during
    assert await replica.quota.sync()
    assert await committed(redis_client, key) == before + during
    assert await replica.call()  # leases renewed
    await replica.quota.stop()
    assert await committed(redis_client, key) == before + during + 1
    assert await redis_client.hget(key, "leased") == "0"


async def test_fail_closed_does_not_spend_an_old_minutes_lease(
    redis_server: RedisServer,
) -> None:
    minute = next_minutes()
    clock = Clock(minute + 1.0)
    replica = Replica(redis_server.url, "a", clock)
    await replica.quota.start()
    assert await replica.call()
    redis_server.stop()
    assert not await replica.quota.sync()
    clock.now = minute + 61.0
    # The new minute has no lease and Redis cannot grant one: fail-closed admits nothing.
    assert not await replica.call()
    redis_server.start()
    assert await replica.quota.sync()
    assert await replica.call()
    await replica.quota.stop()


async def test_redis_down_fail_open_uncaps_then_reconciles(
    redis_server: RedisServer, redis_client: Redis
) -> None:
    minute = next_minutes()
    clock = Clock(minute + 1.0)
    replica = Replica(redis_server.url, "a", clock, policy="fail-open")
    await replica.quota.start()
    assert await replica.calls(2) == 2
    assert await replica.quota.sync()
    redis_server.stop()
    assert not await replica.quota.sync()
    assert replica.quota.status().rate_limits[0].leased is None
    # Uncapped: well past the 3-request slice, up to this replica's own bucket.
    assert await replica.calls(40) == RPM - 2

    redis_server.start()
    assert await replica.quota.sync()
    key = f"switchpoint:rate:r:rpm:{int(minute)}"
    assert await committed(redis_client, key) == RPM
    assert replica.quota.status().rate_limits[0].leased is not None  # capped by leases again
    await replica.quota.stop()
    assert await committed(redis_client, key) == RPM


async def test_only_rpm_and_tpm_are_shared(redis_server: RedisServer) -> None:
    clock = Clock(next_minutes())
    replica = Replica(redis_server.url, "a", clock, limit={"name": "c", "concurrency": 1})
    await replica.quota.start()
    assert await replica.calls(3) == 3  # per replica: never capped by a lease
    assert replica.quota.status().rate_limits == ()
    with pytest.raises(ValueError, match="only rpm and tpm"):
        replica.quota.register_rate_limit(0, name="c", rpm=None, tpm=None)
    await replica.quota.stop()
