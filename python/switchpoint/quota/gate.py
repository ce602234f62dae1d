"""The token gate: rate limits and budgets over the Rust limiter and ledger.

Config rules (`limits`, `budgets`) name a scope by `match`: a fixed value ("tenant: acme") applies
the rule to that value only; "*" gives every distinct value its own instance ("tenant: '*'" is one
budget per tenant). Instances are created in Rust the first time a request needs them; how many
live at once and when an idle one is freed is `quota.instances`' to decide. Every call reserves
before it goes out and settles or releases after; `scopes.Reservation` makes the release
unconditional (errors, timeouts, cancellation).

With shared state (`shared`), each budget instance and each rate-limit instance with rpm or tpm
is registered with the lease manager as it is created. A refusal only for want of this replica's
lease ("budget" with the limit not reached, "rpm-lease", "tpm-lease") tops the lease up from Redis
and reserves again, once per kind; routing treats such a model as admissible. Concurrency limits
stay per replica. A shared budget's limit is the one Redis holds (switchpoint.quota.shared.limits).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence

from switchpoint._native import Admission, Gate, GateDenied
from switchpoint.config import BudgetConfig, Config, LimitConfig, ModelConfig
from switchpoint.errors import QuotaExceededError
from switchpoint.quota.instances import Instance, Kind, ScopeTable
from switchpoint.quota.labels import Labels
from switchpoint.quota.scopes import (
    BudgetInstance,
    RequestScope,
    Reservation,
    Scope,
    describe_scope,
    instance_scope,
)
from switchpoint.quota.shared import EVERY_INSTANCE, LEASE_KINDS, SharedQuota
from switchpoint.registry import Registry
from switchpoint.routing import Decision
from switchpoint.routing.decision import StrategyShift

# (tenant, stage, model): what `ids_for` answers for.
IdsKey = tuple[str, str, str]


def _named(limit_ids: list[int], budget_ids: list[int]) -> list[tuple[Kind, int]]:
    """The instances an answer of `ids_for` names, as `ScopeTable` keys them."""
    return [*(("limit", i) for i in limit_ids), *(("budget", i) for i in budget_ids)]


class TokenGate:
    """Maps requests to rule instances and asks the Rust gate; one per config load."""

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
        # The instances `ids_for` finds, taught to the Rust router's Route calls (see there).
        self.admission = Admission(self.gate)
        self._clock = clock
        self._limits = config.limits
        self._budgets = config.budgets
        self._enabled = bool(config.limits or config.budgets)
        # The budgets that shift strategies under pressure, looked at on every request.
        self._pressured = [
            (i, b, b.pressure) for i, b in enumerate(config.budgets) if b.pressure is not None
        ]
        # A Route call's admission can be checked by the Rust router (`admission`): no budget
        # shifts strategies and the gate runs on wall-clock time, as the router reads it.
        self.admits_in_rust = not self._pressured and clock is time.time
        self._limit_ids: dict[tuple[int, Scope], int] = {}
        self._limit_names: dict[int, str] = {}
        self._budget_instances: dict[tuple[int, Scope], BudgetInstance] = {}
        # (kind, gate id) -> (rule index, scope) of the instances this gate created or adopted.
        self._owned: dict[tuple[Kind, int], tuple[int, Scope]] = {}
        # (tenant, stage, model) -> ids; the rule walk runs once per distinct key. Tenants are
        # the caller's to name, so the oldest answers are dropped past this many.
        self._ids: dict[IdsKey, tuple[list[int], list[int]]] = {}
        # (kind, gate id) -> the keys of `_ids` whose answer names it: this gate's own, since
        # after a reload two gates may cache the same instance and each must forget it.
        self._users: dict[tuple[Kind, int], set[IdsKey]] = {}
        self._ids_cap = config.server.state.max_scopes * len(config.models)
        self._limit_overrides: dict[str, float] = {}
        self.shared = shared
        self._state_config = config.server.state
        # Replaced by the previous gate's table on a reload (`carry_over`).
        self.scopes = ScopeTable(self.gate, config.server.state, shared=shared, clock=clock)
        # The tenants and stages metrics and usage stats keep apart.
        self.labels = Labels.of(config, key_tenants)

    @property
    def enabled(self) -> bool:
        return self._enabled

    def now(self) -> float:
        return self._clock()

    # -- rule instances -----------------------------------------------------------------------

    def _limit_id(self, index: int, rule: LimitConfig, scope: Scope) -> int:
        key = (index, scope)
        found = self._limit_ids.get(key)
        if found is None:
            name = f"{rule.name}[{describe_scope(scope)}]" if scope else rule.name
            self.scopes.make_room()
            found = self.gate.add_rate_limit(
                name, rpm=rule.rpm, tpm=rule.tpm, concurrency=rule.concurrency
            )
            self._limit_ids[key] = found
            self._limit_names[found] = name
            self._owned[("limit", found)] = key
            self.scopes.add(
                Instance("limit", found, name, [self], self._clock(), rule.rpm, rule.tpm)
            )
            if self.shared is not None and (rule.rpm is not None or rule.tpm is not None):
                self.shared.register_rate_limit(found, name=name, rpm=rule.rpm, tpm=rule.tpm)
        return found

    def _budget(self, index: int, rule: BudgetConfig, scope: Scope) -> BudgetInstance:
        key = (index, scope)
        found = self._budget_instances.get(key)
        if found is None:
            name = f"{rule.name}[{describe_scope(scope)}]" if scope else rule.name
            limit = self._limit_overrides.get(self._override_key(rule.name, scope))
            if limit is None:
                limit = self._limit_overrides.get(rule.name, rule.limit_usd)
            self.scopes.make_room()
            gate_id = self.gate.add_budget(name, limit_usd=limit, window=rule.window)
            found = BudgetInstance(rule, scope, gate_id)
            self._budget_instances[key] = found
            self._owned[("budget", gate_id)] = key
            self.scopes.add(Instance("budget", gate_id, name, [self], self._clock()))
            if self.shared is not None:
                self.shared.register_budget(
                    gate_id,
                    name=name,
                    window=rule.window,
                    budget=rule.name,
                    scope=describe_scope(scope),
                    config_limit_usd=rule.limit_usd,
                )
        return found

    def ids_for(self, scope: RequestScope, model: ModelConfig) -> tuple[list[int], list[int]]:
        key = (scope.tenant, scope.stage, model.name)
        cached = self._ids.get(key)
        if cached is not None:
            return cached
        values = scope.values(model)
        limit_ids = []
        budget_ids = []
        try:
            for i, rule in enumerate(self._limits):
                rule_scope = instance_scope(dict(rule.match), values)
                if rule_scope is not None:
                    limit_ids.append(self._limit_id(i, rule, rule_scope))
            for i, budget in enumerate(self._budgets):
                rule_scope = instance_scope(dict(budget.match), values)
                if rule_scope is not None:
                    budget_ids.append(self._budget(i, budget, rule_scope).gate_id)
        finally:
            self.scopes.unpin()
        self._ids[key] = (limit_ids, budget_ids)
        self.admission.learn(scope.tenant, scope.stage, model.name, limit_ids, budget_ids)
        for named in _named(limit_ids, budget_ids):
            self._users.setdefault(named, set()).add(key)
        if len(self._ids) > self._ids_cap:
            self._drop_ids(next(iter(self._ids)))
        return limit_ids, budget_ids

    def _drop_ids(self, key: IdsKey) -> None:
        """Forgets one cached answer of `ids_for`, here and in the Rust router's admission."""
        found = self._ids.pop(key, None)
        if found is None:
            return
        self.admission.forget(*key)
        for named in _named(*found):
            users = self._users.get(named)
            if users is not None:
                users.discard(key)
                if not users:
                    del self._users[named]

    def forget_instance(self, instance: Instance) -> None:
        """`ScopeTable` is about to free `instance`: no cached answer may name its id."""
        key = self._owned.pop((instance.kind, instance.gate_id), None)
        if key is not None:
            if instance.kind == "limit":
                self._limit_ids.pop(key, None)
                self._limit_names.pop(instance.gate_id, None)
            else:
                self._budget_instances.pop(key, None)
        for users_key in self._users.pop((instance.kind, instance.gate_id), set()):
            self._drop_ids(users_key)

    def expire_idle(self) -> int:
        """Frees the rule instances idle past `server.state.idle_expiry_s` (see `ScopeTable`)."""
        return self.scopes.expire_idle()

    # -- the request path ---------------------------------------------------------------------

    def denial(
        self, scope: RequestScope, model: ModelConfig, tokens: int, cost_usd: float
    ) -> QuotaExceededError | None:
        """Why this model cannot take the request now, without reserving anything."""
        limit_ids, budget_ids = self.ids_for(scope, model)
        if not limit_ids and not budget_ids:
            return None
        now = self._clock()
        denied = self.gate.check(limit_ids, budget_ids, tokens, cost_usd, now)
        if denied is None:
            return None
        kind, name, retry_after_s = denied
        if self.shared is not None:
            # Only this replica's lease is short; reserve() tops it up from Redis first.
            if kind == "budget" and self._within_limits(budget_ids, cost_usd):
                return None
            if kind in LEASE_KINDS and self._rates_within_limits(limit_ids, tokens):
                return None
        return self._refusal(kind, name, retry_after_s, limit_ids)

    def _refusal(
        self, kind: str, name: str, retry_after_s: float, limit_ids: list[int]
    ) -> QuotaExceededError:
        """The error for a denial. A lease denial is reported as the RPM or TPM limit it is
        (clients need not know about leases), waiting for the next minute if the shared pool is
        known to be spent for this one."""
        unit = LEASE_KINDS.get(kind)
        if unit is None or self.shared is None:
            return QuotaExceededError(kind, name, retry_after_s)
        for limit_id in limit_ids:
            if self._limit_names.get(limit_id) == name:
                pool_wait = self.shared.rate_retry_after_s(limit_id)
                if pool_wait is not None:
                    retry_after_s = max(retry_after_s, pool_wait)
        return QuotaExceededError(unit, name, retry_after_s)

    def _rates_within_limits(self, limit_ids: list[int], tokens: int) -> bool:
        assert self.shared is not None
        return all(self.shared.rate_within_limit(limit_id, tokens) for limit_id in limit_ids)

    def _within_limits(self, budget_ids: list[int], cost_usd: float) -> bool:
        now = self._clock()
        for budget_id in budget_ids:
            if not self.gate.budget_state(budget_id, now).fits(cost_usd):
                return False
        return True

    def admissible(self, decision: Decision, scope: RequestScope, registry: Registry) -> Decision:
        """The decision without the candidates a limit or budget refuses right now, with reasons.
        Raises the soonest-clearing refusal when no candidate is left."""
        if not self.enabled:
            return decision
        tokens = decision.input_tokens + decision.output_tokens
        kept = []
        refusals: list[QuotaExceededError] = []
        reasons: list[str] = []
        for candidate in decision.candidates:
            model = registry.models[candidate.table_index]
            denial = self.denial(scope, model, tokens, candidate.estimated_cost_usd)
            if denial is None:
                kept.append(candidate)
            else:
                refusals.append(denial)
                reasons.append(f"{candidate.name} excluded: {denial}")
        if not refusals:
            return decision
        if not kept:
            raise min(refusals, key=lambda d: d.retry_after_s)
        return decision._replace(candidates=tuple(kept), reasons=(*decision.reasons, *reasons))

    async def reserve(
        self, scope: RequestScope, model: ModelConfig, tokens: int, cost_usd: float
    ) -> Reservation:
        """Hold quota for one attempt. Raises QuotaExceededError when a rule refuses."""
        limit_ids, budget_ids = self.ids_for(scope, model)
        if not limit_ids and not budget_ids:
            return Reservation(None, None, self._clock)
        # Each kind of lease (budget, rpm, tpm) is topped up at most once: the reserve after a
        # top-up may be refused by another rule's lease, but never loops on the same one.
        topped_up: set[str] = set()
        while True:
            if topped_up:
                # A top-up awaited Redis: an instance may have been freed meanwhile.
                limit_ids, budget_ids = self.ids_for(scope, model)
            try:
                reservation = self.gate.reserve(
                    limit_ids, budget_ids, tokens, cost_usd, self._clock()
                )
            except GateDenied as denied:
                kind, name = denied.kind, denied.name
                if kind in topped_up or not await self._topped_up(
                    denied, limit_ids, budget_ids, tokens=tokens, cost_usd=cost_usd
                ):
                    raise self._refusal(kind, name, denied.retry_after_s, limit_ids) from None
                topped_up.add(kind)
                continue
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
                if self._limit_names.get(limit_id) == name:
                    return await self.shared.top_up_rate(limit_id, tokens)
        return False

    @property
    def shifts_strategies(self) -> bool:
        """Some budget shifts strategies under pressure (`pressure` is worth asking)."""
        return bool(self._pressured)

    def pressure(self, tenant: str, stage: str) -> StrategyShift | None:
        """The strategy shift of the first budget of this tenant/stage past its pressure share.
        The router asks after validating the request, so an invalid one creates no instance."""
        if not self._pressured:
            return None
        values = RequestScope(tenant, stage).values(None)
        for i, budget, pressure in self._pressured:
            rule_scope = instance_scope(dict(budget.match), values)
            if rule_scope is None:
                continue
            instance = self._budget(i, budget, rule_scope)
            share = self.gate.budget_state(instance.gate_id, self._clock()).share_used
            if share >= pressure.at_share:
                reason = (
                    f"budget '{budget.name}' is {share:.0%} used (>= {pressure.at_share:.0%}): "
                    f"{', '.join(pressure.applies_to)} becomes {pressure.strategy}"
                )
                return StrategyShift(tuple(pressure.applies_to), pressure.strategy, reason)
        return None

    # -- admin --------------------------------------------------------------------------------

    @staticmethod
    def _override_key(name: str, scope: Scope) -> str:
        return f"{name}[{describe_scope(scope)}]"

    def budget_instances(self) -> Iterable[BudgetInstance]:
        return list(self._budget_instances.values())

    def set_budget_limit(
        self, name: str, limit_usd: float, scope: Sequence[tuple[str, str]]
    ) -> int:
        """Change a budget's limit; returns how many live instances changed."""
        wanted = tuple(sorted(scope))
        if wanted:
            self._limit_overrides[self._override_key(name, wanted)] = limit_usd  # type: ignore[arg-type]
        else:
            self._limit_overrides[name] = limit_usd
        changed = 0
        for instance in self._budget_instances.values():
            if instance.rule.name == name and (not wanted or instance.scope == wanted):
                self.gate.set_budget_limit(instance.gate_id, limit_usd)
                changed += 1
        return changed

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
        concurrency still selects its scope. Call it before this gate serves any request.
        """
        if previous.gate is not self.gate:
            raise ValueError("carry_over: both gates must share one Rust Gate")
        budgets = {rule.name: (i, rule) for i, rule in enumerate(self._budgets)}
        changed = self._shared_limits_changed(previous)
        # An override is keyed "name" or "name[scope]"; it outlives the reload with its budget.
        self._limit_overrides = {
            key: limit
            for key, limit in previous._limit_overrides.items()
            if key.split("[", 1)[0] in budgets.keys() - changed
        }
        # One table per Rust gate: every instance, whichever config's gate made it, stays capped.
        self.scopes = previous.scopes
        self.scopes.configure(self._state_config)
        limits = {rule.name: (i, rule) for i, rule in enumerate(self._limits)}
        for (old_index, scope), limit_id in previous._limit_ids.items():
            old = previous._limits[old_index]
            found = limits.get(old.name)
            if found is None:
                continue
            index, rule = found
            same = (rule.rpm, rule.tpm, rule.concurrency) == (old.rpm, old.tpm, old.concurrency)
            if same and instance_scope(dict(rule.match), dict(scope)) == scope:
                self._limit_ids[(index, scope)] = limit_id
                self._limit_names[limit_id] = previous._limit_names[limit_id]
                self._adopt("limit", limit_id, (index, scope), previous)
        now = self._clock()
        for (_, scope), instance in previous._budget_instances.items():
            found_budget = budgets.get(instance.rule.name)
            if found_budget is None:
                continue
            index, budget = found_budget
            if budget.window != instance.rule.window:
                continue
            if instance_scope(dict(budget.match), dict(scope)) != scope:
                continue
            self._budget_instances[(index, scope)] = BudgetInstance(budget, scope, instance.gate_id)
            self._adopt("budget", instance.gate_id, (index, scope), previous)
            if self.shared is not None and budget.name not in changed:
                continue  # its limit is the one Redis holds, which the lease manager follows
            limit = self._limit_overrides.get(self._override_key(budget.name, scope))
            if limit is None:
                limit = self._limit_overrides.get(budget.name, budget.limit_usd)
            if self.gate.budget_state(instance.gate_id, now).limit_usd != limit:
                self.gate.set_budget_limit(instance.gate_id, limit)

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

    def _adopt(self, kind: Kind, gate_id: int, key: tuple[int, Scope], previous: TokenGate) -> None:
        """Shares an instance of `previous` (still serving its calls in flight): both forget it
        when it is freed. Gates older than `previous` have drained by now."""
        self._owned[(kind, gate_id)] = key
        instance = self.scopes.get(kind, gate_id)
        if instance is not None:
            instance.owners = [previous, self]
