"""Rate limits (RPM, TPM) shared by several replicas, through per-minute pools leased from Redis.

A shared rate limit has, for each of its RPM and TPM, one pool per fixed UTC minute in Redis
(`{prefix}:rate:{name}:{rpm|tpm}:{minute_start}`, minute_start = floor(now / 60) * 60), holding
the per-minute limit in whole requests or tokens and served by the budgets' lease, report and
give-back scripts (store.py). This replica spends its lease locally: the Rust limiter's lease cap
(rust/core/src/lease.rs) refuses, with kind "rpm-lease" or "tpm-lease", a call that would take
the minute's usage past the allowance set here, on top of its own token buckets. Concurrency
limits are not shared: calls in flight are a replica's own.

Sizes are derived, not configured (`shared_state.slice_usd` is in USD): a pool holds the limit
rounded down (at least 1), a slice is a tenth of the pool (at least 1). Leasing is on demand: a
replica leases for a minute when a call finds its lease short (`SharedQuota.top_up_rate`), and
the sync loop renews only pools in use in the current minute, so an idle replica holds nothing.
A lease ends with its minute and is not given back then (the pool expires with its minute), so
up to (replicas x slice) of a minute's pool may go unused; at stop the current minute's unused
lease is given back.

The bound, while Redis is reachable: requests admitted in one UTC minute, over all replicas, never
pass the limit (a request is counted in full when reserved, and Redis never grants more than the
pool). Tokens pass it only by what calls use beyond their estimates, as budgets do. Redis
unreachable: fail-closed keeps the lease held, so once its minute ends the limit admits nothing
until Redis returns; fail-open uncaps, leaving each replica its own buckets (replicas x limit).

Usage is reported per minute, in the minute in which each call finished, exactly once (the
budgets' sequence numbers); a report for a minute whose key has expired is dropped, as no replica
leases from that minute any more.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal, Protocol

from switchpoint._native import Denial, LimitUsage
from switchpoint.quota.shared.ledger import PendingReport
from switchpoint.quota.shared.store import QuotaStore

_log = logging.getLogger(__name__)

Unit = Literal["rpm", "tpm"]
# The gate's lease denials, and the limit each is about.
LEASE_KINDS: dict[str, Unit] = {"rpm-lease": "rpm", "tpm-lease": "tpm"}
MINUTE_S = 60
# A minute's keys outlive it by this much: time for a replica cut off at the minute's end to report
# into it on reconnecting, and short, since a limit writes a key a minute.
RATE_KEY_GRACE_S = 120
# A slice is this share of the pool: ten top-ups a minute for a replica taking the whole pool.
SLICE_DIVISOR = 10


class RateLimiterPort(Protocol):
    """The part of `switchpoint._native.Gate` that rate leases use."""

    def check(
        self, limits: list[int], budgets: list[int], tokens: int, cost_usd: float, now: float, /
    ) -> Denial | None: ...

    def limit_usage(self, limit: int, now: float, /) -> LimitUsage: ...

    def set_limit_leased(
        self, limit: int, requests: float | None, tokens: float | None, now: float, /
    ) -> None: ...

    def take_unreported_usage(self, limit: int, /) -> tuple[int, int]: ...


def pool_size(per_minute: float) -> int:
    """A minute's pool: the limit rounded down, so replicas together stay within it, but at least
    one, so that a limit below one per minute still admits a call a minute."""
    return max(1, math.floor(per_minute))


def slice_size(pool: int) -> int:
    return max(1, pool // SLICE_DIVISOR)


@dataclass(frozen=True, slots=True)
class MinuteState:
    """The current minute as the limiter counts it."""

    start_s: float
    requests_done: int
    tokens_done: int
    requests_reserved: int
    tokens_reserved: int

    @classmethod
    def read(cls, gate: RateLimiterPort, limit_id: int, now: float) -> MinuteState:
        m = gate.limit_usage(limit_id, now)
        return cls(
            m.minute_start_s, m.requests_done, m.tokens_done, m.requests_reserved, m.tokens_reserved
        )

    @property
    def end_s(self) -> float:
        return self.start_s + MINUTE_S

    def done(self, unit: Unit) -> int:
        return self.requests_done if unit == "rpm" else self.tokens_done

    def used(self, unit: Unit) -> int:
        if unit == "rpm":
            return self.requests_done + self.requests_reserved
        return self.tokens_done + self.tokens_reserved


class RatePool:
    """One of a limit's pools (requests or tokens) as this replica holds it in the current minute.
    The allowance is `reported + outstanding`, compared by the limiter with the minute's usage."""

    def __init__(self, unit: Unit, per_minute: float) -> None:
        self.unit: Unit = unit
        self.size = pool_size(per_minute)
        self.slice = slice_size(self.size)
        self.reports: deque[PendingReport] = deque()
        self.reported = 0
        self.outstanding = 0
        # What the limiter's allowance was last set to; None: uncapped (fail-open while degraded).
        self.leased: int | None = 0
        self.exhausted_at: float | None = None

    @property
    def allowance(self) -> int:
        return self.reported + self.outstanding

    @property
    def pending(self) -> int:
        return sum(report.amount for report in self.reports)

    def need(self, tokens: int) -> int:
        """What a call takes of this pool; as in the limiter, no more than the whole pool."""
        return 1 if self.unit == "rpm" else min(tokens, self.size)

    def want(self, state: MinuteState, need: int) -> int:
        """How much to lease: enough to leave a slice (or `need`) unused, once less than half a
        slice (or `need`) is left. Usage past the allowance (calls carried into the minute, tokens
        beyond estimates) will be reported into this pool, so it is leased too."""
        remaining = self.allowance - state.used(self.unit)
        if remaining >= max(self.slice / 2, need):
            return 0
        return max(self.slice, need) - remaining

    def within_limit(self, state: MinuteState, need: int) -> bool:
        """False when this replica alone has used the minute's pool: no lease can help."""
        final = state.used("rpm") if self.unit == "rpm" else state.tokens_done
        return final + need <= self.size

    def new_minute(self) -> None:
        self.reported = 0
        self.outstanding = 0
        self.exhausted_at = None
        if self.leased is not None:
            self.leased = 0  # the limiter drops a lease when its minute ends

    def queue(self, minute_start_s: float, amount: int) -> None:
        if amount <= 0:
            return
        last = self.reports[-1] if self.reports else None
        if last is not None and last.seq is None and last.window_start_s == minute_start_s:
            last.amount += amount
        else:
            end = minute_start_s + MINUTE_S
            self.reports.append(PendingReport(minute_start_s, end, amount))


