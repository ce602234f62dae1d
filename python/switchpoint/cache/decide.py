"""Whether a semantic neighbour asks the same thing as the query: the one place that decides.

One cosine threshold cannot tell a paraphrase from a near miss. Reworded questions embed further
apart than near misses do ("cancel my subscription" sits closer to "pause my subscription" than to
"how do I stop paying for this plan for good?"), and how close a paraphrase lands depends on the
domain and the language, so a threshold tuned on one set of questions is either unsafe or useless
on another (docs/cache.md, "Choosing a hit"). What does carry over is the neighbourhood: a
paraphrase is much nearer to its own question than to any other question in the cache, a near
miss is about as near to two of them. So a neighbour is served when:

1. its similarity reaches the floor (`cache.semantic.threshold`, or the request's own threshold);
2. it stands out from its nearest rival by at least `cache.semantic.margin`: the rival is the most
   similar other candidate that is not the same question as it (two entries at least
   `same_question` similar to each other are copies of one question, which happens when a
   paraphrase missed and was stored, and must not stop each other from being served);
3. the guard (switchpoint.cache.guard) finds no number, date, name or negation that differs.

The store applies the rule (switchpoint.cache.store); the evaluation (benches/cache_eval.py)
applies the same functions to its data sets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Vector = npt.NDArray[np.float32]

# What a rival's similarity is taken to be when every candidate is a copy of the chosen one and
# the search found all there is: nothing else in the partitions resembles the query.
NO_RIVAL = -1.0


@dataclass(frozen=True, slots=True)
class Candidate:
    """A neighbour the search found: its similarity to the query and its own vector."""

    similarity: float
    vector: Vector


@dataclass(frozen=True, slots=True)
class SemanticRule:
    threshold: float
    margin: float
    same_question: float

    def reaches_floor(self, similarity: float) -> bool:
        return similarity >= self.threshold

    def stands_out(self, similarity: float, rival: float) -> bool:
        # A margin of 0 turns the test off: the floor alone decides, as a plain threshold would.
        return self.margin <= 0 or similarity - rival >= self.margin


def rival_similarity(
    candidates: Sequence[Candidate], chosen: int, *, unseen_bound: float, same_question: float
) -> float:
    """The similarity to the query of the nearest candidate that asks something else than
    `candidates[chosen]` (candidates come most similar first). When every candidate is a copy of
    the chosen one, a rival the search did not return can be no nearer than `unseen_bound`: the
    last similarity it returned, or NO_RIVAL when it returned everything there was."""
    own = candidates[chosen].vector
    for position, candidate in enumerate(candidates):
        if position != chosen and float(np.dot(own, candidate.vector)) < same_question:
            return candidate.similarity
    return unseen_bound


def servable(
    candidates: Sequence[Candidate], rule: SemanticRule, *, unseen_bound: float
) -> list[int]:
    """Positions of the candidates that reach the floor and stand out from their rival, most
    similar first; the guard (asynchronous for long texts, so the store runs it) checks them in
    this order and the first it agrees with is served."""
    passing: list[int] = []
    for position, candidate in enumerate(candidates):
        if not rule.reaches_floor(candidate.similarity):
            break
        rival = rival_similarity(
            candidates, position, unseen_bound=unseen_bound, same_question=rule.same_question
        )
        if rule.stands_out(candidate.similarity, rival):
            passing.append(position)
    return passing
