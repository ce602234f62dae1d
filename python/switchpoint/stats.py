"""Per-model counters for GetStats. Latency percentiles live in the Rust tracker; this keeps the
plain counts, which are cheap enough in Python and need no lock under a single event loop."""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass(slots=True)
class ModelCounters:
    requests: int = 0
    errors: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0


class StatsBook:
    """Counters keyed by model name, so they survive config reloads like the latency history."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self._models: dict[str, ModelCounters] = {}

    def _counters(self, model: str) -> ModelCounters:
        counters = self._models.get(model)
        if counters is None:
            counters = self._models[model] = ModelCounters()
        return counters

    def record_success(
        self, model: str, input_tokens: int, output_tokens: int, cost_usd: float
    ) -> None:
        counters = self._counters(model)
        counters.requests += 1
        counters.input_tokens += input_tokens
        counters.output_tokens += output_tokens
        counters.cost_usd += cost_usd

    def record_error(
        self, model: str, input_tokens: int = 0, output_tokens: int = 0, cost_usd: float = 0.0
    ) -> None:
        # A failed attempt can still have consumed tokens (a stream that died mid-answer).
        counters = self._counters(model)
        counters.requests += 1
        counters.errors += 1
        counters.input_tokens += input_tokens
        counters.output_tokens += output_tokens
        counters.cost_usd += cost_usd

    def record_tokens(
        self, model: str, input_tokens: int, output_tokens: int, cost_usd: float
    ) -> None:
        """Tokens a failed attempt consumed anyway (a stream that died after producing some)."""
        counters = self._counters(model)
        counters.input_tokens += input_tokens
        counters.output_tokens += output_tokens
        counters.cost_usd += cost_usd

    def get(self, model: str) -> ModelCounters:
        return self._models.get(model) or ModelCounters()

    def uptime_s(self) -> float:
        return time.monotonic() - self.started
