"""Budgets and rate limits shared by several replicas through quota leases from Redis.

`SharedQuota` (quota.py) is the lease manager a server creates when `shared_state.redis_url` is
set; store.py is the Redis side (key layout, Lua scripts), ledger.py the budgets' local
bookkeeping, rate.py the rate limits' (per-minute pools), status.py what it reports.
"""

from switchpoint.config import Policy, SharedStateConfig
from switchpoint.shared.ledger import BudgetLedgerPort
from switchpoint.shared.quota import SharedQuota
from switchpoint.shared.rate import LEASE_KINDS, RateLimiterPort
from switchpoint.shared.status import (
    BudgetLeaseStatus,
    GatePort,
    RateLeaseStatus,
    SharedQuotaStatus,
)
from switchpoint.shared.store import QuotaStore

__all__ = [
    "LEASE_KINDS",
    "BudgetLeaseStatus",
    "BudgetLedgerPort",
    "GatePort",
    "Policy",
    "QuotaStore",
    "RateLeaseStatus",
    "RateLimiterPort",
    "SharedQuota",
    "SharedQuotaStatus",
    "SharedStateConfig",
]
