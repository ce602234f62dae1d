"""Shared budgets' limits: held in Redis beside the spend, so every replica follows one limit.

Each window's pool holds the limit its grants are measured against (store.py). A replica offers
a limit with every lease: the latest one set at run time for the instance, as read from the
budget's limits hash once each sync round, or else its own config's. The pool takes
the first offer and afterwards only a later setting, so:

- replicas whose configs disagree follow whichever config created the window, and each logs the
  disagreement once per instance and window;
- Admin SetBudget writes the limits hash (for every instance or one scope) and leases at once for
  the instances this replica holds; every other replica offers it at its next sync round, so
  within one `sync_interval_s` every replica grants, and caps its Rust ledger, by it;
- a config reload that changes a budget's limit is a setting like SetBudget's, for every
  instance; it is written at the next sync round, and retried each round until Redis takes it;
- a new window starts from the latest setting (or, with none, the first replica's config).

The Rust ledger's limit is set to the pool's after each lease: that is what GetBudgets and
GetStats show, and what refuses a call locally before any lease is asked for.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

from switchpoint._native import BudgetState
from switchpoint.quota.shared.store import NANOS_PER_USD, BudgetLeaseReply, QuotaStore, nanos_to_usd

_log = logging.getLogger(__name__)

# Limits travel as nano-USD through Lua's doubles, exact up to 2^53: about $9M per window.
MAX_SHARED_LIMIT_USD = 2**53 / NANOS_PER_USD
EVERY_INSTANCE = "*"


class LimitPort(Protocol):
    """The part of `switchpoint._native.Gate` that sets a budget's limit."""

    def set_budget_limit(self, budget: int, limit_usd: float, /) -> None: ...

    def budget_state(self, budget: int, now: float, /) -> BudgetState: ...


@dataclass(frozen=True, slots=True)
class LimitOffer:
    """A limit in nano-USD and its order: 0 from a config, n > 0 the n-th set at run time."""

    nanos: int
    seq: int


def limit_nanos(usd: float) -> int:
    return round(min(usd, MAX_SHARED_LIMIT_USD) * NANOS_PER_USD)


@dataclass(slots=True)
class _Instance:
    budget: str  # the config name
    scope: str  # "tenant=acme", "" for a budget without `match`
    name: str  # the instance's name, as logged
    config_nanos: int
    # The window whose disagreement with this replica's config was logged.
    noted_window_s: float | None = None


class SharedLimits:
    """The limits of one replica's shared budget instances (by Rust gate budget id)."""

    def __init__(self, ledger: LimitPort) -> None:
        self._ledger = ledger
        self._instances: dict[int, _Instance] = {}
        # Budget name -> its limits hash as last read: scope ("*" or e.g. "tenant=acme") -> offer.
        self._settings: dict[str, dict[str, LimitOffer]] = {}
        # Budget name -> a reloaded config's limit not yet written to Redis.
        self._unwritten: dict[str, int] = {}
        self._stale = True

    def register(
        self, budget_id: int, *, budget: str, scope: str, name: str, config_usd: float
    ) -> None:
        self._instances[budget_id] = _Instance(budget, scope, name, limit_nanos(config_usd))

    def forget(self, budget_id: int) -> None:
        """The gate freed this instance; a later one for the same scope registers anew."""
        self._instances.pop(budget_id, None)

    def offer(self, budget_id: int) -> LimitOffer:
        """What to offer the instance's pool: the latest setting that applies, else the config."""
        instance = self._instances[budget_id]
        settings = self._settings.get(instance.budget, {})
        found = [
            offer
            for scope in (EVERY_INSTANCE, instance.scope)
            if (offer := settings.get(scope)) is not None
        ]
        if not found:
            return LimitOffer(instance.config_nanos, 0)
        return max(found, key=lambda offer: offer.seq)

    async def set(self, store: QuotaStore, budget: str, scope: str, limit_usd: float) -> None:
        """Writes a limit set at run time for every instance (`scope` "*") or one; raises what
        Redis raises, and then nothing changed."""
        nanos = limit_nanos(limit_usd)
        seq = await store.set_limit(budget, scope, nanos)
        self._remember(budget, scope, LimitOffer(nanos, seq))

    def config_changed(self, budget: str, limit_usd: float) -> None:
        """A reload changed `budget`'s configured limit: offered from now on where nothing was
        set at run time, and written to Redis as a setting at the next round."""
        nanos = limit_nanos(limit_usd)
        for instance in self._instances.values():
            if instance.budget == budget:
                instance.config_nanos = nanos
        self._unwritten[budget] = nanos

    def read_next_lease(self) -> None:
        """A sync round begins: the next lease reads the settings afresh first."""
        self._stale = True

    async def refresh(self, store: QuotaStore) -> None:
        """Once a round, before its first lease (after that lease's reports, so that they go
        first): writes the reloaded limits still unwritten, then reads every budget's settings.
        Raises what Redis raises; what was not written is kept, and read next time."""
        if not self._stale:
            return
        for budget, nanos in list(self._unwritten.items()):
            seq = await store.set_limit(budget, EVERY_INSTANCE, nanos)
            if self._unwritten.get(budget) == nanos:
                del self._unwritten[budget]
            self._remember(budget, EVERY_INSTANCE, LimitOffer(nanos, seq))
        budgets = {instance.budget for instance in self._instances.values()}
        hashes = await store.read_limits(sorted(budgets))
        self._settings = {budget: _settings(fields) for budget, fields in hashes.items()}
        self._stale = False

    def follow(
        self, budget_id: int, reply: BudgetLeaseReply, window_start_s: float, now: float
    ) -> None:
        """Sets the Rust ledger's limit to the pool's after a lease, and logs once per window a
        pool limit that differs from this replica's config."""
        instance = self._instances[budget_id]
        limit, limit_seq = reply.limit, reply.limit_seq
        if instance.budget in self._unwritten:
            return  # a reloaded limit waits to be written: Redis still holds the one it replaces
        usd = nanos_to_usd(limit)
        current = self._ledger.budget_state(budget_id, now).limit_usd
        if limit_nanos(current) != limit:
            self._ledger.set_budget_limit(budget_id, usd)
        if limit == instance.config_nanos or instance.noted_window_s == window_start_s:
            return
        instance.noted_window_s = window_start_s
        if limit_seq == 0:
            _log.warning(
                "shared state: budget %r: Redis holds a limit of $%.9g for the window from %d, "
                "written from another replica's config; this replica's config says $%.9g. "
                "Following Redis: make the configs agree, or set the limit with Admin SetBudget",
                instance.name,
                usd,
                window_start_s,
                nanos_to_usd(instance.config_nanos),
            )
        else:
            _log.info(
                "shared state: budget %r: following the limit of $%.9g set at run time (this "
                "replica's config says $%.9g), for the window from %d",
                instance.name,
                usd,
                nanos_to_usd(instance.config_nanos),
                window_start_s,
            )

    def _remember(self, budget: str, scope: str, offer: LimitOffer) -> None:
        settings = self._settings.setdefault(budget, {})
        known = settings.get(scope)
        if known is None or known.seq < offer.seq:
            settings[scope] = offer


def _settings(fields: dict[str, int]) -> dict[str, LimitOffer]:
    """A limits hash's fields ("limit:{scope}", "seq:{scope}") as offers by scope."""
    settings: dict[str, LimitOffer] = {}
    for field, nanos in fields.items():
        if field.startswith("limit:"):
            scope = field.removeprefix("limit:")
            settings[scope] = LimitOffer(nanos, fields.get(f"seq:{scope}", 0))
    return settings
