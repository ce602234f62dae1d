"""The semantic rule on hand-made vectors: the floor, the rival test, copies of one question."""

from __future__ import annotations

import numpy as np
import pytest

from switchpoint.cache.config import CacheConfig, EmbedderConfig, SemanticConfig
from switchpoint.cache.decide import NO_RIVAL, Candidate, SemanticRule, rival_similarity, servable

RULE = SemanticRule(threshold=0.65, margin=0.10, same_question=0.95)


def unit(*values: float) -> np.ndarray:
    vector = np.array(values, dtype=np.float32)
    return vector / np.linalg.norm(vector)


# Three cached questions: A, A' (a copy of A, cosine 0.995) and B (a near miss of A, cosine 0.6).
A = unit(1.0, 0.0, 0.0)
A_COPY = unit(1.0, 0.1, 0.0)
B = unit(0.6, 0.8, 0.0)


def test_a_neighbour_that_stands_out_from_its_rival_is_served() -> None:
    candidates = [Candidate(0.90, A), Candidate(0.70, B)]
    assert servable(candidates, RULE, unseen_bound=0.5) == [0]


def test_a_neighbour_about_as_near_as_a_rival_is_not_served() -> None:
    candidates = [Candidate(0.80, A), Candidate(0.75, B)]
    assert rival_similarity(candidates, 0, unseen_bound=0.5, same_question=0.95) == 0.75
    assert servable(candidates, RULE, unseen_bound=0.5) == []


def test_copies_of_one_question_are_not_each_others_rivals() -> None:
    candidates = [Candidate(0.90, A), Candidate(0.89, A_COPY), Candidate(0.70, B)]
    assert rival_similarity(candidates, 0, unseen_bound=0.5, same_question=0.95) == 0.70
    assert servable(candidates, RULE, unseen_bound=0.5) == [0, 1]
    # With copies counted as rivals the same lookup would be a miss.
    strict = SemanticRule(threshold=0.65, margin=0.10, same_question=1.0)
    assert servable(candidates, strict, unseen_bound=0.5) == []


def test_an_unseen_rival_is_bounded_by_the_last_candidate_unless_the_search_saw_everything() -> (
    None
):
    copies = [Candidate(0.90, A), Candidate(0.85, A_COPY)]
    assert rival_similarity(copies, 0, unseen_bound=0.85, same_question=0.95) == 0.85
    assert servable(copies, RULE, unseen_bound=0.85) == []
    assert rival_similarity(copies, 0, unseen_bound=NO_RIVAL, same_question=0.95) == NO_RIVAL
    assert servable(copies, RULE, unseen_bound=NO_RIVAL) == [0, 1]


def test_nothing_below_the_floor_is_served_however_alone() -> None:
    assert servable([Candidate(0.64, A)], RULE, unseen_bound=NO_RIVAL) == []
    assert servable([Candidate(0.65, A)], RULE, unseen_bound=NO_RIVAL) == [0]


def test_a_zero_margin_is_a_plain_threshold() -> None:
    plain = SemanticRule(threshold=0.80, margin=0.0, same_question=0.95)
    candidates = [Candidate(0.82, A), Candidate(0.81, B), Candidate(0.79, A_COPY)]
    assert servable(candidates, plain, unseen_bound=0.5) == [0, 1]


def test_the_rival_test_needs_two_candidates_and_projection_belongs_to_the_local_model() -> None:
    with pytest.raises(ValueError, match="candidates"):
        SemanticConfig(candidates=1)
    with pytest.raises(ValueError, match="projection"):
        EmbedderConfig(
            kind="openai", base_url="http://x", model="m", dim=8, projection="paraphrase"
        )
    assert EmbedderConfig(kind="openai", base_url="http://x", model="m", dim=8).projection is None
    defaults = CacheConfig().semantic
    assert (defaults.threshold, defaults.margin, defaults.candidates) == (0.65, 0.10, 8)
