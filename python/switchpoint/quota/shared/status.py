"""What the lease manager reports about itself (`SharedQuota.status()`), and the gate interface it
works through. Plain data, apart from quota.py so that module stays about the lease loop."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from switchpoint.quota.shared.ledger import BudgetLedgerPort
from switchpoint.quota.shared.limits import LimitPort
from switchpoint.quota.shared.rate import RateLimiterPort
from switchpoint.quota.shared_config import Policy


class GatePort(BudgetLedgerPort, LimitPort, RateLimiterPort, Protocol):
    """The part of `switchpoint._native.Gate` that the lease manager uses."""


@dataclass(frozen=True, slots=True)
class BudgetLeaseStatus:
    name: str
    window_start_s: float | None
    # The ledger's lease cap (spend allowed in the window); None while uncapped (fail-open).
    leased_usd: float | None
    outstanding_usd: float
    # Settled spend not yet acknowledged by Redis.
    pending_usd: float


@dataclass(frozen=True, slots=True)
class RateLeaseStatus:
    name: str
    unit: str  # "rpm" or "tpm"
    minute_start_s: float | None
    # The limiter's allowance for the minute; None while uncapped (fail-open).
    leased: int | None
    outstanding: int
    # Usage not yet acknowledged by Redis.
    pending: int


@dataclass(frozen=True, slots=True)
class SharedQuotaStatus:
    replica_id: str
    policy: Policy
    degraded: bool
    degraded_reason: str
    degraded_since: float | None
    # How many times the replica has lost Redis since it started.
    degraded_episodes: int
    last_sync_ok_at: float | None
    budgets: tuple[BudgetLeaseStatus, ...]
    rate_limits: tuple[RateLeaseStatus, ...] = ()
