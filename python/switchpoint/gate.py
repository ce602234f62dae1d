"""The token gate: rate limits and budgets over the Rust limiter and ledger.

Config rules (`limits`, `budgets`) name a scope by `match`: a fixed value ("tenant: acme") applies
the rule to that value only; "*" gives every distinct value its own instance ("tenant: '*'" is one
budget per tenant). Instances are created in Rust the first time a request needs them and keep their
accounting for the life of the process. Every call reserves before it goes out and settles or
releases after; `Reservation` makes the release unconditional (errors, timeouts, cancellation).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

from switchpoint._native import Gate, GateDenied
from switchpoint.config import BudgetConfig, Config, LimitConfig, ModelConfig, ScopeKey
from switchpoint.errors import QuotaExceededError
from switchpoint.registry import Registry
from switchpoint.routing import Decision
from switchpoint.routing.strategies import StrategyShift
from switchpoint.shared import SharedQuota

Scope = tuple[tuple[ScopeKey, str], ...]


@dataclass(frozen=True, slots=True)
class RequestScope:
    """The request attributes rules can match on, besides the model and provider."""

    tenant: str
    stage: str

    def values(self, model: ModelConfig | None) -> dict[ScopeKey, str]:
        values: dict[ScopeKey, str] = {"tenant": self.tenant, "stage": self.stage}
        if model is not None:
            values["model"] = model.name
            values["provider"] = model.provider
        return values


@dataclass(frozen=True, slots=True)
class BudgetInstance:
    rule: BudgetConfig
    scope: Scope
    gate_id: int


def _instance_scope(match: dict[ScopeKey, str], values: dict[ScopeKey, str]) -> Scope | None:
    """The instance a rule selects for these values, or None when the rule does not apply."""
    scope: list[tuple[ScopeKey, str]] = []
    for key, wanted in sorted(match.items()):
        actual = values.get(key)
        if actual is None:
            return None
        if wanted not in ("*", actual):
            return None
        scope.append((key, actual))
    return tuple(scope)


def _describe(scope: Scope) -> str:
    return ",".join(f"{k}={v}" for k, v in scope)


class Reservation:
    """One attempt's hold on the gate. Settle it with real usage; leaving the `with` block
    releases whatever was not settled, so errors, timeouts and cancellation never leak quota."""

    __slots__ = ("_clock", "_gate", "_id")

    def __init__(
        self, gate: Gate | None, reservation_id: int | None, clock: Callable[[], float]
    ) -> None:
        self._gate = gate
        self._id = reservation_id
        self._clock = clock

    def settle(self, tokens: int, cost_usd: float) -> None:
        if self._gate is not None and self._id is not None:
            reservation, self._id = self._id, None
            self._gate.settle(reservation, tokens, cost_usd, self._clock())

    def release(self) -> None:
        if self._gate is not None and self._id is not None:
            reservation, self._id = self._id, None
            self._gate.release(reservation, self._clock())

    def __enter__(self) -> Reservation:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


class TokenGate:
    """Maps requests to rule instances and asks the Rust gate; one per config load."""

    def __init__(
        self,
        config: Config,
        gate: Gate | None = None,
        *,
        shared: SharedQuota | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.gate = gate or Gate()
        self._clock = clock
        self._limits = config.limits
        self._budgets = config.budgets
        self._limit_ids: dict[tuple[int, Scope], int] = {}
        self._budget_instances: dict[tuple[int, Scope], BudgetInstance] = {}
        # (tenant, stage, model) -> ids; the rule walk runs once per distinct key.
        self._ids: dict[tuple[str, str, str], tuple[list[int], list[int]]] = {}
        self._limit_overrides: dict[str, float] = {}
        self.shared = shared

    @property
    def enabled(self) -> bool:
        return bool(self._limits or self._budgets)

    def now(self) -> float:
        return self._clock()

    # -- rule instances -----------------------------------------------------------------------

    def _limit_id(self, index: int, rule: LimitConfig, scope: Scope) -> int:
        key = (index, scope)
        found = self._limit_ids.get(key)
        if found is None:
            name = f"{rule.name}[{_describe(scope)}]" if scope else rule.name
            found = self.gate.add_rate_limit(
                name, rpm=rule.rpm, tpm=rule.tpm, concurrency=rule.concurrency
            )
            self._limit_ids[key] = found
        return found

    def _budget(self, index: int, rule: BudgetConfig, scope: Scope) -> BudgetInstance:
        key = (index, scope)
        found = self._budget_instances.get(key)
        if found is None:
            name = f"{rule.name}[{_describe(scope)}]" if scope else rule.name
            limit = self._limit_overrides.get(self._override_key(rule.name, scope))
            if limit is None:
                limit = self._limit_overrides.get(rule.name, rule.limit_usd)
            gate_id = self.gate.add_budget(name, limit_usd=limit, window=rule.window)
            found = BudgetInstance(rule, scope, gate_id)
            self._budget_instances[key] = found
            if self.shared is not None:
                self.shared.register_budget(gate_id, name=name, window=rule.window)
        return found

    def ids_for(self, scope: RequestScope, model: ModelConfig) -> tuple[list[int], list[int]]:
        key = (scope.tenant, scope.stage, model.name)
        cached = self._ids.get(key)
        if cached is not None:
            return cached
        values = scope.values(model)
        limit_ids = []
        for i, rule in enumerate(self._limits):
            rule_scope = _instance_scope(dict(rule.match), values)
            if rule_scope is not None:
                limit_ids.append(self._limit_id(i, rule, rule_scope))
        budget_ids = []
        for i, budget in enumerate(self._budgets):
            rule_scope = _instance_scope(dict(budget.match), values)
            if rule_scope is not None:
                budget_ids.append(self._budget(i, budget, rule_scope).gate_id)
        self._ids[key] = (limit_ids, budget_ids)
        return limit_ids, budget_ids

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
        if (
            kind == "budget"
            and self.shared is not None
            and self._within_limits(budget_ids, cost_usd)
        ):
            # Only this replica's lease is short; reserve() tops it up from Redis first.
            return None
        return QuotaExceededError(kind, name, retry_after_s)

    def _within_limits(self, budget_ids: list[int], cost_usd: float) -> bool:
        now = self._clock()
        for budget_id in budget_ids:
            limit, spent, reserved, _, _ = self.gate.budget_state(budget_id, now)
            if spent + reserved + cost_usd > limit:
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
            model = registry.models[candidate.index]
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
        return replace(decision, candidates=tuple(kept), reasons=(*decision.reasons, *reasons))

    async def reserve(
        self, scope: RequestScope, model: ModelConfig, tokens: int, cost_usd: float
    ) -> Reservation:
        """Hold quota for one attempt. Raises QuotaExceededError when a rule refuses."""
        limit_ids, budget_ids = self.ids_for(scope, model)
        if not limit_ids and not budget_ids:
            return Reservation(None, None, self._clock)
        try:
            reservation = self.gate.reserve(limit_ids, budget_ids, tokens, cost_usd, self._clock())
        except GateDenied as denied:
            if not (denied.kind == "budget" and await self._topped_up(budget_ids, cost_usd)):
                raise QuotaExceededError(denied.kind, denied.name, denied.retry_after_s) from None
            try:
                reservation = self.gate.reserve(
                    limit_ids, budget_ids, tokens, cost_usd, self._clock()
                )
            except GateDenied as again:
                raise QuotaExceededError(again.kind, again.name, again.retry_after_s) from None
        return Reservation(self.gate, reservation, self._clock)

    async def _topped_up(self, budget_ids: list[int], cost_usd: float) -> bool:
        """Lease more shared budget for a call the local lease could not cover."""
        if self.shared is None:
            return False
        results = [await self.shared.top_up(budget_id, cost_usd) for budget_id in budget_ids]
        return any(results)

    def pressure(self, scope: RequestScope) -> StrategyShift | None:
        """The strategy shift of the first budget of this tenant/stage past its pressure share."""
        values = scope.values(None)
        for i, budget in enumerate(self._budgets):
            pressure = budget.pressure
            if pressure is None:
                continue
            rule_scope = _instance_scope(dict(budget.match), values)
            if rule_scope is None:
                continue
            instance = self._budget(i, budget, rule_scope)
            limit, spent, reserved, _, _ = self.gate.budget_state(instance.gate_id, self._clock())
            share = (spent + reserved) / limit if limit > 0 else 1.0
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
        return f"{name}[{_describe(scope)}]"

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
