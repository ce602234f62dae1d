"""The quality predictor's config section (`routing.predictor:` in the YAML).

Off by default: with it on, every routed request is embedded (a few milliseconds on a worker
thread, docs/benchmarks.md) and the scoring's quality term becomes this request's prediction.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

PositiveInt = Annotated[int, Field(ge=1)]
Positive = Annotated[float, Field(gt=0)]


class ExplorationConfig(BaseModel):
    """Now and then a model other than the best-scored one serves a request, so the predictor
    learns how it does (route/explore.rs in the core): epsilon-greedy with the probability of
    each choice in the decision and the request log."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # The share of requests that explore; 0 turns it off.
    rate: Annotated[float, Field(ge=0, le=1)] = 0.0
    # Exploring may choose a model estimated to cost at most this many times the best one.
    max_cost_ratio: Annotated[float, Field(ge=1)] = 2.0
    # Where it applies (auto and stage decisions): these strategies or stages; all when both are
    # empty.
    strategies: list[str] = Field(default_factory=list)
    stages: list[str] = Field(default_factory=list)


def check_exploration(
    exploration: ExplorationConfig,
    *,
    knows_strategy: Callable[[str], bool],
    stages: Collection[str],
) -> list[str]:
    """Every strategy and stage it names must exist: `path: message` per one that does not."""
    errors = [
        f"routing.exploration.strategies[{j}]: unknown strategy '{name}'"
        for j, name in enumerate(exploration.strategies)
        if not knows_strategy(name)
    ]
    errors.extend(
        f"routing.exploration.stages[{j}]: unknown stage '{name}'"
        for j, name in enumerate(exploration.stages)
        if name not in stages
    )
    return errors


MIN_SIMILARITY: dict[str, float] = {"use": 0.3, "use-tokens": 0.8}


class PredictorConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = False
    # How prompts are compared: `use`, USE multilingual (the cache's local model; 1.6-4 ms a
    # prompt), or `use-tokens`, the mean of its token embeddings (~0.1 ms; sorts less well:
    # docs/routing.md, "Predicted quality: how well it sorts").
    embedder: Literal["use", "use-tokens"] = "use"
    # JSONL files of labelled outcomes, read at start and on every reload.
    outcomes: list[Path] = Field(default_factory=list)
    # Where the outcomes and their embeddings are kept across restarts (a file, written on
    # graceful stop and every snapshot_interval_s); None keeps them in memory only, and a restart
    # re-embeds the outcome files and forgets feedback.
    store: Path | None = None
    snapshot_interval_s: Positive = 300.0
    # Similar prompts read per prediction; below min_similarity (cosine) a prompt is not similar.
    neighbours: Annotated[int, Field(ge=1, le=1024)] = 64
    # Unset: the embedder's own (MIN_SIMILARITY): unrelated prompts sit near 0.1 under `use`,
    # near 0.3-0.6 under `use-tokens` (questions share their wording).
    min_similarity: Annotated[float, Field(ge=-1, le=1)] | None = None
    # The configured quality counts as this many outcomes of full weight: with little evidence
    # the prediction stays near the prior, with much it follows the outcomes.
    prior_weight: Annotated[float, Field(ge=0)] = 4.0
    # An outcome's weight halves every half_life_days (by its time: the file's modification time
    # for outcome files, the feedback's arrival for Feedback and hooks).
    half_life_days: Positive = 30.0
    # Outcomes held; past it the oldest are dropped.
    max_outcomes: PositiveInt = 100_000
    # How long, and how many, request ids a Feedback call may name.
    feedback_window_s: Positive = 3600.0
    feedback_requests: PositiveInt = 10_000

    @property
    def similarity_floor(self) -> float:
        if self.min_similarity is not None:
            return self.min_similarity
        return MIN_SIMILARITY[self.embedder]
