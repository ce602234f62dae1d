"""The predictor's pieces on their own: the outcome store (rows, scores by model, the search,
capacity, files, saving and loading) and the blend of neighbours with the prior."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest

from switchpoint.providers.base import ChatMessage
from switchpoint.routing.predictor.outcomes import HEAD_CHARS, TAIL_CHARS, prompt_text
from switchpoint.routing.predictor.predict import Weighing, predict
from switchpoint.routing.predictor.store import OutcomeStore

DIM = 16
NOW = 1_800_000_000.0
WEIGHING = Weighing(neighbours=8, min_similarity=0.5, prior_weight=2.0, half_life_s=86_400.0)


def unit(*values: float) -> np.ndarray:
    row = np.zeros((1, DIM), np.float32)
    row[0, : len(values)] = values
    faiss.normalize_L2(row)
    return row


def test_rows_hold_scores_by_model_and_are_found_nearest_first() -> None:
    store = OutcomeStore(DIM, max_outcomes=100)
    store.add(np.vstack([unit(1, 0), unit(0, 1)]), [{"a": 1.0, "b": 0.0}, {"b": 1.0}], NOW)
    assert (len(store), store.outcomes, store.models) == (2, 3, ["a", "b"])
    found = store.nearest(unit(1, 0.1)[0], 2)
    assert list(found.rows) == [0, 1]
    assert found.similarity[0] > found.similarity[1]
    assert np.isnan(store.scores[1, store.column_of("a") or 0])


def test_the_blend_weighs_similar_outcomes_against_the_prior() -> None:
    store = OutcomeStore(DIM, max_outcomes=100)
    store.add(np.vstack([unit(1, 0)] * 3), [{"cheap": 1.0, "strong": 0.0}] * 3, NOW)
    store.add(unit(0, 1), [{"cheap": 0.0}], NOW)  # dissimilar: below min_similarity
    predicted = predict(
        store, unit(1, 0)[0], {"cheap": 0.5, "strong": 0.9, "new": 0.7}, WEIGHING, NOW
    )
    # Three outcomes of weight 1 against a prior worth 2: (0.5 * 2 + 3) / 5 and (0.9 * 2) / 5.
    assert predicted["cheap"].quality == pytest.approx(0.8)
    assert predicted["strong"].quality == pytest.approx(0.36)
    assert (predicted["cheap"].similar, predicted["cheap"].ok) == (3, 3)
    assert (predicted["strong"].similar, predicted["strong"].ok) == (3, 0)
    assert predicted["cheap"].evidence == pytest.approx(3.0)
    # A model nothing similar scored keeps its prior.
    assert (predicted["new"].quality, predicted["new"].similar) == (0.7, 0)


def test_old_outcomes_count_less() -> None:
    store = OutcomeStore(DIM, max_outcomes=100)
    store.add(unit(1, 0), [{"cheap": 1.0}], NOW - 86_400.0)  # one half-life old
    predicted = predict(store, unit(1, 0)[0], {"cheap": 0.0}, WEIGHING, NOW)
    assert predicted["cheap"].evidence == pytest.approx(0.5)
    assert predicted["cheap"].quality == pytest.approx(0.5 / 2.5)


def test_past_capacity_the_oldest_rows_go() -> None:
    store = OutcomeStore(DIM, max_outcomes=10)
    for i in range(12):
        store.add(unit(1, i), [{"m": float(i % 2)}], NOW + i)
    assert len(store) == 10
    # The two oldest (written first) went; the graph matches the rows that stayed.
    assert store.times[:, 0].min() == NOW + 2
    assert len(store.nearest(unit(1, 5)[0], 20).rows) == 10


def test_rows_of_dropped_files_go_and_feedback_stays() -> None:
    store = OutcomeStore(DIM, max_outcomes=100)
    first, second = store.file_source("digest-1"), store.file_source("digest-2")
    store.add(unit(1, 0), [{"m": 1.0}], NOW, first)
    store.add(unit(0, 1), [{"m": 0.0}], NOW, second)
    store.add(unit(1, 1), [{"m": 0.5}], NOW)
    store.drop_sources({second})
    assert sorted(store.scores[:, 0].tolist()) == [0.0, 0.5]


def test_a_saved_store_loads_whole_and_refuses_another_embedder(tmp_path: Path) -> None:
    store = OutcomeStore(DIM, max_outcomes=100)
    store.add(np.vstack([unit(1, 0), unit(0, 1)]), [{"a": 1.0}, {"b": 0.25}], NOW, 0)
    store.files.append("digest")
    path = tmp_path / "o.npz"
    store.save(path, embedder="e1")
    loaded = OutcomeStore.load(path, embedder="e1", dim=DIM, max_outcomes=100)
    assert (loaded.models, loaded.files, len(loaded)) == (["a", "b"], ["digest"], 2)
    np.testing.assert_array_equal(loaded.scores, store.scores)
    np.testing.assert_allclose(loaded.vectors, store.vectors)
    assert list(loaded.nearest(unit(0, 1)[0], 1).rows) == [1]
    with pytest.raises(ValueError, match="embedder"):
        OutcomeStore.load(path, embedder="e2", dim=DIM, max_outcomes=100)
    path.write_bytes(b"not a store")
    with pytest.raises(ValueError, match="cannot be read"):
        OutcomeStore.load(path, embedder="e1", dim=DIM, max_outcomes=100)


def test_the_prompt_is_the_last_user_turn_read_at_its_head_and_tail() -> None:
    messages = [
        ChatMessage("system", "Be brief."),
        ChatMessage("user", "first question"),
        ChatMessage("assistant", "an answer"),
        ChatMessage("user", "second question"),
    ]
    assert prompt_text(messages) == "second question"
    assert prompt_text([ChatMessage("system", "only a system turn")]) == "only a system turn"
    long = "h" * HEAD_CHARS + "m" * 5000 + "t" * TAIL_CHARS
    assert prompt_text([ChatMessage("user", long)]) == "h" * HEAD_CHARS + "\n" + "t" * TAIL_CHARS
