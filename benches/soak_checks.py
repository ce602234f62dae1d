"""The soak's checks, each a named pass/fail with the figures behind it:

- answered: every call got an answer (a success or a documented error class), none past its
  deadline, every stream that ended OK ended with exactly one final chunk;
- nothing held: once traffic drained, no reservation outstanding in the gate, no call in flight or
  waiting in any model's admission queue (GetStats), no budget reservation (Admin GetBudgets);
- ledger: each tenant's budget spent equals the charges its answers reported plus what its
  cancelled streams cost by the charging rule (docs/quota.md); a tenant with failed calls may also
  have been charged, unseen, for attempts that reached a provider, up to a stated bound per call;
  GetStats cost and the Redis ledger agree with it;
- resources: resident memory and open file descriptors after the run within a stated bound of
  their level at the end of warm-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from benches.soak_faults import ADMIN_AUTH
from benches.soak_traffic import Call
from switchpoint.v1 import admin_pb2, admin_pb2_grpc
from switchpoint.v1 import router_pb2 as pb
from tests.redis_server import RedisServer
from tests.sidecar_harness import RunningSidecar

# What a call may answer: the statuses README.md's error table lists for what the soak does.
DOCUMENTED = {
    "OK",  # includes streams continued on another model
    "UNAVAILABLE",  # every attempt failed
    "DEADLINE_EXCEEDED",  # the caller's deadline or the last attempt's timeout
    "RESOURCE_EXHAUSTED",  # a provider 429 on the last attempt, a full queue, a budget lease
    "CANCELLED",  # the cancelling clients' own streams
}
# Growth allowed between the end of warm-up and the end of the run. Python keeps freed memory in
# its arenas, and connection pools and the latency trackers fill up after warm-up: a bound, not
# zero. A leak of a kilobyte per call passes 16 MiB in 16,000 calls (a 5-minute run at 50/s).
RSS_GROWTH_BOUND_MIB = 32.0
FD_GROWTH_BOUND = 16
SETTLE_TIMEOUT_S = 20.0
# Money is kept in nano-USD in Redis; each charge may round by one.
USD_PER_CHARGE_ROUNDING = 1e-9


@dataclass
class Check:
    name: str
    passed: bool
    detail: dict[str, Any] = field(default_factory=dict)


def rss_mib() -> float:
    with open("/proc/self/statm", encoding="ascii") as statm:
        pages = int(statm.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@dataclass
class Sample:
    t_s: float
    rss_mib: float
    fds: int
    in_flight: int  # calls sent and not yet answered


async def sample_resources(
    out: list[Sample], started: float, calls: list[Call], stop: asyncio.Event
) -> None:
    """Every half second until `stop`: RSS, open FDs and calls in flight."""
    while not stop.is_set():
        pending = sum(1 for c in calls if c.status == "PENDING")
        out.append(Sample(time.perf_counter() - started, rss_mib(), open_fds(), pending))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)


def check_answered(calls: list[Call], unfinished: int) -> Check:
    statuses = Counter(c.status for c in calls)
    undocumented = {s: n for s, n in statuses.items() if s not in DOCUMENTED}
    overdue = sum(1 for c in calls if c.overdue)
    problems = [f"#{c.index} {c.kind}/{c.tenant}: {p}" for c in calls for p in c.problems]
    wrong_cancels = sum(1 for c in calls if c.kind == "cancel" and c.status not in {"CANCELLED"})
    return Check(
        "answered",
        not undocumented and not unfinished and not overdue and not problems,
        {
            "calls": len(calls),
            "by_status": dict(statuses.most_common()),
            "undocumented": undocumented,
            "unfinished": unfinished,
            "overdue": overdue,
            "cancels_not_cancelled": wrong_cancels,
            "problems": problems[:20],
        },
    )


def _held(sidecar: RunningSidecar) -> tuple[int, int, int]:
    engine = sidecar.sidecar.engine
    queues = engine.scheduler.snapshot().values()
    return (
        engine.gate.gate.outstanding(),
        sum(q.in_flight for q in queues),
        sum(q.depth for q in queues),
    )


async def check_nothing_held(sidecar: RunningSidecar) -> Check:
    """Waits (bounded) for the last cancellations to unwind, then reads every counter."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while any(_held(sidecar)) and time.monotonic() < deadline:  # noqa: ASYNC110 - no event to wait on
        await asyncio.sleep(0.05)
    outstanding, _, _ = _held(sidecar)
    stats = await sidecar.stub.GetStats(pb.StatsRequest())
    admin = admin_pb2_grpc.AdminStub(sidecar.channel)
    budgets = await admin.GetBudgets(admin_pb2.GetBudgetsRequest(), metadata=ADMIN_AUTH)
    in_flight = {m.model: m.in_flight for m in stats.models if m.in_flight}
    queued = {m.model: m.queue_depth for m in stats.models if m.queue_depth}
    reserved = {_scope(b.scope): b.reserved_usd for b in budgets.budgets if b.reserved_usd}
    return Check(
        "nothing held",
        not outstanding and not in_flight and not queued and not reserved,
        {
            "gate_reservations_outstanding": outstanding,
            "in_flight_by_model": in_flight,
            "queue_depth_by_model": queued,
            "budget_reserved_usd": reserved,
            "queue_rejected_by_model": {m.model: m.queue_rejected for m in stats.models},
            "breaker_opens_by_model": {m.model: m.breaker_opens for m in stats.models},
        },
    )