class RateLease:
    """One shared rate limit on this replica. Guarded by `lock` against concurrent syncs."""

    def __init__(self, limit_id: int, name: str, rpm: float | None, tpm: float | None) -> None:
        self.limit_id = limit_id
        self.name = name
        self.lock = asyncio.Lock()
        self.pools: dict[Unit, RatePool] = {}
        if rpm is not None:
            self.pools["rpm"] = RatePool("rpm", rpm)
        if tpm is not None:
            self.pools["tpm"] = RatePool("tpm", tpm)
        # The minute the limiter was in at the last collect; None before the first.
        self.minute_start_s: float | None = None

    def collect(self, state: MinuteState, taken: tuple[int, int]) -> None:
        """Queues usage just taken from the limiter, `state` having been read before the take.

        At a rollover the take can hold usage of both minutes; the new minute's share is at least
        what the limiter counted as done in it at the read, so that much goes to the new minute
        and the rest to the old one (the budgets' rule, see ledger.py).
        """
        amounts: dict[Unit, int] = {"rpm": taken[0], "tpm": taken[1]}
        rolled = state.start_s != self.minute_start_s
        for unit, pool in self.pools.items():
            amount = amounts[unit]
            if not rolled:
                pool.queue(state.start_s, amount)
                continue
            current = amount
            if self.minute_start_s is not None:
                current = min(amount, state.done(unit))
                pool.queue(self.minute_start_s, amount - current)
            pool.new_minute()
            pool.queue(state.start_s, current)
        self.minute_start_s = state.start_s


