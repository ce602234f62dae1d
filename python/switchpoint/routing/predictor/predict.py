"""A model's quality for one request, from the scores of similar prompts.

For each model: the similar prompts' scores for it, weighted by similarity (to the fourth power,
so the nearest count most) and by age (halving every `half_life_days`), blended with the model's
configured quality as if that were `prior_weight` outcomes of full weight:

    quality = (prior * prior_weight + sum(w_i * score_i)) / (prior_weight + sum(w_i))

A model no similar prompt has a score for keeps its prior; a new model starts there. What
routing gains is the difference between models on the same neighbours: comparing each model's
record on the prompts nearest this one is the similarity-weighted ranking of RouteLLM, over any
number of models, and is what sorts prompts by whether the cheap model gets them right
(docs/routing.md, "Predicted quality"; `switchpoint eval`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import numpy as np

from switchpoint._native import PredictedQuality
from switchpoint.routing.predictor.config import PredictorConfig
from switchpoint.routing.predictor.store import OutcomeStore, Vectors

SIMILARITY_POWER: Final = 4
SECONDS_PER_DAY: Final = 86_400.0


@dataclass(frozen=True, slots=True)
class Weighing:
    neighbours: int
    min_similarity: float
    prior_weight: float
    half_life_s: float

    @classmethod
    def of(cls, config: PredictorConfig) -> Weighing:
        return cls(
            config.neighbours,
            config.min_similarity,
            config.prior_weight,
            config.half_life_days * SECONDS_PER_DAY,
        )


def predict(
    store: OutcomeStore,
    query: Vectors,
    priors: Mapping[str, float],
    weighing: Weighing,
    now_s: float,
) -> dict[str, PredictedQuality]:
    """Each model of `priors` (name -> configured quality) as this query's neighbours see it."""
    found = store.nearest(query, weighing.neighbours)
    close = found.similarity >= weighing.min_similarity
    rows, similarity = found.rows[close], found.similarity[close].astype(np.float64)
    predicted: dict[str, PredictedQuality] = {}
    if len(rows) == 0:
        for model, prior in priors.items():
            predicted[model] = PredictedQuality(quality=prior, evidence=0.0, similar=0, ok=0)
        return predicted
    nearness = np.maximum(similarity, 0.0) ** SIMILARITY_POWER
    scores, times = store.scores[rows], store.times[rows]
    for model, prior in priors.items():
        column = store.column_of(model)
        if column is None:
            predicted[model] = PredictedQuality(quality=prior, evidence=0.0, similar=0, ok=0)
            continue
        score = scores[:, column].astype(np.float64)
        scored = ~np.isnan(score)
        age_s = np.maximum(now_s - times[scored, column], 0.0)
        weight = nearness[scored] * np.exp2(-age_s / weighing.half_life_s)
        evidence = float(weight.sum())
        total = weighing.prior_weight + evidence
        quality = (
            (prior * weighing.prior_weight + float(weight @ score[scored])) / total
            if total > 0
            else prior
        )
        predicted[model] = PredictedQuality(
            quality=min(max(quality, 0.0), 1.0),
            evidence=evidence,
            similar=int(scored.sum()),
            ok=int((score[scored] >= 0.5).sum()),
        )
    return predicted