def _scope(scope: Any) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(scope.items())) or "(global)"


async def check_ledger(sidecar: RunningSidecar, calls: list[Call], redis: RedisServer) -> Check:
    admin = admin_pb2_grpc.AdminStub(sidecar.channel)
    budgets = await admin.GetBudgets(admin_pb2.GetBudgetsRequest(), metadata=ADMIN_AUTH)
    spent = {b.scope["tenant"]: b.spent_usd for b in budgets.budgets if "tenant" in b.scope}
    reported: dict[str, float] = defaultdict(float)
    unreported_max: dict[str, float] = defaultdict(float)
    charged_calls: Counter[str] = Counter()
    for call in calls:
        reported[call.tenant] += call.charged_usd
        unreported_max[call.tenant] += call.unreported_max_usd
        charged_calls[call.tenant] += call.kind != "route"
    tenants: dict[str, dict[str, Any]] = {}
    passed = True
    for tenant in sorted(set(reported) | set(spent)):
        ledger = spent.get(tenant, 0.0)
        low = reported[tenant] - charged_calls[tenant] * USD_PER_CHARGE_ROUNDING
        high = reported[tenant] + unreported_max[tenant]
        high += charged_calls[tenant] * USD_PER_CHARGE_ROUNDING
        ok = low <= ledger <= high
        passed &= ok
        tenants[tenant] = {
            "ledger_usd": ledger,
            "reported_usd": reported[tenant],
            "unseen_charges_usd": ledger - reported[tenant],
            "unseen_bound_usd": unreported_max[tenant],
            "exact": unreported_max[tenant] == 0.0,
            "ok": ok,
        }
    stats = await sidecar.stub.GetStats(pb.StatsRequest())
    stats_cost = sum(m.cost_usd for m in stats.models)
    ledger_total = sum(spent.values())
    tolerance = sum(charged_calls.values()) * USD_PER_CHARGE_ROUNDING + 1e-9
    stats_agree = abs(stats_cost - ledger_total) <= tolerance
    redis_total = await _redis_committed_when_synced(redis, ledger_total, tolerance)
    redis_agrees = abs(redis_total - ledger_total) <= tolerance
    return Check(
        "ledger",
        passed and stats_agree and redis_agrees,
        {
            "tenants": tenants,
            "ledger_total_usd": ledger_total,
            "getstats_cost_usd": stats_cost,
            "redis_committed_usd": redis_total,
            "tolerance_usd": tolerance,
        },
    )


async def _redis_committed_usd(redis: RedisServer) -> float:
    from redis.asyncio import Redis

    client = Redis.from_url(redis.url)
    try:
        keys = [k async for k in client.scan_iter("switchpoint:budget:*")]
        total = 0
        for key in keys:
            if await client.type(key) == b"hash":
                total += int(await client.hget(key, "committed") or 0)
    finally:
        await client.aclose()
    return total / 1e9


async def _redis_committed_when_synced(redis: RedisServer, want: float, tolerance: float) -> float:
    """Redis's committed spend, once the replica's sync rounds have reported it all (bounded)."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while True:
        committed = await _redis_committed_usd(redis)
        if abs(committed - want) <= tolerance or time.monotonic() > deadline:
            return committed
        await asyncio.sleep(0.1)


def check_resources(samples: list[Sample], warmup_end_s: float, final: Sample) -> Check:
    after_warmup = [s for s in samples if s.t_s <= warmup_end_s]
    base = after_warmup[-1] if after_warmup else samples[0]
    rss_growth = final.rss_mib - base.rss_mib
    fd_growth = final.fds - base.fds
    return Check(
        "resources flat",
        rss_growth <= RSS_GROWTH_BOUND_MIB and fd_growth <= FD_GROWTH_BOUND,
        {
            "rss_mib_end_of_warmup": round(base.rss_mib, 1),
            "rss_mib_end": round(final.rss_mib, 1),
            "rss_mib_peak": round(max(s.rss_mib for s in samples), 1),
            "rss_growth_mib": round(rss_growth, 1),
            "rss_growth_bound_mib": RSS_GROWTH_BOUND_MIB,
            "fds_end_of_warmup": base.fds,
            "fds_end": final.fds,
            "fds_peak": max(s.fds for s in samples),
            "fd_growth": fd_growth,
            "fd_growth_bound": FD_GROWTH_BOUND,
        },
    )
