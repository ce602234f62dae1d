"""The soak's checks, each a named pass/fail with the figures behind it:

- answered: every call got an answer (a success or a documented error class), none past its
  deadline, every stream that ended OK ended with exactly one final chunk;
- server saw each: the sidecar's request log has one line per call, with the outcome the client
  saw (a call whose deadline passed may end on either side first: `deadline_exceeded` or
  `cancelled`);
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
import json
import os
import statistics
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
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
# Growth allowed from warm-up to the end of the run. A config reload builds a new engine beside
# the old one; the allocator keeps that high-water mark (measured: +18 to +30 MiB for the first
# reload, a plateau near +57 MiB after 40 reloads, Python's object count unchanged), so the run's
# one reload may cost up to this much without being a leak.
RSS_GROWTH_BOUND_MIB = 64.0
# From RELOAD_SETTLE_S after the reload to the end (a third of the run: faults, then the drain),
# memory must stay flat within this: a leak of a kilobyte per call passes it in 16,000 calls.
RSS_SINCE_RELOAD_BOUND_MIB = 16.0
RELOAD_SETTLE_S = 5.0
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


REQUEST_LOGGER = "switchpoint.request"


@dataclass
class SidecarLog:
    levels: Counter[str] = field(default_factory=Counter)
    requests: Counter[tuple[str, str]] = field(default_factory=Counter)  # by (rpc, outcome)
    tracebacks: int = 0


def read_log(path: Path) -> SidecarLog:
    """The sidecar's JSON log lines, counted."""
    log = SidecarLog()
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            fields = json.loads(line)
            log.levels[fields["level"]] += 1
            log.tracebacks += "exc" in fields
            if fields["logger"] == REQUEST_LOGGER:
                log.requests[fields["rpc"], fields["outcome"]] += 1
    return log


RPC_OF_KIND = {"chat": "Chat", "stream": "ChatStream", "cancel": "ChatStream", "route": "Route"}
# Client statuses whose server-side outcome depends on which side noticed first.
EITHER_SIDE = {"DEADLINE_EXCEEDED", "CANCELLED"}


def check_server_view(calls: list[Call], logged: Counter[tuple[str, str]]) -> Check:
    """`logged`: the request log's lines by (rpc, outcome)."""
    expected: Counter[tuple[str, str]] = Counter()
    for call in calls:
        outcome = "either" if call.status in EITHER_SIDE else call.status.lower()
        expected[RPC_OF_KIND[call.kind], outcome] += 1
    seen: Counter[tuple[str, str]] = Counter()
    for (rpc, outcome), n in logged.items():
        either = outcome in {s.lower() for s in EITHER_SIDE}
        seen[rpc, "either" if either else outcome] += n
    differ = {
        f"{rpc}/{outcome}": {"client": expected[rpc, outcome], "log": seen[rpc, outcome]}
        for rpc, outcome in sorted(set(expected) | set(seen))
        if expected[rpc, outcome] != seen[rpc, outcome]
    }
    return Check(
        "server saw each",
        not differ,
        {
            "log_lines": sum(logged.values()),
            "by_rpc_outcome": {f"{r}/{o}": n for (r, o), n in sorted(logged.items())},
            "differ": differ,
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


def check_resources(
    samples: list[Sample], warmup: tuple[float, float], reload_s: float, final: Sample
) -> Check:
    """`warmup`: its (start, end) in seconds; its second half's median is the baseline (the
    first seconds of a run build pools and caches). `reload_s`: when the config was reloaded."""
    second_half = (warmup[0] + warmup[1]) / 2
    settled_warmup = [s for s in samples if second_half <= s.t_s <= warmup[1]] or samples[:1]
    base_rss = statistics.median(s.rss_mib for s in settled_warmup)
    base_fds = round(statistics.median(s.fds for s in settled_warmup))
    after = [s for s in samples if s.t_s >= reload_s + RELOAD_SETTLE_S] or [final]
    rss_growth = final.rss_mib - base_rss
    since_reload = final.rss_mib - after[0].rss_mib
    fd_growth = final.fds - base_fds
    return Check(
        "resources flat",
        rss_growth <= RSS_GROWTH_BOUND_MIB
        and since_reload <= RSS_SINCE_RELOAD_BOUND_MIB
        and fd_growth <= FD_GROWTH_BOUND,
        {
            "rss_mib_warmup": round(base_rss, 1),
            "rss_mib_end": round(final.rss_mib, 1),
            "rss_mib_peak": round(max(s.rss_mib for s in samples), 1),
            "rss_growth_mib": round(rss_growth, 1),
            "rss_growth_bound_mib": RSS_GROWTH_BOUND_MIB,
            "rss_growth_since_reload_mib": round(since_reload, 1),
            "rss_growth_since_reload_bound_mib": RSS_SINCE_RELOAD_BOUND_MIB,
            "fds_warmup": base_fds,
            "fds_end": final.fds,
            "fds_peak": max(s.fds for s in samples),
            "fd_growth": fd_growth,
            "fd_growth_bound": FD_GROWTH_BOUND,
        },
    )
