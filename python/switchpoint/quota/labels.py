"""Which tenant and stage values metrics and usage stats keep apart.

Tenant is asserted by the caller, so every distinct value would otherwise be a Prometheus label
set, a `RouteTally` entry and a `StatsBook` key kept for the life of the process. Only the values
the config knows keep their own label; any other value is recorded as `OTHER`. The empty value
(no tenant, no stage) is always its own.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from switchpoint.config import BudgetConfig, Config, LimitConfig, ScopeKey

# The label of every tenant or stage value the config does not name.
OTHER: Final = "other"


def known_tenants(config: Config, key_tenants: frozenset[str] = frozenset()) -> frozenset[str]:
    """The tenants the config names (the fixed `tenant` values of limits' and budgets' `match`)
    and those its API keys speak for (`key_tenants`, loaded with the keys). The one place that
    decides which tenants are labelled as themselves."""
    return frozenset(_matched(config, "tenant")) | key_tenants


def known_stages(config: Config) -> frozenset[str]:
    """The stages of `routing.stages`, and the fixed `stage` values rules match."""
    return frozenset(config.routing.stages) | frozenset(_matched(config, "stage"))


def _matched(config: Config, key: ScopeKey) -> Iterable[str]:
    rules: list[LimitConfig | BudgetConfig] = [*config.limits, *config.budgets]
    for rule in rules:
        value = rule.match.get(key)
        if value is not None and value != "*":
            yield str(value)


@dataclass(frozen=True, slots=True)
class Labels:
    """The tenant and stage values that keep their own label."""

    tenants: frozenset[str] = frozenset()
    stages: frozenset[str] = frozenset()
    # False: every value is its own label (a book or sink no config has set labels for yet).
    bounded: bool = False

    @classmethod
    def of(cls, config: Config, key_tenants: frozenset[str] = frozenset()) -> Labels:
        return cls(known_tenants(config, key_tenants), known_stages(config), bounded=True)

    def tenant(self, value: str) -> str:
        if not self.bounded or not value or value in self.tenants:
            return value
        return OTHER

    def stage(self, value: str) -> str:
        if not self.bounded or not value or value in self.stages:
            return value
        return OTHER

    def knows(self, scope: Iterable[tuple[str, str]]) -> bool:
        """Whether every tenant and stage value in a rule instance's scope is known."""
        for key, value in scope:
            if key == "tenant" and self.tenant(value) != value:
                return False
            if key == "stage" and self.stage(value) != value:
                return False
        return True
