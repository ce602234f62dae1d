"""A model's quality for one request, from its record on prompts like this one.

Two parts, both learnt from the outcomes. A **trend with length**: per model, the least-squares
slope of score on log(1 + the prompt's characters) over all its outcomes (flat below
MIN_FOR_SLOPE of them), around the model's configured quality: longer prompts are harder for
some models than for others, and this is the one difficulty signal that carried to subjects the
outcomes never covered (docs/routing.md, "Predicted quality: how well it sorts"). Only the slope
is global; the level stays the configured quality, so outcomes of one kind of prompt never move
another's. Then the **neighbours**: how the similar prompts' scores differed from that baseline,
weighted by similarity (to the fourth power, so the nearest count most) and by age (halving every
`half_life_days`), against the baseline as if it were `prior_weight` outcomes:

    baseline(l) = quality_configured + slope * (l - mean length)
    quality = baseline(l) + sum(w_i * (score_i - baseline(l_i))) / (prior_weight + sum(w_i))

Comparing each model's record on the same neighbours is RouteLLM's similarity-weighted ranking,
over any number of models; what routing gains is the difference between models.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from switchpoint._native import PredictedQuality
from switchpoint.routing.predictor.config import PredictorConfig
from switchpoint.routing.predictor.store import OutcomeStore, Vectors

SIMILARITY_POWER: Final = 4
SECONDS_PER_DAY: Final = 86_400.0
# A slope is fitted only from this many outcomes of known length, and shrunk toward flat by this
# much spread of log-lengths: a few outcomes of similar lengths say nothing about a slope.
MIN_FOR_SLOPE: Final = 30
SLOPE_RIDGE: Final = 0.05


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
            config.similarity_floor,
            config.prior_weight,
            config.half_life_days * SECONDS_PER_DAY,
        )


@dataclass(frozen=True, slots=True)
class Baseline:
    """A model's expected score by log-length: `prior + slope * (length - centre)`."""

    prior: float
    slope: float
    centre: float

    @classmethod
    def fitted(cls, sums: npt.NDArray[np.float64], prior: float) -> Baseline:
        n, sum_l, sum_ll, sum_x, sum_xl = (float(v) for v in sums)
        if n < MIN_FOR_SLOPE:
            return cls(prior, 0.0, 0.0)
        centre, mean = sum_l / n, sum_x / n
        spread = max(sum_ll / n - centre * centre, 0.0)
        return cls(prior, (sum_xl / n - centre * mean) / (spread + SLOPE_RIDGE), centre)

    def at(self, length: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """The baseline at each log-length; NaN (unknown) reads as the centre."""
        known = np.where(np.isnan(length), self.centre, length)
        line: npt.NDArray[np.float64] = self.prior + self.slope * (known - self.centre)
        return line


def predict(
    store: OutcomeStore,
    query: Vectors,
    priors: Mapping[str, float],
    weighing: Weighing,
    now_s: float,
    *,
    chars: int | None = None,
) -> dict[str, PredictedQuality]:
    """Each model of `priors` (name -> configured quality) that the outcomes say something
    about for this query (its neighbours, its length: `chars`, unknown when None); a model left
    out keeps its configured quality."""
    found = store.nearest(query, weighing.neighbours)
    close = found.similarity >= weighing.min_similarity
    rows, similarity = found.rows[close], found.similarity[close].astype(np.float64)
    nearness = np.maximum(similarity, 0.0) ** SIMILARITY_POWER
    scores, times = store.scores[rows], store.times[rows]
    lengths = store.lengths[rows].astype(np.float64)
    own = np.array([math.log1p(chars) if chars is not None else math.nan], np.float64)
    predicted: dict[str, PredictedQuality] = {}
    for model, prior in priors.items():
        column = store.column_of(model)
        if column is None:
            continue
        baseline = Baseline.fitted(store.length_fit(column), prior)
        expected = float(baseline.at(own)[0])
        score = scores[:, column].astype(np.float64)
        scored = ~np.isnan(score)
        if not scored.any() and (baseline.slope == 0.0 or chars is None):
            continue
        age_s = np.maximum(now_s - times[scored, column], 0.0)
        weight = nearness[scored] * np.exp2(-age_s / weighing.half_life_s)
        evidence = float(weight.sum())
        surprise = score[scored] - baseline.at(lengths[scored])
        total = weighing.prior_weight + evidence
        quality = expected + (float(weight @ surprise) / total if total > 0 else 0.0)
        predicted[model] = PredictedQuality(
            quality=min(max(quality, 0.0), 1.0),
            evidence=evidence,
            similar=int(scored.sum()),
            ok=int((score[scored] >= 0.5).sum()),
        )
    return predicted
