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


def resolve_strategy(
    config: Config, routing: RoutingOptions, fallback_name: str
) -> ResolvedStrategy:
    """Custom weights win, then the request's strategy name, then `fallback_name`."""
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
