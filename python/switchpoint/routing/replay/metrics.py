"""RouteLLM's metrics for a two-model router, and the quality/cost curve for several models.

A two-model router gives each prompt a score (higher: more in need of the strong model) and sends
the top share of prompts to the strong model. Sweeping that share from 0 to 100 %:
accuracy = mean score of the model each prompt went to, PGR = (accuracy - weak's) / (strong's -
weak's), APGR = the area under PGR over the strong share (trapezoid), CPT(x) = the strong share at
which PGR first reaches x.

Prompts with equal router scores cannot be told apart, so the curve counts them as sent in a random
order: its points sit where the score changes, and between two points it is the straight line that
is the expectation over those orders. A router that gives every prompt one score (or a random one,
over many prompts) thus gets APGR 0.5, and a coarse score (a few complexity levels) is not credited
with an order it does not have.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Floats = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class PgrCurve:
    """PGR at each strong share (both ascending from 0 to 1 in share)."""

    strong_share: Floats
    pgr: Floats
    weak_accuracy: float
    strong_accuracy: float

    @property
    def apgr(self) -> float:
        return float(np.trapezoid(self.pgr, self.strong_share))

    def cpt(self, target: float) -> float:
        """The smallest strong share at which PGR reaches `target` (interpolated), 1.0 when the
        curve reaches it only at the end."""
        reached = np.flatnonzero(self.pgr >= target)
        if len(reached) == 0:
            return 1.0
        first = int(reached[0])
        if first == 0:
            return float(self.strong_share[0])
        x0, x1 = self.strong_share[first - 1], self.strong_share[first]
        y0, y1 = self.pgr[first - 1], self.pgr[first]
        return float(x0 + (target - y0) / (y1 - y0) * (x1 - x0))


@dataclass(frozen=True, slots=True)
class RouterFigures:
    apgr: float
    cpt50: float
    cpt80: float

    @classmethod
    def of(cls, curve: PgrCurve) -> RouterFigures:
        return cls(curve.apgr, curve.cpt(0.5), curve.cpt(0.8))


def pgr_curve(router_score: npt.ArrayLike, weak: npt.ArrayLike, strong: npt.ArrayLike) -> PgrCurve:
    """The PGR curve of a router giving `router_score` to prompts the weak and strong model
    scored `weak` and `strong` on; ValueError when the strong model is not the better one."""
    score = np.asarray(router_score, np.float64)
    weak_score = np.asarray(weak, np.float64)
    strong_score = np.asarray(strong, np.float64)
    if not score.shape == weak_score.shape == strong_score.shape or score.ndim != 1:
        raise ValueError("router scores, weak and strong scores must be 1-D and of one length")
    if len(score) == 0:
        raise ValueError("no prompts to evaluate")
    if not np.all(np.isfinite(score)):
        raise ValueError("router scores must be finite")
    weak_accuracy, strong_accuracy = float(weak_score.mean()), float(strong_score.mean())
    if strong_accuracy <= weak_accuracy:
        raise ValueError(
            f"the strong model's mean score ({strong_accuracy:.3f}) is not above the weak "
            f"model's ({weak_accuracy:.3f}): there is no gap to recover"
        )
    share, recovered = _recovered(score, strong_score - weak_score)
    return PgrCurve(
        share, recovered / (strong_accuracy - weak_accuracy), weak_accuracy, strong_accuracy
    )


def accuracy_at(
    router_score: npt.ArrayLike, weak: npt.ArrayLike, strong: npt.ArrayLike, shares: Floats
) -> Floats:
    """The mean score when the top `shares` of prompts by `router_score` go to the strong model
    (ties counted as in a random order), whichever model is the better."""
    weak_score = np.asarray(weak, np.float64)
    gain = np.asarray(strong, np.float64) - weak_score
    share, recovered = _recovered(np.asarray(router_score, np.float64), gain)
    return float(weak_score.mean()) + np.interp(np.clip(shares, 0.0, 1.0), share, recovered)


def _recovered(score: Floats, gain: Floats) -> tuple[Floats, Floats]:
    """(strong share, mean gain over the weak model) at each point where the score changes."""
    count = len(score)
    order = np.argsort(-score, kind="stable")
    # Points only where the next prompt has a different score: within a tie the line between
    # the points is the mean over the tie's orders.
    ends = np.flatnonzero(np.diff(score[order]) != 0) + 1
    sent = np.concatenate([[0], ends, [count]])
    recovered = np.concatenate([[0.0], np.cumsum(gain[order])])[sent] / count
    return sent / count, recovered


def router_figures(
    router_score: npt.ArrayLike, weak: npt.ArrayLike, strong: npt.ArrayLike
) -> RouterFigures:
    return RouterFigures.of(pgr_curve(router_score, weak, strong))


@dataclass(frozen=True, slots=True)
class CostQualityPoint:
    quality_weight: float
    cost: float
    quality: float
    shares: dict[str, float]


def cost_quality_curve(
    predicted: Mapping[str, Floats],
    actual: Mapping[str, Floats],
    costs: Mapping[str, float],
    quality_weights: Sequence[float],
) -> list[CostQualityPoint]:
    """For each quality weight w (0: cheapest, 1: best predicted), every prompt goes to the model
    maximising w * predicted quality - (1 - w) * cost / the dearest cost; each point is the mean
    cost and mean actual score of those choices, and each model's share of prompts."""
    models = list(costs)
    dearest = max(costs.values()) or 1.0
    predicted_matrix = np.column_stack([predicted[m] for m in models])
    actual_matrix = np.column_stack([actual[m] for m in models])
    cost_row = np.array([costs[m] for m in models], np.float64)
    rows = np.arange(len(predicted_matrix))
    points = []
    for weight in quality_weights:
        value = weight * predicted_matrix - (1 - weight) * cost_row / dearest
        chosen = np.argmax(value, axis=1)
        shares = {m: float(np.mean(chosen == i)) for i, m in enumerate(models)}
        points.append(
            CostQualityPoint(
                weight,
                float(cost_row[chosen].mean()),
                float(actual_matrix[rows, chosen].mean()),
                shares,
            )
        )
    return points