class RateLeaser:
    """The Redis side of rate leases for one replica. SharedQuota holds the locks, decides when
    to sync and what Redis errors mean; this class does one lease's round trips."""

    def __init__(
        self,
        store: QuotaStore,
        gate: RateLimiterPort,
        *,
        clock: Callable[[], float],
        replica: str,
        reporter: str,
        next_seq: Callable[[], int],
    ) -> None:
        self._store = store
        self._gate = gate
        self._clock = clock
        self._replica = replica
        self._reporter = reporter
        self._next_seq = next_seq

    def state(self, lease: RateLease, now: float | None = None) -> MinuteState:
        return MinuteState.read(self._gate, lease.limit_id, self._clock() if now is None else now)

    def collect(self, lease: RateLease) -> None:
        """Queues the limiter's unreported usage; local only, so it cannot fail on Redis."""
        state = self.state(lease)
        lease.collect(state, self._gate.take_unreported_usage(lease.limit_id))

    def fits(self, lease: RateLease, tokens: int) -> bool:
        """True unless the limiter would refuse a call of `tokens` for want of lease."""
        denied = self._gate.check([lease.limit_id], [], tokens, 0.0, self._clock())
        return denied is None or denied.kind not in LEASE_KINDS

    def within_limit(self, lease: RateLease, tokens: int) -> bool:
        state = self.state(lease)
        return all(
            pool.within_limit(state, pool.need(tokens))
            for pool in lease.pools.values()
            if pool.leased is not None
        )

    def exhausted(self, lease: RateLease, tokens: int, recent_s: float) -> bool:
        """True if a pool the call is short of came back short from Redis within `recent_s`."""
        now = self._clock()
        state = self.state(lease, now)
        return any(
            pool.exhausted_at is not None
            and now - pool.exhausted_at < recent_s
            and pool.allowance - state.used(pool.unit) < pool.need(tokens)
            for pool in lease.pools.values()
        )

    def retry_after_s(self, lease: RateLease) -> float | None:
        """Seconds to the minute's end if a pool of it is known to be spent, else None."""
        now = self._clock()
        state = self.state(lease, now)
        if state.start_s != lease.minute_start_s:
            return None
        spent = any(pool.exhausted_at is not None for pool in lease.pools.values())
        return state.end_s - now if spent else None

    async def sync(self, lease: RateLease, *, tokens: int | None = None) -> None:
        """Reports queued usage, then leases: for a call of `tokens`, what it is short of;
        otherwise (the sync loop) renews the pools in use this minute and leaves idle ones be."""
        await self.flush(lease)
        state = self.state(lease)
        if state.start_s != lease.minute_start_s:
            return  # the minute turned meanwhile: the next round collects and leases afresh
        for pool in lease.pools.values():
            if tokens is None:
                if state.used(pool.unit) == 0 and pool.allowance == 0:
                    continue  # idle this minute: hold nothing other replicas could use
                want = pool.want(state, 0)  # 0 still refreshes and restores what Redis lost
            else:
                want = pool.want(state, pool.need(tokens))
                if want == 0:
                    continue
            await self._lease(lease, pool, state, want)
        self.apply(lease)

    async def flush(self, lease: RateLease) -> None:
        for pool in lease.pools.values():
            await self._flush(lease, pool)

    @staticmethod
    def pending(leases: Iterable[RateLease]) -> tuple[int, int]:
        """(requests, tokens) of usage not yet acknowledged by Redis."""
        pools = [pool for lease in leases for pool in lease.pools.values()]
        return (
            sum(pool.pending for pool in pools if pool.unit == "rpm"),
            sum(pool.pending for pool in pools if pool.unit == "tpm"),
        )

    async def _lease(self, lease: RateLease, pool: RatePool, state: MinuteState, want: int) -> None:
        reply = await self._store.lease(
            self._store.rate_key(lease.name, pool.unit, state.start_s),
            replica=self._replica,
            want=want,
            limit=pool.size,
            expire=int(state.end_s) + RATE_KEY_GRACE_S,
            known=pool.reported,
        )
        if reply.restored:
            _log.warning(
                "shared state: Redis had lost %d of this replica's %s usage of rate limit %r "
                "(restarted or failed over without it); reported it again",
                reply.restored,
                "request" if pool.unit == "rpm" else "token",
                lease.name,
            )
        pool.outstanding = reply.outstanding
        pool.exhausted_at = self._clock() if reply.granted < want else None

    async def _flush(self, lease: RateLease, pool: RatePool) -> None:
        """Sends the queued reports in order; stops at the first failure, keeping the rest."""
        now = self._clock()
        for report in list(pool.reports):
            if report.window_end_s + RATE_KEY_GRACE_S <= now:
                pool.reports.remove(report)  # that minute's key is gone: nothing reads it
                continue
            if report.seq is None:
                report.seq = self._next_seq()
            reply = await self._store.report(
                self._store.rate_key(lease.name, pool.unit, report.window_start_s),
                replica=self._replica,
                reporter=self._reporter,
                seq=report.seq,
                spent=report.amount,
                expire=int(report.window_end_s) + RATE_KEY_GRACE_S,
            )
            if pool.reports and pool.reports[0] is report:
                pool.reports.popleft()
            if report.window_start_s == lease.minute_start_s:
                pool.reported += report.amount
                pool.outstanding = reply.outstanding

    def apply(self, lease: RateLease) -> None:
        """Sets the limiter's allowances to what this replica holds of the current minute."""
        now = self._clock()
        if self.state(lease, now).start_s != lease.minute_start_s:
            return
        self._set(lease, {unit: pool.allowance for unit, pool in lease.pools.items()}, now)
        # The limiter applies allowances to whichever minute it is in; if it turned between the
        # check and the set, these belong to the old minute: take them away again.
        if self.state(lease).start_s != lease.minute_start_s:
            self.cap(lease, 0)

    def cap(self, lease: RateLease, allowance: int | None) -> None:
        """Caps every pool of `lease` at `allowance` (None uncaps)."""
        self._set(lease, dict.fromkeys(lease.pools, allowance), self._clock())

    def _set(self, lease: RateLease, allowances: dict[Unit, int | None], now: float) -> None:
        requests, tokens = allowances.get("rpm"), allowances.get("tpm")
        self._gate.set_limit_leased(
            lease.limit_id,
            None if requests is None else float(requests),
            None if tokens is None else float(tokens),
            now,
        )
        for unit, pool in lease.pools.items():
            pool.leased = allowances[unit]

    async def give_back(self, lease: RateLease) -> None:
        """Returns this minute's unused lease to the pool, for the other replicas."""
        if lease.minute_start_s is None:
            return
        for pool in lease.pools.values():
            key = self._store.rate_key(lease.name, pool.unit, lease.minute_start_s)
            await self._store.give_back(key, replica=self._replica)
            pool.outstanding = 0
