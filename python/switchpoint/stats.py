"""Usage counters for GetStats and the cost telemetry: requests, errors, tokens and USD per
(tenant, stage, model). Latency percentiles live in the Rust tracker; these plain counts are cheap
in Python and need no lock under a single event loop.

Tenants are the caller's to name: a tenant or stage the config does not know is counted under
`other` (`switchpoint.quota.labels`), so the keys stay as many as the config names."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from switchpoint.quota.labels import Labels


@dataclass(slots=True)
class ModelCounters:
    requests: int = 0
    errors: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0

    def add(self, other: ModelCounters) -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.cost_usd += other.cost_usd


@dataclass(frozen=True, slots=True)
class UsageKey:
    tenant: str
    stage: str
    model: str


class StatsBook:
    """Counters keyed by tenant, stage and model name, so they survive config reloads like the
    latency history does."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self._counters: dict[UsageKey, ModelCounters] = {}
        self._labels = Labels()

    def set_labels(self, labels: Labels) -> None:
        """Tenants and stages outside `labels` are counted as `other` from now on."""
        self._labels = labels

    def _at(self, key: UsageKey) -> ModelCounters:
        labels = self._labels
        tenant, stage = labels.tenant(key.tenant), labels.stage(key.stage)
        if tenant is not key.tenant or stage is not key.stage:
            key = UsageKey(tenant, stage, key.model)
        counters = self._counters.get(key)
        if counters is None:
            counters = self._counters[key] = ModelCounters()
        return counters

    def record_success(
        self, key: UsageKey, input_tokens: int, output_tokens: int, cost_usd: float
    ) -> None:
        counters = self._at(key)
        counters.requests += 1
        counters.input_tokens += input_tokens
        counters.output_tokens += output_tokens
        counters.cost_usd += cost_usd

    def record_error(self, key: UsageKey) -> None:
        counters = self._at(key)
        counters.requests += 1
        counters.errors += 1

    def record_tokens(
        self, key: UsageKey, input_tokens: int, output_tokens: int, cost_usd: float
    ) -> None:
        """Tokens a failed attempt consumed anyway (a stream that died after producing some)."""
        counters = self._at(key)
        counters.input_tokens += input_tokens
        counters.output_tokens += output_tokens
        counters.cost_usd += cost_usd

    def total(
        self, model: str, *, tenant: str | None = None, stage: str | None = None
    ) -> ModelCounters:
        """The counters of `model`, summed over the tenants and stages that match the filters. A
        filter the config does not know reads the `other` counters, where its calls were counted
        (with every other unknown tenant's)."""
        if tenant is not None:
            tenant = self._labels.tenant(tenant)
        if stage is not None:
            stage = self._labels.stage(stage)
        total = ModelCounters()
        for key, counters in self._counters.items():
            if key.model != model:
                continue
            if tenant is not None and key.tenant != tenant:
                continue
            if stage is not None and key.stage != stage:
                continue
            total.add(counters)
        return total

    def items(self) -> Iterable[tuple[UsageKey, ModelCounters]]:
        return list(self._counters.items())

    def uptime_s(self) -> float:
        return time.monotonic() - self.started
