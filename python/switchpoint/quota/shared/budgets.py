"""The Redis side of budget leases for one replica: what `SharedQuota` does for one budget's
lease (collect the ledger's spend, report it, lease more, cap the ledger, give it back).

`SharedQuota` holds the locks, decides when to sync and what Redis errors mean; `BudgetLeaser`
does one lease's work, as `rate.RateLeaser` does a rate limit's.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

from switchpoint.quota.shared.ledger import BudgetLease, BudgetLedgerPort, LocalState
from switchpoint.quota.shared.limits import SharedLimits
from switchpoint.quota.shared.store import NANOS_PER_USD, QuotaStore, expire_at, nanos_to_usd

_log = logging.getLogger(__name__)


class BudgetLeaser:
    """One replica's budget leases, each against its Rust ledger and its pool in Redis."""

    def __init__(
        self,
        store: QuotaStore,
        ledger: BudgetLedgerPort,
        limits: SharedLimits,
        *,
        slice_usd: float,
        clock: Callable[[], float],
        replica: str,
        reporter: str,
        next_seq: Callable[[], int],
    ) -> None:
        self._store = store
        self._ledger = ledger
        self._limits = limits
        self._slice_usd = slice_usd
        self._clock = clock
        self._replica = replica
        self._reporter = reporter
        self._next_seq = next_seq

    def collect(self, lease: BudgetLease) -> None:
        """Queues the ledger's unreported spend; local only, so it cannot fail on Redis."""
        state = self.state(lease)
        taken = self._ledger.take_unreported_spend(lease.budget_id)
        if lease.collect(state, taken) and lease.leased_usd is not None:
            lease.leased_usd = 0.0  # the ledger drops a lease when its window ends

    async def sync(self, lease: BudgetLease, *, need_usd: float) -> None:
        """Reports the queued spend, follows the limit Redis holds, and leases more if less than
        half a slice (or less than `need_usd`) is left."""
        await self.flush(lease)
        await self._limits.refresh(self._store)
        state = self.state(lease)
        if state.window_start_s != lease.window_start_s:
            return  # the window turned meanwhile: the next round collects and leases afresh
        want = self._want(lease, state, need_usd)
        offer = self._limits.offer(lease.budget_id)
        reply = await self._store.lease_budget(
            self.key(lease),
            replica=self._replica,
            want=want,
            limit=offer.nanos,
            limit_seq=offer.seq,
            expire=expire_at(lease.window_end_s),
            known=lease.reported_nanos,
        )
        self._limits.follow(lease.budget_id, reply, state.window_start_s, self._clock())
        if reply.restored:
            _log.warning(
                "shared state: Redis had lost $%.6f of this replica's spend on budget %r "
                "(restarted or failed over without it); reported it again",
                nanos_to_usd(reply.restored),
                lease.name,
            )
        lease.outstanding_nanos = reply.outstanding
        lease.exhausted_at = self._clock() if reply.granted < want else None
        self._apply(lease)

    async def flush(self, lease: BudgetLease) -> None:
        """Sends the queued reports in order; stops at the first failure, keeping the rest."""
        for report in list(lease.reports):
            if report.seq is None:
                report.seq = self._next_seq()
            reply = await self._store.report(
                self._store.budget_key(lease.name, lease.window, report.window_start_s),
                replica=self._replica,
                reporter=self._reporter,
                seq=report.seq,
                spent=report.amount,
                expire=expire_at(report.window_end_s),
            )
            lease.acknowledged(report, outstanding=reply.outstanding)

    def _want(self, lease: BudgetLease, state: LocalState, need_usd: float) -> int:
        """Nano-USD to ask for: enough for a full slice (or `need_usd`) unspent, once less than
        half a slice (or less than `need_usd`) is left; 0 just refreshes what Redis holds."""
        slice_usd = self._slice_usd
        remaining = lease.remaining_usd(state)
        if remaining >= max(slice_usd / 2, need_usd):
            return 0
        return math.ceil((max(slice_usd, need_usd) - max(remaining, 0.0)) * NANOS_PER_USD)

    def _apply(self, lease: BudgetLease) -> None:
        usd = lease.leasable_usd
        now = self._clock()
        if self.state(lease, now).window_start_s != lease.window_start_s:
            return
        self._ledger.set_leased(lease.budget_id, usd, now)
        lease.leased_usd = usd
        # The ledger applies a lease to whichever window it is in; if it rolled between the
        # check and the set, this lease belongs to the old window: take it away again.
        if self.state(lease).window_start_s != lease.window_start_s:
            self.cap(lease, 0.0)

    def cap(self, lease: BudgetLease, usd: float | None) -> None:
        self._ledger.set_leased(lease.budget_id, usd, self._clock())
        lease.leased_usd = usd

    def state(self, lease: BudgetLease, now: float | None = None) -> LocalState:
        return LocalState.read(self._ledger, lease.budget_id, self._clock() if now is None else now)

    def fits(self, lease: BudgetLease, need_usd: float) -> bool:
        state = self.state(lease)
        cap = state.limit_usd
        if lease.leased_usd is not None:
            if state.window_start_s != lease.window_start_s:
                return False  # rolled: the ledger has no lease in the new window yet
            cap = min(cap, lease.leased_usd)
        return state.spent_usd + state.reserved_usd + need_usd <= cap

    def within_limit(self, lease: BudgetLease, need_usd: float) -> bool:
        state = self.state(lease)
        return state.spent_usd + state.reserved_usd + need_usd <= state.limit_usd

    def key(self, lease: BudgetLease) -> str:
        assert lease.window_start_s is not None  # set by the first collect
        return self._store.budget_key(lease.name, lease.window, lease.window_start_s)

    async def give_back(self, lease: BudgetLease) -> None:
        """Returns what is left of the lease to the pool (at stop, its spend reported first)."""
        if lease.window_start_s is not None:
            await self._store.give_back(self.key(lease), replica=self._replica)
            lease.outstanding_nanos = 0
