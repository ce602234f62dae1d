"""What a routing decision carries: the choice, the ranked candidates with their scores, the level
that decided and the reasons; and what budget pressure asks of the next one."""

from __future__ import annotations

from enum import IntEnum
from typing import NamedTuple

from switchpoint.errors import QuotaExceededError
from switchpoint.v1 import router_pb2 as pb


class Level(IntEnum):
    """switchpoint.v1.DecisionLevel, whose values these are; the Rust router checks when it is
    built that the core numbers and names its levels the same."""

    OVERRIDE = pb.DECISION_LEVEL_OVERRIDE
    STAGE = pb.DECISION_LEVEL_STAGE
    AUTO = pb.DECISION_LEVEL_AUTO
    FALLBACK = pb.DECISION_LEVEL_FALLBACK


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
