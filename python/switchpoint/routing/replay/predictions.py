"""Labelled outcomes replayed through the quality predictor: split, embed, learn, predict.

The predictions are the sidecar's own: the same text the sidecar embeds (`prompt_text`), the same
embedder, an `OutcomeStore` holding the training outcomes and `predict` with the sidecar's
weighing. Only the priors differ: a replay has no configured qualities, so each model's prior is
its mean score on the training prompts. Every training outcome is learnt at one instant, so the
age decay weighs them all alike.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np

from switchpoint.cache.embedders import Embedder
from switchpoint.routing.predictor.outcomes import Outcome
from switchpoint.routing.predictor.predict import Weighing, predict
from switchpoint.routing.predictor.service import EMBED_BATCH
from switchpoint.routing.predictor.store import OutcomeStore, Vectors
from switchpoint.routing.replay.metrics import Floats

# The instant every replayed outcome is learnt and predicted at: no outcome is older than another.
REPLAY_TIME_S: Final = 0.0
RANDOM_SEED: Final = 16


@dataclass(frozen=True, slots=True)
class Prompt:
    """One prompt's outcomes: its text (as the predictor compares it) and a score per model."""

    text: str
    scores: dict[str, float]
    # The whole prompt's length in characters (`text` may be its head and tail only).
    chars: int = 0


def group_by_prompt(outcomes: Iterable[Outcome]) -> list[Prompt]:
    """One Prompt per distinct text, in first-seen order; a later outcome for the same prompt and
    model replaces an earlier one (as a file read by the sidecar does)."""
    grouped: dict[str, dict[str, float]] = {}
    chars: dict[str, int] = {}
    for outcome in outcomes:
        grouped.setdefault(outcome.text, {})[outcome.model] = outcome.score
        chars.setdefault(outcome.text, outcome.chars)
    return [Prompt(text, scores, chars[text]) for text, scores in grouped.items()]


def stable_bucket(key: str, buckets: int) -> int:
    """A bucket in [0, buckets) fixed by `key` alone: the same split on every run and machine."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % buckets


def split_by_hash(
    prompts: Sequence[Prompt], test_percent: int
) -> tuple[list[Prompt], list[Prompt]]:
    """(train, test): a prompt is a test prompt when its text hashes into the first
    `test_percent` of 100 buckets."""
    train: list[Prompt] = []
    test: list[Prompt] = []
    for prompt in prompts:
        (test if stable_bucket(prompt.text, 100) < test_percent else train).append(prompt)
    return train, test


def mean_scores(prompts: Sequence[Prompt], models: Iterable[str]) -> dict[str, float]:
    """Each model's mean score over the prompts that have one (0.0 when none has)."""
    means: dict[str, float] = {}
    for model in models:
        scores = [p.scores[model] for p in prompts if model in p.scores]
        means[model] = float(np.mean(scores)) if scores else 0.0
    return means


def models_of(prompts: Iterable[Prompt]) -> list[str]:
    return sorted({model for prompt in prompts for model in prompt.scores})


def scored_by_all(prompts: Sequence[Prompt], models: Sequence[str]) -> list[Prompt]:
    return [p for p in prompts if all(m in p.scores for m in models)]


def score_column(prompts: Sequence[Prompt], model: str) -> Floats:
    return np.array([p.scores[model] for p in prompts], np.float64)


async def embed_texts(embedder: Embedder, texts: Sequence[str]) -> Vectors:
    """Every text's row, embedded EMBED_BATCH at a time (the sidecar reads outcome files so)."""
    rows = np.empty((len(texts), embedder.dim), np.float32)
    for start in range(0, len(texts), EMBED_BATCH):
        rows[start : start + EMBED_BATCH] = await embedder.embed(texts[start : start + EMBED_BATCH])
    return rows


def outcome_store(vectors: Vectors, prompts: Sequence[Prompt]) -> OutcomeStore:
    store = OutcomeStore(vectors.shape[1], max_outcomes=max(len(prompts), 1))
    if len(prompts):
        store.add(
            vectors,
            [dict(p.scores) for p in prompts],
            REPLAY_TIME_S,
            chars=[p.chars for p in prompts],
        )
    return store


def predicted_qualities(
    store: OutcomeStore,
    queries: Vectors,
    prompts: Sequence[Prompt],
    priors: Mapping[str, float],
    weighing: Weighing,
) -> dict[str, Floats]:
    """Each model's predicted quality for each query row (the prompt of the same index), by the
    sidecar's `predict`; a model it says nothing about keeps its prior."""
    columns = {model: np.full(len(queries), prior, np.float64) for model, prior in priors.items()}
    for row, (query, prompt) in enumerate(zip(queries, prompts, strict=True)):
        predicted = predict(store, query, priors, weighing, REPLAY_TIME_S, chars=prompt.chars)
        for model, quality in predicted.items():
            columns[model][row] = quality.quality
    return columns


def length_scores(prompts: Sequence[Prompt]) -> Floats:
    """The prompt-length baseline: longer prompts go to the strong model first."""
    return np.array([p.chars or len(p.text) for p in prompts], np.float64)


def random_scores(count: int, seed: int = RANDOM_SEED) -> Floats:
    return np.random.default_rng(seed).random(count)
