"""Strategies are weight presets over (cost, latency, quality); this decides which one applies."""

from __future__ import annotations

from dataclasses import dataclass

from switchpoint.config import BUILTIN_STRATEGIES, Config
from switchpoint.errors import InvalidRequestError
from switchpoint.request import RoutingOptions

CUSTOM = "custom"


@dataclass(frozen=True, slots=True)
class ResolvedStrategy:
    name: str
    weights: tuple[float, float, float]
    # True when the caller chose (weights or a strategy name); auto routing then leaves it alone.
    explicit: bool
    # Why budget pressure replaced the strategy; empty when it did not.
    shifted: str = ""


@dataclass(frozen=True, slots=True)
class StrategyShift:
    """Budget pressure: requests that would use one of `applies_to` use `strategy` instead."""

    applies_to: tuple[str, ...]
    strategy: str
    reason: str


def resolve_strategy(
    config: Config,
    routing: RoutingOptions,
    fallback_name: str,
    shift: StrategyShift | None = None,
) -> ResolvedStrategy:
    """Custom weights win, then the request's strategy name, then `fallback_name`; a named
    strategy under budget pressure becomes the pressure's strategy."""
    resolved = _resolve(config, routing, fallback_name)
    if shift is None or resolved.name not in shift.applies_to:
        return resolved
    weights = config.strategy_weights(shift.strategy)
    # Config validation guarantees a pressure strategy resolves.
    assert weights is not None
    return ResolvedStrategy(shift.strategy, weights, resolved.explicit, shift.reason)


def _resolve(config: Config, routing: RoutingOptions, fallback_name: str) -> ResolvedStrategy:
    if routing.weights is not None:
        return ResolvedStrategy(CUSTOM, routing.weights, explicit=True)
    if routing.strategy:
        weights = config.strategy_weights(routing.strategy)
        if weights is None:
            known = ", ".join(sorted({*BUILTIN_STRATEGIES, *config.routing.strategies}))
            raise InvalidRequestError(
                "routing.strategy", f"unknown strategy '{routing.strategy}' (known: {known})"
            )
        return ResolvedStrategy(routing.strategy, weights, explicit=True)
    weights = config.strategy_weights(fallback_name)
    # Config validation guarantees every configured strategy name resolves.
    assert weights is not None
    return ResolvedStrategy(fallback_name, weights, explicit=False)
