"""Strategies are weight presets over (cost, latency, quality); this decides which one applies."""

from __future__ import annotations

from typing import NamedTuple

from switchpoint.config import BUILTIN_STRATEGIES, Config
from switchpoint.errors import InvalidRequestError
from switchpoint.request import RoutingOptions

CUSTOM = "custom"


class ResolvedStrategy(NamedTuple):
    name: str
    weights: tuple[float, float, float]
    # True when the caller chose (weights or a strategy name); auto routing then leaves it alone.
    explicit: bool
    # Why budget pressure replaced the strategy; empty when it did not.
    shifted: str = ""


class StrategyShift(NamedTuple):
    """Budget pressure: requests that would use one of `applies_to` use `strategy` instead."""

    applies_to: tuple[str, ...]
    strategy: str
    reason: str


class Strategies:
    """Every strategy name one config knows (built-in and configured), resolved once at load:
    a request that names no strategy then costs a dict lookup, not a config walk."""

    def __init__(self, config: Config) -> None:
        configured = {name: s.as_tuple() for name, s in config.routing.strategies.items()}
        weights = {**BUILTIN_STRATEGIES, **configured}
        self._chosen = {
            name: ResolvedStrategy(name, w, explicit=True) for name, w in weights.items()
        }
        self._implied = {
            name: ResolvedStrategy(name, w, explicit=False) for name, w in weights.items()
        }

    def resolve(
        self, routing: RoutingOptions, fallback_name: str, shift: StrategyShift | None = None
    ) -> ResolvedStrategy:
        """Custom weights win, then the request's strategy name, then `fallback_name`; a named
        strategy under budget pressure becomes the pressure's strategy."""
        resolved = self._resolve(routing, fallback_name)
        if shift is None or resolved.name not in shift.applies_to:
            return resolved
        # Config validation guarantees a pressure strategy resolves.
        weights = self._implied[shift.strategy].weights
        return ResolvedStrategy(shift.strategy, weights, resolved.explicit, shift.reason)

    def _resolve(self, routing: RoutingOptions, fallback_name: str) -> ResolvedStrategy:
        if routing.weights is not None:
            return ResolvedStrategy(CUSTOM, routing.weights, explicit=True)
        if routing.strategy:
            chosen = self._chosen.get(routing.strategy)
            if chosen is None:
                known = ", ".join(sorted(self._chosen))
                raise InvalidRequestError(
                    "routing.strategy", f"unknown strategy '{routing.strategy}' (known: {known})"
                )
            return chosen
        # Config validation guarantees every configured strategy name resolves.
        return self._implied[fallback_name]
