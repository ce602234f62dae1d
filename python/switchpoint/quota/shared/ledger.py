"""The local half of quota leases: one budget's bookkeeping between the Rust ledger and Redis.

The Rust ledger counts settled spend and hands it over through `take_unreported_spend`; this
module turns what it hands over into reports for Redis, each tied to the window it belongs to and
kept (never merged into a report that may already have been applied) until Redis acknowledges it.
That queue is the "pending" spend: while Redis is unreachable it grows, and nothing in it is lost
or sent twice.

What the ledger may spend in a window is `reported + outstanding`: the spend this replica has
already reported for the window plus the lease it holds and has not yet reported spending. The
ledger compares that with its own spent + reserved, so the unreported spend is what is eaten out
of the outstanding lease.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from typing import Protocol

from switchpoint._native import BudgetState
from switchpoint.quota.shared.store import nanos_to_usd, usd_to_nanos


class BudgetLedgerPort(Protocol):
    """The part of `switchpoint._native.Gate` that the lease manager uses."""

    def budget_state(self, budget: int, now: float, /) -> BudgetState: ...

    def set_leased(self, budget: int, usd: float | None, now: float, /) -> None: ...

    def take_unreported_spend(self, budget: int, /) -> float: ...


@dataclass(frozen=True, slots=True)
class LocalState:
    limit_usd: float
    spent_usd: float
    reserved_usd: float
    window_start_s: float
    window_end_s: float

    @classmethod
    def read(cls, ledger: BudgetLedgerPort, budget_id: int, now: float) -> LocalState:
        s = ledger.budget_state(budget_id, now)
        return cls(s.limit_usd, s.spent_usd, s.reserved_usd, s.window_start_s, s.window_end_s)


@dataclass(slots=True)
class PendingReport:
    window_start_s: float
    window_end_s: float
    # In the pool's integer unit: nano-USD for a budget, requests or tokens for a rate limit.
    amount: int
    # None until first sent. Once sent the report is frozen: it may have been applied even if
    # the reply never came, so it is retried exactly as it was, with the same seq.
    seq: int | None = None


class BudgetLease:
    """One budget's lease state on this replica. Guarded by `lock` against concurrent syncs."""

    def __init__(self, budget_id: int, name: str, window: str) -> None:
        self.budget_id = budget_id
        self.name = name
        self.window = window
        self.lock = asyncio.Lock()
        self.reports: deque[PendingReport] = deque()
        # The window the ledger was in at the last collect; None before the first.
        self.window_start_s: float | None = None
        self.window_end_s = 0.0
        # For that window, from this replica's acknowledged reports and Redis's last reply.
        self.reported_nanos = 0
        self.outstanding_nanos = 0
        # Sub-nano remainder of taken spend, carried into the next report.
        self.carry_usd = 0.0
        # What the ledger's lease was last set to; None: uncapped (fail-open while degraded).
        self.leased_usd: float | None = 0.0
        # When a lease last came back short because the shared pool was empty.
        self.exhausted_at: float | None = None

    @property
    def leasable_usd(self) -> float:
        """The lease to give the ledger for the current window."""
        return nanos_to_usd(self.reported_nanos + self.outstanding_nanos)

    @property
    def pending_usd(self) -> float:
        return nanos_to_usd(sum(r.amount for r in self.reports)) + self.carry_usd

    def collect(self, state: LocalState, taken_usd: float) -> bool:
        """Queues `taken_usd`, just taken from the ledger, as reports; True if the window rolled.

        `state` must have been read before the take. At a rollover the take can hold spend of
        both windows; the new window's share is at least the ledger's spend in it at the read
        (settles after the read all land in the new window), so that much goes to the new
        window and the rest to the old. A settle racing between the read and the take is thus
        charged to the old window: never lost nor counted twice, just on the earlier side.
        """
        amount = taken_usd + self.carry_usd
        nanos = usd_to_nanos(amount)
        self.carry_usd = max(0.0, amount - nanos_to_usd(nanos))
        if self.window_start_s == state.window_start_s:
            self._queue(state.window_start_s, state.window_end_s, nanos)
            return False
        current = nanos
        if self.window_start_s is not None:
            current = min(nanos, usd_to_nanos(state.spent_usd))
            self._queue(self.window_start_s, self.window_end_s, nanos - current)
        self.window_start_s = state.window_start_s
        self.window_end_s = state.window_end_s
        self.reported_nanos = 0
        self.outstanding_nanos = 0
        self.exhausted_at = None
        self._queue(state.window_start_s, state.window_end_s, current)
        return True

    def _queue(self, window_start_s: float, window_end_s: float, nanos: int) -> None:
        if nanos <= 0:
            return
        last = self.reports[-1] if self.reports else None
        if last is not None and last.seq is None and last.window_start_s == window_start_s:
            last.amount += nanos
        else:
            self.reports.append(PendingReport(window_start_s, window_end_s, nanos))

    def acknowledged(self, report: PendingReport, *, outstanding: int) -> None:
        """Redis has `report` (now or, if its reply was lost, before); drops it from the queue."""
        if self.reports and self.reports[0] is report:
            self.reports.popleft()
        if report.window_start_s == self.window_start_s:
            self.reported_nanos += report.amount
            self.outstanding_nanos = outstanding

    def remaining_usd(self, state: LocalState) -> float:
        """What the ledger can still reserve under the lease (may be negative)."""
        return self.leasable_usd - state.spent_usd - state.reserved_usd
