"""SharedQuota: budgets and rate limits shared by several replicas, via slices leased from Redis.

Each replica spends locally in the Rust ledger, which never lets spent + reserved pass the lease
this class sets on it. The lease comes from a pool in Redis that never hands out more than
`limit - committed - leased`, so the replicas together cannot be granted more than the limit;
spend is reported back (moving it from the replica's outstanding lease to the committed total)
and what a replica did not spend is given back when it stops.

The loop: every `sync_interval_s`, for each budget, take the ledger's unreported spend and queue
it as reports, send the queue, then lease more if less than half a slice is left; `top_up` does
the same at once for one budget when a reservation was refused only for want of lease.

Each budget's limit is held in Redis too, and the ledger follows it: see limits.py.

Rate limits (RPM, TPM) are shared the same way, through a pool per UTC minute: see rate.py for
their rules and bound. Each round syncs the budgets and then the rate limits, and `top_up_rate`
is the rate limits' `top_up`.

Redis unreachable: the replica goes on serving (see `SharedStateConfig.policy`), keeps taking
spend and usage into its queues, and tries again every interval; the first round in which every
budget and rate limit gets through reports the queues (idempotently), renews the leases and
clears `degraded`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections.abc import Callable
from typing import Literal

from switchpoint.quota.shared.budgets import BudgetLeaser
from switchpoint.quota.shared.ledger import BudgetLease
from switchpoint.quota.shared.limits import SharedLimits
from switchpoint.quota.shared.rate import RateLease, RateLeaser
from switchpoint.quota.shared.redis_errors import REDIS_ERRORS
from switchpoint.quota.shared.redis_errors import describe as _describe
from switchpoint.quota.shared.redis_errors import raise_if_cancelled as _raise_if_cancelled
from switchpoint.quota.shared.status import (
    BudgetLeaseStatus,
    GatePort,
    RateLeaseStatus,
    SharedQuotaStatus,
)
from switchpoint.quota.shared.store import (
    QuotaStore,
    nanos_to_usd,
)
from switchpoint.quota.shared_config import SharedStateConfig

_log = logging.getLogger(__name__)


class SharedQuota:
    """The lease manager of one replica. Create one per server; `start` it, `stop` it."""

    def __init__(
        self,
        config: SharedStateConfig,
        ledger: GatePort,
        *,
        store: QuotaStore | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if store is None:
            if config.redis_url is None:
                raise ValueError("shared_state.redis_url: required for shared quotas")
            store = QuotaStore.from_url(
                config.redis_url, key_prefix=config.key_prefix, timeout_s=config.timeout_s
            )
        self._config = config
        self._ledger = ledger
        self._store = store
        self._clock = clock
        self.replica_id = config.resolved_replica_id()
        # Reports are applied once per (reporter, seq). A reporter name per instance lets a
        # restarted replica that keeps its replica id count its seqs from 1 again.
        self._reporter = f"{self.replica_id}/{uuid.uuid4().hex[:12]}"
        self._seq = 0
        self._budgets: dict[int, BudgetLease] = {}
        self._limits = SharedLimits(ledger)
        self._budget_leaser = BudgetLeaser(
            store,
            ledger,
            self._limits,
            slice_usd=config.slice_usd,
            clock=clock,
            replica=self.replica_id,
            reporter=self._reporter,
            next_seq=self._next_seq,
        )
        self._rates: dict[int, RateLease] = {}
        # Leases of instances the gate freed, kept only until their queued reports reach Redis.
        self._retiring: list[BudgetLease | RateLease] = []
        self._rate_leaser = RateLeaser(
            store,
            ledger,
            clock=clock,
            replica=self.replica_id,
            reporter=self._reporter,
            next_seq=self._next_seq,
        )
        self._task: asyncio.Task[None] | None = None
        # Set by stop(). The loop is stopped by this rather than by cancelling its task: redis-py
        # can swallow a cancellation that lands inside a command, leaving the task running.
        self._stopping = asyncio.Event()
        self._degraded_reason = ""
        self._degraded_since: float | None = None
        self._degraded_episodes = 0
        self._last_attempt = -math.inf
        self._last_ok: float | None = None

    @property
    def degraded(self) -> bool:
        return self._degraded_since is not None

    @property
    def degraded_reason(self) -> str:
        return self._degraded_reason

    @property
    def pending_usd(self) -> float:
        return sum(lease.pending_usd for lease in self._budgets.values())

    def register_budget(
        self,
        budget_id: int,
        *,
        name: str,
        window: str,
        budget: str | None = None,
        scope: str = "",
        config_limit_usd: float | None = None,
    ) -> None:
        """Shares gate budget `budget_id` (named `name`, window "hour"/"day"/"month"/"total"),
        the instance for `scope` (e.g. "tenant=acme") of config budget `budget` (default `name`),
        whose configured limit is `config_limit_usd` (default: the ledger's limit now).

        Its ledger is capped at once: at nothing, until the first sync leases a slice (or, if
        Redis is already known to be down under fail-open, at the full limit).
        """
        if budget_id in self._budgets:
            raise ValueError(f"budget {budget_id} ({name!r}) is already registered")
        if config_limit_usd is None:
            config_limit_usd = self._ledger.budget_state(budget_id, self._clock()).limit_usd
        lease = BudgetLease(budget_id, name, window)
        self._budgets[budget_id] = lease
        self._limits.register(
            budget_id, budget=budget or name, scope=scope, name=name, config_usd=config_limit_usd
        )
        self._budget_leaser.cap(lease, None if self._uncapped() else 0.0)

    def register_rate_limit(
        self, limit_id: int, *, name: str, rpm: float | None, tpm: float | None
    ) -> None:
        """Shares gate rate limit `limit_id`'s RPM and TPM (at least one); concurrency stays per
        replica. Capped at once, like a budget: at nothing until a call tops it up."""
        if limit_id in self._rates:
            raise ValueError(f"rate limit {limit_id} ({name!r}) is already registered")
        if rpm is None and tpm is None:
            raise ValueError(f"rate limit {name!r}: only rpm and tpm can be shared")
        lease = RateLease(limit_id, name, rpm, tpm)
        self._rates[limit_id] = lease
        self._rate_leaser.cap(lease, None if self._uncapped() else 0)

    async def start(self) -> None:
        """Leases the first slices (or notes that Redis is down), then syncs periodically."""
        if self._task is not None:
            raise RuntimeError("SharedQuota already started")
        await self.sync()
        self._task = asyncio.create_task(self._run(), name=f"shared-quota-{self.replica_id}")

    async def stop(self) -> None:
        """Reports the last spend, gives unspent leases back and closes the Redis client.

        Call it after in-flight calls have drained: it caps every ledger at nothing first, and
        spend settled after that would not reach Redis.
        """
        if self._stopping.is_set():
            return
        self._stopping.set()
        if self._task is not None:
            await self._task  # at most one round, which Redis timeouts bound
            self._task = None
        try:
            await self._flush_retiring()
            for lease in self._budgets.values():
                self._budget_leaser.cap(lease, 0.0)
            for rate in self._rates.values():
                self._rate_leaser.cap(rate, 0)
            for lease in self._budgets.values():
                async with lease.lock:
                    self._budget_leaser.collect(lease)
                    await self._budget_leaser.flush(lease)
                    await self._budget_leaser.give_back(lease)
            for rate in self._rates.values():
                async with rate.lock:
                    self._rate_leaser.collect(rate)
                    await self._rate_leaser.flush(rate)
                    await self._rate_leaser.give_back(rate)
        except REDIS_ERRORS as exc:
            _log.error(
                "shared state: Redis unreachable at stop (%s): $%.6f of settled spend was not "
                "reported and is missing from the shared budgets (and %d requests, %d tokens "
                "from the shared rate limits)",
                _describe(exc),
                self.pending_usd,
                *self._rate_leaser.pending(self._rates.values()),
            )
        finally:
            await self._store.aclose()

    async def sync(self) -> bool:
        """One round over every budget and rate limit; True if all got through to Redis."""
        self._last_attempt = self._clock()
        leases = list(self._budgets.values())
        rates = list(self._rates.values())
        # Take usage from every ledger first, so it is queued even if Redis fails mid-round.
        # An instance the gate freed during the round is skipped (see `forget`).
        for lease in leases:
            async with lease.lock:
                if self._budgets.get(lease.budget_id) is lease:
                    self._budget_leaser.collect(lease)
        for rate in rates:
            async with rate.lock:
                if self._rates.get(rate.limit_id) is rate:
                    self._rate_leaser.collect(rate)
        self._limits.read_next_lease()
        try:
            await self._flush_retiring()
            for lease in leases:
                async with lease.lock:
                    if self._budgets.get(lease.budget_id) is lease:
                        await self._budget_leaser.sync(lease, need_usd=0.0)
            for rate in rates:
                async with rate.lock:
                    if self._rates.get(rate.limit_id) is rate:
                        await self._rate_leaser.sync(rate)
        except REDIS_ERRORS as exc:
            _raise_if_cancelled(exc)
            self._degrade(exc)
            return False
        self._recover()
        return True

    async def top_up(self, budget_id: int, need_usd: float = 0.0) -> bool:
        """Leases more for `budget_id` now, if that can help a call estimated at `need_usd`.

        For the gate, after a reservation naming this budget was refused: True means the
        budget's ledger now has room for `need_usd`, so reserving again may pass (another rule
        may still refuse). False when the limit itself is reached, the shared pool is empty, or
        Redis is unreachable (and then, at most once per sync interval, Redis is tried again).
        """
        lease = self._budgets.get(budget_id)
        if lease is None:
            raise ValueError(f"budget {budget_id} is not registered for sharing")
        async with lease.lock:
            if self._budget_leaser.fits(lease, need_usd):
                return True  # a concurrent top-up or sync made room while this one waited
            now = self._clock()
            recent = self._config.sync_interval_s
            if self.degraded and now - self._last_attempt < recent:
                return False
            if lease.exhausted_at is not None and now - lease.exhausted_at < recent:
                return False
            if not self._budget_leaser.within_limit(lease, need_usd):
                return False
            try:
                self._budget_leaser.collect(lease)
                await self._budget_leaser.sync(lease, need_usd=need_usd)
            except REDIS_ERRORS as exc:
                _raise_if_cancelled(exc)
                self._last_attempt = now
                self._degrade(exc)
            return self._budget_leaser.fits(lease, need_usd)

    async def top_up_rate(self, limit_id: int, tokens: int) -> bool:
        """Leases more of rate limit `limit_id`'s current minute now, if that can help a call of
        `tokens`: `top_up` for rate limits, after a reservation was refused for want of lease.
        False when this replica alone has used the minute's limit, the pool came back short
        within the sync interval, or Redis is unreachable (tried at most once an interval)."""
        lease = self._rates.get(limit_id)
        if lease is None:
            raise ValueError(f"rate limit {limit_id} is not registered for sharing")
        leaser = self._rate_leaser
        async with lease.lock:
            if leaser.fits(lease, tokens):
                return True  # a concurrent top-up or sync made room while this one waited
            now = self._clock()
            recent = self._config.sync_interval_s
            if self.degraded and now - self._last_attempt < recent:
                return False
            leaser.collect(lease)  # first, so a new minute forgets the last one's exhaustion
            if not leaser.within_limit(lease, tokens) or leaser.exhausted(lease, tokens, recent):
                return False
            try:
                await leaser.sync(lease, tokens=tokens)
            except REDIS_ERRORS as exc:
                _raise_if_cancelled(exc)
                self._last_attempt = now
                self._degrade(exc)
            return leaser.fits(lease, tokens)

    async def set_limit(self, budget: str, scope: str, limit_usd: float) -> None:
        """Admin SetBudget: writes config budget `budget`'s limit, for every instance (`scope`
        "*") or one, to Redis. Raises REDIS_ERRORS when Redis is unreachable, and then nothing
        changed; each replica holding an instance follows it at its next `sync`."""
        await self._limits.set(self._store, budget, scope, limit_usd)

    def config_limit_changed(self, budget: str, limit_usd: float) -> None:
        """A config reload changed `budget`'s limit: a setting, written at the next `sync`."""
        self._limits.config_changed(budget, limit_usd)

    def rate_within_limit(self, limit_id: int, tokens: int) -> bool:
        """False if this replica's own usage fills rate limit `limit_id` for the minute, so no
        lease can admit a call of `tokens` before the next one."""
        lease = self._rates.get(limit_id)
        return lease is None or self._rate_leaser.within_limit(lease, tokens)

    def rate_retry_after_s(self, limit_id: int) -> float | None:
        """Seconds to the minute's end when rate limit `limit_id`'s shared pool is known to be
        spent for it; None when more lease may come sooner."""
        lease = self._rates.get(limit_id)
        return None if lease is None else self._rate_leaser.retry_after_s(lease)

    def status(self) -> SharedQuotaStatus:
        budgets = tuple(
            BudgetLeaseStatus(
                name=lease.name,
                window_start_s=lease.window_start_s,
                leased_usd=lease.leased_usd,
                outstanding_usd=nanos_to_usd(lease.outstanding_nanos),
                pending_usd=lease.pending_usd,
            )
            for lease in self._budgets.values()
        )
        return SharedQuotaStatus(
            replica_id=self.replica_id,
            policy=self._config.policy,
            degraded=self.degraded,
            degraded_reason=self._degraded_reason,
            degraded_since=self._degraded_since,
            degraded_episodes=self._degraded_episodes,
            last_sync_ok_at=self._last_ok,
            budgets=budgets,
            rate_limits=tuple(
                RateLeaseStatus(
                    name=rate.name,
                    unit=pool.unit,
                    minute_start_s=rate.minute_start_s,
                    leased=pool.leased,
                    outstanding=pool.outstanding,
                    pending=pool.pending,
                )
                for rate in self._rates.values()
                for pool in rate.pools.values()
            ),
        )

    # -- instances the gate frees (switchpoint.quota.instances) ----------------------------------

    def shares_budget(self, budget_id: int) -> bool:
        return budget_id in self._budgets

    def can_forget(self, kind: Literal["limit", "budget"], rule_id: int) -> bool:
        """Whether gate rule `rule_id` may be freed now: no sync or top-up is inside it (they touch
        its ledger after awaiting Redis), and Redis is reachable to take what it still holds."""
        lease = (self._budgets if kind == "budget" else self._rates).get(rule_id)
        return lease is None or not (lease.lock.locked() or self.degraded)

    def forget(self, kind: Literal["limit", "budget"], rule_id: int) -> None:
        """The gate frees rule `rule_id` (`can_forget` said it may): its unreported usage is queued
        for the next round to report, and it is synced no more. Its lease stays this replica's in
        Redis until the key expires: an instance made again for the scope is answered with it."""
        if kind == "budget" and (lease := self._budgets.pop(rule_id, None)) is not None:
            self._limits.forget(rule_id)
            self._budget_leaser.collect(lease)
            self._retiring.append(lease)
        elif kind == "limit" and (rate := self._rates.pop(rule_id, None)) is not None:
            self._rate_leaser.collect(rate)
            self._retiring.append(rate)

    async def _flush_retiring(self) -> None:
        """Reports what freed instances still held: a round's Redis round trips are bounded by
        the live instances and those freed since the last round."""
        while self._retiring:
            lease = self._retiring[0]
            async with lease.lock:
                if isinstance(lease, BudgetLease):
                    await self._budget_leaser.flush(lease)
                else:
                    await self._rate_leaser.flush(lease)
            self._retiring.pop(0)

    async def _run(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._config.sync_interval_s):
                    await self._stopping.wait()
            if self._stopping.is_set():
                return
            try:
                await self.sync()
            except Exception:
                # A bug in one round must not end the loop: leases would silently stop renewing.
                _log.exception("shared state: sync round failed")

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _uncapped(self) -> bool:
        return self.degraded and self._config.policy == "fail-open"

    def _degrade(self, exc: BaseException) -> None:
        self._degraded_reason = _describe(exc)
        if self._degraded_since is not None:
            return
        self._degraded_since = self._clock()
        self._degraded_episodes += 1
        _log.warning(
            "shared state: Redis unreachable (%s); until it returns, budgets and rate limits "
            "are %s",
            self._degraded_reason,
            "capped by their own limits only (fail-open)"
            if self._uncapped()
            else "capped by the leases already held (fail-closed)",
        )
        if self._uncapped():
            for lease in self._budgets.values():
                self._budget_leaser.cap(lease, None)
            for rate in self._rates.values():
                self._rate_leaser.cap(rate, None)

    def _recover(self) -> None:
        self._last_ok = self._clock()
        if self._degraded_since is None:
            return
        _log.warning(
            "shared state: Redis reachable again after %.1f s; pending spend reported, leases "
            "renewed",
            self._last_ok - self._degraded_since,
        )
        self._degraded_since = None
        self._degraded_reason = ""
