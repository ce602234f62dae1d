"""One replica of the two-process shared-budget test, run as its own OS process.

    python -m tests.support.shared_quota_worker REDIS_URL REPLICA_ID LIMIT_USD SLICE_USD START_AT

Builds a real Gate with one "total" budget shared through Redis, waits until START_AT (epoch
seconds, so both processes start spending together), spends with a few concurrent callers until
the budget refuses for a while, stops gracefully, and prints one JSON line with what it settled.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time

from switchpoint._native import Gate, GateDenied
from switchpoint.quota.shared import SharedQuota, SharedStateConfig

BUDGET = "shared"
CALLERS = 3
# The budget is taken to be used up once every caller has been refused for this long.
GIVE_UP_AFTER_S = 0.3


async def caller(gate: Gate, quota: SharedQuota, budget: int, seed: int) -> list[float]:
    rng = random.Random(seed)
    settled: list[float] = []
    refused_since: float | None = None
    while refused_since is None or time.monotonic() - refused_since < GIVE_UP_AFTER_S:
        cost = rng.uniform(0.01, 0.08)
        try:
            reservation = gate.reserve([], [budget], 10, cost, time.time())
        except GateDenied:
            if not await quota.top_up(budget, cost):
                refused_since = refused_since or time.monotonic()
                await asyncio.sleep(0.01)
            continue
        refused_since = None
        await asyncio.sleep(rng.uniform(0, 0.002))  # the call is in flight
        actual = cost * rng.uniform(0.9, 1.1)
        gate.settle(reservation, 10, actual, time.time())
        settled.append(actual)
    return settled


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("redis_url")
    parser.add_argument("replica_id")
    parser.add_argument("limit_usd", type=float)
    parser.add_argument("slice_usd", type=float)
    parser.add_argument("start_at", type=float)
    args = parser.parse_args()

    gate = Gate()
    budget = gate.add_budget(BUDGET, limit_usd=args.limit_usd, window="total")
    config = SharedStateConfig(
        redis_url=args.redis_url,
        slice_usd=args.slice_usd,
        sync_interval_s=0.05,
        replica_id=args.replica_id,
    )
    quota = SharedQuota(config, gate)
    quota.register_budget(budget, name=BUDGET, window="total")
    await quota.start()
    await asyncio.sleep(max(0.0, args.start_at - time.time()))
    seed = sum(map(ord, args.replica_id))
    results = await asyncio.gather(
        *(caller(gate, quota, budget, seed * 100 + n) for n in range(CALLERS))
    )
    await quota.stop()
    settled = [cost for result in results for cost in result]
    print(json.dumps({"settled_usd": sum(settled), "calls": len(settled)}), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
