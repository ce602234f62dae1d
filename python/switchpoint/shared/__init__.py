"""Budgets shared by several replicas through quota leases from Redis.

`SharedQuota` (quota.py) is the lease manager a server creates when `shared_state.redis_url` is
set; store.py is the Redis side (key layout, Lua scripts), ledger.py the local bookkeeping.
"""

from switchpoint.config import Policy, SharedStateConfig
from switchpoint.shared.ledger import BudgetLedgerPort
from switchpoint.shared.quota import BudgetLeaseStatus, SharedQuota, SharedQuotaStatus
from switchpoint.shared.store import QuotaStore

__all__ = [
    "BudgetLeaseStatus",
    "BudgetLedgerPort",
    "Policy",
    "QuotaStore",
    "SharedQuota",
    "SharedQuotaStatus",
    "SharedStateConfig",
]
