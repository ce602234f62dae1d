"""Budgets and rate limits shared by several replicas through quota leases from Redis.

`SharedQuota` (quota.py) is the lease manager a server creates when `shared_state.redis_url` is
set; store.py is the Redis side (key layout, Lua scripts), ledger.py the budgets' local
bookkeeping, budgets.py their leases' round trips, limits.py the budgets' limits held in Redis,
rate.py the rate limits' (per-minute pools), status.py what it reports.
"""

from switchpoint.quota.shared.ledger import BudgetLedgerPort
from switchpoint.quota.shared.limits import EVERY_INSTANCE, MAX_SHARED_LIMIT_USD
from switchpoint.quota.shared.quota import SharedQuota
from switchpoint.quota.shared.rate import LEASE_KINDS, RateLimiterPort
from switchpoint.quota.shared.redis_errors import REDIS_ERRORS
from switchpoint.quota.shared.status import (
    BudgetLeaseStatus,
    GatePort,
    RateLeaseStatus,
    SharedQuotaStatus,
)
from switchpoint.quota.shared.store import QuotaStore
from switchpoint.quota.shared_config import Policy, SharedStateConfig

__all__ = [
    "EVERY_INSTANCE",
    "LEASE_KINDS",
    "MAX_SHARED_LIMIT_USD",
    "REDIS_ERRORS",
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
