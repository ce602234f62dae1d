"""What a routing decision carries: the choice, the ranked candidates with their scores, the level
that decided and the reasons; and what budget pressure asks of the next one."""

from __future__ import annotations

from enum import IntEnum
from typing import NamedTuple

from switchpoint.errors import QuotaExceededError


class Level(IntEnum):
    """Values match switchpoint.v1.DecisionLevel."""

    OVERRIDE = 1
    STAGE = 2
    AUTO = 3
    FALLBACK = 4


class ScoredModel(NamedTuple):
    table_index: int  # the model's index in the registry and the scoring table
    name: str
    provider: str
    score: float
    norm_cost: float
    norm_latency: float
    quality: float
    estimated_cost_usd: float
    estimated_latency_ms: float
    latency_observed: bool


class StrategyShift(NamedTuple):
    """Budget pressure: requests that would use one of `applies_to` use `strategy` instead."""

    applies_to: tuple[str, ...]
    strategy: str
    reason: str


class Decision(NamedTuple):
    candidates: tuple[ScoredModel, ...]
    level: Level
    reasons: tuple[str, ...]
    strategy: str
    weights: tuple[float, float, float]
    input_tokens: int
    output_tokens: int
    task_class: str = ""
    complexity: float = 0.0
    # Models to try after the candidates when every candidate fails (not scored, in chain order).
    fallback: tuple[str, ...] = ()
    # A Chat the gate refuses may still be answered from the cache; without a hit this is raised.
    refusal: QuotaExceededError | None = None

    @property
    def chosen(self) -> ScoredModel:
        return self.candidates[0]
