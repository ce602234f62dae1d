"""The token gate: rate limits and budgets over the Rust limiter and ledger.

Config rules (`limits`, `budgets`) name a scope by `match`: a fixed value ("tenant: acme") applies
the rule to that value only; "*" gives every distinct value its own instance ("tenant: '*'" is one
budget per tenant). Which instances a request selects is the core's `RuleBook`'s to decide, and it
makes them the first time a request needs them; how many live at once and when an idle one is
freed is `quota.instances`' to decide (`asking` registers what the book made, and makes room when
it runs out). Every call reserves before it goes out and settles or releases after;
`scopes.Reservation` makes the release unconditional (errors, timeouts, cancellation).

With shared state (`shared`), each budget instance and each rate-limit instance with rpm or tpm
is registered with the lease manager as it is created. A refusal only for want of this replica's
lease ("budget" with the limit not reached, "rpm-lease", "tpm-lease") tops the lease up from Redis
and reserves again, once per kind; routing judges against the limits themselves, so such a model
stays eligible. Concurrency limits stay per replica. A shared budget's limit is the one Redis holds
(switchpoint.quota.shared.limits).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TypeVar, cast

from switchpoint._native import Gate, RuleBook, describe_scope
from switchpoint.config import Config, ModelConfig
from switchpoint.errors import GateDenied, NoRoom, QuotaExceededError
from switchpoint.quota.instances import Instance, Kind, ScopeTable
from switchpoint.quota.labels import Labels
from switchpoint.quota.scopes import (
    BudgetInstance,
    RequestScope,
    Reservation,
    Scope,
)
from switchpoint.quota.shared import EVERY_INSTANCE, LEASE_KINDS, SharedQuota

T = TypeVar("T")

# A request needs at most one instance per rule; each round of `make_room` frees a tenth of the
# cap, so a few rounds always suffice unless nothing can be freed (which raises).
_ROOM_ROUNDS = 8


class TokenGate:
    """The config's rules (`RuleBook`, which matches requests to rule instances in Rust) over the
    Rust gate, with the instances' lifecycle (`ScopeTable`), shared state and reservations; one
    per config load."""

    def __init__(
        self,
        config: Config,
        gate: Gate | None = None,
        *,
        shared: SharedQuota | None = None,
        clock: Callable[[], float] = time.time,
        key_tenants: frozenset[str] = frozenset(),
    ) -> None:
        self.gate = gate or Gate()
        self._clock = clock
        self._limits = config.limits
        self._budgets = config.budgets
        state = config.server.state
        self.book = RuleBook(
            self.gate,
            limits=config.limits,
            budgets=config.budgets,
            max_scopes=state.max_scopes,
            # Answers are per (tenant, stage, model): the cap on scopes, for each model.
            max_answers=state.max_scopes * max(len(config.models), 1),
        )
        self._enabled = not self.book.empty
        self.shared = shared
        self._state_config = state
        # Replaced by the previous gate's table on a reload (`carry_over`).
        self.scopes = ScopeTable(self.gate, state, shared=shared, clock=clock)
        # The tenants and stages metrics and usage stats keep apart.
        self.labels = Labels.of(config, key_tenants)

    @property
    def enabled(self) -> bool:
        return self._enabled

    def now(self) -> float:
        return self._clock()

    # -- rule instances -----------------------------------------------------------------------

    def asking(self, ask: Callable[[], T]) -> T:
        """`ask()`, a call into the Rust router or rule book that may make rule instances: room is
        made when it runs out (`NoRoom`: idle instances freed, or `QuotaExceededError` "scopes"),
        and what it made is registered, whatever the call's outcome."""
        if not self._enabled:
            return ask()
        try:
            return ask()
        except NoRoom:
            try:
                for _ in range(_ROOM_ROUNDS):
                    self._make_room()
                    try:
                        return ask()
                    except NoRoom:
                        continue
                raise
            finally:
                self.scopes.unpin()  # what the rounds pinned, whether or not more was made
        finally:
            self._settle_made()

    async def asking_async(self, ask: Callable[[], Awaitable[T]]) -> T:
        """`asking`, for work run off the loop (a large prompt's decision)."""
        if not self._enabled:
            return await ask()
        try:
            return await ask()
        except NoRoom:
            try:
                for _ in range(_ROOM_ROUNDS):
                    self._make_room()
                    try:
                        return await ask()
                    except NoRoom:
                        continue
                raise
            finally:
                self.scopes.unpin()  # what the rounds pinned, whether or not more was made
        finally:
            self._settle_made()

    def _make_room(self) -> None:
        """Frees idle instances (or raises QuotaExceededError "scopes"); the ones the book made for
        this answer are registered first, so they are kept."""
        self._register_created()
        self.scopes.make_room()

    def _settle_made(self) -> None:
        if self.book.has_created:
            self._register_created()
            self.scopes.unpin()

    def _register_created(self) -> None:
        """The instances the book made: into the table (capped, freed when idle), and in shared
        mode to the lease manager."""
        now = self._clock()
        for made in self.book.take_created():
            if made.kind == "limit":
                limit = self._limits[made.rule]
                self.scopes.add(
                    Instance("limit", made.gate_id, made.name, [self], now, limit.rpm, limit.tpm)
                )
                if self.shared is not None and (limit.rpm is not None or limit.tpm is not None):
                    self.shared.register_rate_limit(
                        made.gate_id, name=made.name, rpm=limit.rpm, tpm=limit.tpm
                    )
                continue
            budget = self._budgets[made.rule]
            self.scopes.add(Instance("budget", made.gate_id, made.name, [self], now))
            if self.shared is not None:
                self.shared.register_budget(
                    made.gate_id,
                    name=made.name,
                    window=budget.window,
                    budget=budget.name,
                    scope=made.scope_name,
                    config_limit_usd=budget.limit_usd,
                )

    def ids_for(self, scope: RequestScope, model: ModelConfig) -> tuple[list[int], list[int]]:
        """The (rate limit, budget) instance ids that apply to `model` for this scope."""
        ids = self.asking(
            lambda: self.book.ids_for(scope.tenant, scope.stage, model.name, model.provider)
        )
        return ids.limits, ids.budgets

    def forget_instance(self, instance: Instance) -> None:
        """`ScopeTable` is about to free `instance`: no answer of the book may name its id."""
        self.book.forget(instance.kind, instance.gate_id)

    def expire_idle(self) -> int:
        """Frees the rule instances idle past `server.state.idle_expiry_s` (see `ScopeTable`)."""
        return self.scopes.expire_idle()

    # -- the request path ---------------------------------------------------------------------

    def refusal(
        self, scope: RequestScope, model: ModelConfig, tokens: int, cost_usd: float
    ) -> QuotaExceededError | None:
        """Why routing would leave `model` out now (its rules' own limits; a short lease is
        topped up by the reserve), without reserving anything."""
        denied = self.asking(
            lambda: self.book.refusal(
                scope.tenant, scope.stage, model.name, model.provider, tokens, cost_usd, self.now()
            )
        )
        if denied is None:
            return None
        return QuotaExceededError(denied.kind, denied.name, denied.retry_after_s)

    def _limit_name(self, limit_id: int) -> str | None:
        instance = self.scopes.get("limit", limit_id)
        return None if instance is None else instance.name

    def _refusal(
        self, kind: str, name: str, retry_after_s: float, limit_ids: list[int]
    ) -> QuotaExceededError:
        """The error for a reserve's denial. A lease denial is reported as the RPM or TPM limit it
        is (clients need not know about leases), waiting for the next minute if the shared pool is
        known to be spent for this one."""
        unit = LEASE_KINDS.get(kind)
        if unit is None or self.shared is None:
            return QuotaExceededError(kind, name, retry_after_s)
        for limit_id in limit_ids:
            if self._limit_name(limit_id) == name:
                pool_wait = self.shared.rate_retry_after_s(limit_id)
                if pool_wait is not None:
                    retry_after_s = max(retry_after_s, pool_wait)
        return QuotaExceededError(unit, name, retry_after_s)

    async def reserve(
        self, scope: RequestScope, model: ModelConfig, tokens: int, cost_usd: float
    ) -> Reservation:
        """Hold quota for one attempt. Raises QuotaExceededError when a rule refuses."""
        if not self._enabled:
            return Reservation(None, None, self._clock)
        book = self.book
        tenant, stage, name, provider = scope.tenant, scope.stage, model.name, model.provider
        # Each kind of lease (budget, rpm, tpm) is topped up at most once: the reserve after a
        # top-up may be refused by another rule's lease, but never loops on the same one.
        topped_up: set[str] = set()
        while True:
            try:
                reservation = self.asking(
                    lambda: book.reserve(
                        tenant, stage, name, provider, tokens, cost_usd, self._clock()
                    )
                )
            except GateDenied as denied:
                kind = denied.kind
                limit_ids, budget_ids = self.ids_for(scope, model)
                if kind in topped_up or not await self._topped_up(
                    denied, limit_ids, budget_ids, tokens=tokens, cost_usd=cost_usd
                ):
                    raise self._refusal(
                        kind, denied.name, denied.retry_after_s, limit_ids
                    ) from None
                topped_up.add(kind)
                continue
            if reservation is None:
                return Reservation(None, None, self._clock)
            return Reservation(self.gate, reservation, self._clock)

    async def _topped_up(
        self,
        denied: GateDenied,
        limit_ids: list[int],
        budget_ids: list[int],
        *,
        tokens: int,
        cost_usd: float,
    ) -> bool:
        """Lease more for a call the local lease could not cover; False if that cannot help."""
        kind, name = denied.kind, denied.name
        if self.shared is None:
            return False
        if kind == "budget":
            # Checked before each: an earlier top-up's await may have let an instance be freed.
            results = [
                await self.shared.top_up(budget_id, cost_usd)
                for budget_id in budget_ids
                if self.shared.shares_budget(budget_id)
            ]
            return any(results)
        if kind in LEASE_KINDS:
            for limit_id in limit_ids:
                if self._limit_name(limit_id) == name:
                    return await self.shared.top_up_rate(limit_id, tokens)
        return False

    # -- admin --------------------------------------------------------------------------------

    def budget_instances(self) -> Iterable[BudgetInstance]:
        return [
            BudgetInstance(self._budgets[booked.rule], _scope(booked.scope), booked.gate_id)
            for booked in self.book.budget_instances()
        ]

    def set_budget_limit(
        self, name: str, limit_usd: float, scope: Sequence[tuple[str, str]]
    ) -> int:
        """Change a budget's limit, for live and later instances; returns how many live instances
        changed."""
        return self.book.set_budget_limit(name, limit_usd, list(scope))

    async def change_budget_limit(
        self, name: str, limit_usd: float, scope: Sequence[tuple[str, str]]
    ) -> int:
        """Admin SetBudget: `set_budget_limit`, and for a shared budget Redis first (raising
        REDIS_ERRORS when unreachable, and then nothing changed), then a sync round so that the
        pools of this replica's instances hold the new limit at once. Other replicas follow at
        their next round."""
        if self.shared is None:
            return self.set_budget_limit(name, limit_usd, scope)
        await self.shared.set_limit(
            name, describe_scope(sorted(scope)) or EVERY_INSTANCE, limit_usd
        )
        changed = self.set_budget_limit(name, limit_usd, scope)
        await self.shared.sync()
        return changed

    # -- config reload ------------------------------------------------------------------------

    def carry_over(self, previous: TokenGate) -> None:
        """Adopt `previous`'s rule instances whose rule is unchanged, after a config reload (this
        gate built over the same Rust gate): their spend, reservations in flight and rate state
        survive the reload; every other instance starts fresh when a request first needs it.

        A budget instance is kept when a budget of the same name and window still selects its
        scope; its limit becomes the new config's, unless an admin override (kept too) set it.
        Shared budgets follow Redis instead: a changed config limit is a setting, written to
        Redis for every instance (replacing earlier overrides) and applied here at once.
        A rate-limit instance is kept when a limit of the same name with the same rpm, tpm and
        concurrency still selects its scope (`RuleBook.adopt`). Call it before this gate serves
        any request.
        """
        if previous.gate is not self.gate:
            raise ValueError("carry_over: both gates must share one Rust Gate")
        changed = self._shared_limits_changed(previous)
        # One table per Rust gate: every instance, whichever config's gate made it, stays capped.
        self.scopes = previous.scopes
        self.scopes.configure(self._state_config)
        for kind, gate_id in self.book.adopt(
            previous.book, sorted(changed), self.shared is not None
        ):
            self._adopt(kind, gate_id, previous)

    def _shared_limits_changed(self, previous: TokenGate) -> set[str]:
        """The shared budgets whose configured limit a reload from `previous` changes, each
        handed to the lease manager to write to Redis."""
        if self.shared is None:
            return set()
        limits = {rule.name: rule.limit_usd for rule in self._budgets}
        changed = set()
        for old in previous._budgets:
            limit = limits.get(old.name)
            if limit is not None and limit != old.limit_usd:
                changed.add(old.name)
                self.shared.config_limit_changed(old.name, limit)
        return changed

    def _adopt(self, kind: Kind, gate_id: int, previous: TokenGate) -> None:
        """Shares an instance of `previous` (still serving its calls in flight): both forget it
        when it is freed. Gates older than `previous` have drained by now."""
        instance = self.scopes.get(kind, gate_id)
        if instance is not None:
            instance.owners = [previous, self]


def _scope(pairs: Sequence[tuple[str, str]]) -> Scope:
    # The book's keys are the config's scope keys.
    return cast(Scope, tuple(pairs))
