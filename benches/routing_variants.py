"""The routers benches/routing_eval.py compares: each turns training prompts (their weak and strong
scores) into a score per test prompt, higher meaning more in need of the strong model.

- `knn_use`: the kept predictor, through the sidecar's own OutcomeStore and `predict`;
- `knn_exact`: the same weighing over an exact (flat) search of any vectors, for the USE variants
  with other settings and for hashed word uni+bigram vectors;
- `clusters`: k-means of the embeddings (faiss.Kmeans), each cluster's mean score per model;
- `difficulty_logistic`: a logistic regression over difficulty features, per model, in numpy;
- `rule_complexity`: the Rust router's rule classifier (a Decision's complexity).

Every learnt variant blends with the model's training mean as the predictor does (prior_weight
outcomes of it), so all compare predicted(strong) - predicted(weak) on the same footing.
"""

from __future__ import annotations

import itertools
import re
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import faiss
import numpy as np
import numpy.typing as npt

from switchpoint.routing.predictor.predict import SIMILARITY_POWER, Weighing
from switchpoint.routing.predictor.store import Vectors
from switchpoint.routing.replay.metrics import Floats
from switchpoint.routing.replay.predictions import Prompt, outcome_store, predicted_qualities

WEAK: Final = "weak"
STRONG: Final = "strong"
HASHED_DIM: Final = 2048
SEED: Final = 16
Indices = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class Fold:
    """The training rows' vectors and scores, and the test rows' vectors."""

    train_vectors: Vectors
    weak: Floats
    strong: Floats
    test_vectors: Vectors
    # The prompts' lengths in characters, training and test rows.
    train_chars: npt.NDArray[np.int64]
    test_chars: npt.NDArray[np.int64]

    @property
    def priors(self) -> dict[str, float]:
        return {WEAK: float(self.weak.mean()), STRONG: float(self.strong.mean())}


def knn_use(fold: Fold, weighing: Weighing) -> Floats:
    """The sidecar's predictor: OutcomeStore (FAISS HNSW) and `predict`."""
    prompts = [
        Prompt(str(row), {WEAK: float(w), STRONG: float(s)}, int(chars))
        for row, (w, s, chars) in enumerate(
            zip(fold.weak, fold.strong, fold.train_chars, strict=True)
        )
    ]
    store = outcome_store(fold.train_vectors, prompts)
    queries = [Prompt(str(row), {}, int(chars)) for row, chars in enumerate(fold.test_chars)]
    predicted = predicted_qualities(store, fold.test_vectors, queries, fold.priors, weighing)
    return predicted[STRONG] - predicted[WEAK]


def knn_exact(fold: Fold, weighing: Weighing) -> Floats:
    """`predict`'s weighing (similarity^4 over the nearest, floor, prior blend) by exact search."""
    index = faiss.IndexFlatIP(fold.train_vectors.shape[1])
    index.add(np.ascontiguousarray(fold.train_vectors))
    similarity, rows = index.search(np.ascontiguousarray(fold.test_vectors), weighing.neighbours)
    found = rows >= 0
    close = found & (similarity >= weighing.min_similarity)
    weight = np.where(close, np.maximum(similarity, 0.0), 0.0).astype(np.float64)
    weight **= SIMILARITY_POWER
    rows = np.where(found, rows, 0)
    evidence = weight.sum(axis=1)
    total = weighing.prior_weight + evidence
    scores: dict[str, Floats] = {}
    for model, column in ((WEAK, fold.weak), (STRONG, fold.strong)):
        learnt = (weight * column[rows]).sum(axis=1)
        scores[model] = (fold.priors[model] * weighing.prior_weight + learnt) / total
    return scores[STRONG] - scores[WEAK]


_WORD = re.compile(r"\w+")


def hashed_word_vectors(texts: Sequence[str], dim: int = HASHED_DIM) -> Vectors:
    """Term counts of lower-cased words and word pairs, hashed (signed) into `dim` columns,
    scaled to unit length: TF vectors without a vocabulary."""
    rows = np.zeros((len(texts), dim), np.float32)
    for row, text in enumerate(texts):
        words = _WORD.findall(text.lower())
        for term in words + [f"{a} {b}" for a, b in itertools.pairwise(words)]:
            code = zlib.crc32(term.encode("utf-8"))
            rows[row, code % dim] += 1.0 if code & 0x80000000 else -1.0
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    normalised: Vectors = np.divide(rows, norms, out=np.zeros_like(rows), where=norms > 0)
    return normalised


def clusters(fold: Fold, count: int, prior_weight: float) -> Floats:
    """k-means over the training embeddings; a test prompt gets its nearest cluster's mean score
    per model, blended with the model's mean as `prior_weight` outcomes."""
    kmeans = faiss.Kmeans(fold.train_vectors.shape[1], count, niter=20, seed=SEED, spherical=True)
    kmeans.train(np.ascontiguousarray(fold.train_vectors))
    _, train_cluster = kmeans.index.search(np.ascontiguousarray(fold.train_vectors), 1)
    _, test_cluster = kmeans.index.search(np.ascontiguousarray(fold.test_vectors), 1)
    members = np.bincount(train_cluster[:, 0], minlength=count).astype(np.float64)
    scores: dict[str, Floats] = {}
    for model, column in ((WEAK, fold.weak), (STRONG, fold.strong)):
        sums = np.bincount(train_cluster[:, 0], weights=column, minlength=count)
        blended = (fold.priors[model] * prior_weight + sums) / (prior_weight + members)
        scores[model] = blended[test_cluster[:, 0]]
    return scores[STRONG] - scores[WEAK]


_OPTION = re.compile(r"^\s*\(?[A-Da-d][.)]\s", re.MULTILINE)
_NUMBER = re.compile(r"\d+(?:[.,]\d+)?")
_MATH = re.compile(r"[=+*/^<>√∑∫π±≤≥÷\u00d7]|\\frac|\\sqrt|\$")
_NEGATION = re.compile(r"\b(?:not|except|false|incorrect|least)\b", re.IGNORECASE)
FEATURES: Final = (
    "log chars",
    "log words",
    "digit share",
    "numbers",
    "math symbols",
    "question marks",
    "options",
    "lines",
    "mean word length",
    "longest option (log chars)",
    "negations",
)


def difficulty_features(texts: Sequence[str]) -> Floats:
    rows = np.zeros((len(texts), len(FEATURES)), np.float64)
    for row, text in enumerate(texts):
        words = text.split()
        option_lines = [line for line in text.splitlines() if _OPTION.match(line)]
        rows[row] = (
            np.log1p(len(text)),
            np.log1p(len(words)),
            sum(c.isdigit() for c in text) / max(len(text), 1),
            len(_NUMBER.findall(text)),
            len(_MATH.findall(text)),
            text.count("?"),
            len(option_lines),
            text.count("\n") + 1,
            float(np.mean([len(w) for w in words])) if words else 0.0,
            np.log1p(max((len(line) for line in option_lines), default=0)),
            len(_NEGATION.findall(text)),
        )
    return rows


def logistic_fit(features: Floats, labels: Floats, l2: float = 1e-2, steps: int = 25) -> Floats:
    """Weights (bias last) of an L2-regularised logistic regression, by Newton's method (the
    features are few, so each step is a small solve)."""
    design = np.hstack([features, np.ones((len(features), 1))])
    weights = np.zeros(design.shape[1])
    penalty = l2 * np.eye(design.shape[1])
    penalty[-1, -1] = 0.0  # the bias is not shrunk
    for _ in range(steps):
        probability = 1.0 / (1.0 + np.exp(-design @ weights))
        gradient = design.T @ (probability - labels) / len(labels) + penalty @ weights
        curvature = (design * (probability * (1 - probability))[:, None]).T @ design
        step = np.linalg.solve(
            curvature / len(labels) + penalty + 1e-9 * np.eye(len(weights)), gradient
        )
        weights -= step
        if np.abs(step).max() < 1e-8:
            break
    return weights


def logistic_predict(weights: Floats, features: Floats) -> Floats:
    design = np.hstack([features, np.ones((len(features), 1))])
    result: Floats = 1.0 / (1.0 + np.exp(-design @ weights))
    return result


def difficulty_logistic(train_features: Floats, fold: Fold, test_features: Floats) -> Floats:
    """P(strong right) - P(weak right), each from a logistic regression over the features
    (standardised on the training rows)."""
    mean, spread = train_features.mean(axis=0), train_features.std(axis=0) + 1e-9
    train, test = (train_features - mean) / spread, (test_features - mean) / spread
    strong = logistic_predict(logistic_fit(train, fold.strong), test)
    weak = logistic_predict(logistic_fit(train, fold.weak), test)
    return strong - weak


def rule_complexity(texts: Sequence[str]) -> Floats:
    """The rule classifier's complexity of each prompt, from the Rust router's decision on a
    four-model test config (the classifier reads only the prompt)."""
    from switchpoint.config import parse_config
    from switchpoint.engine.building import build_engine
    from switchpoint.providers.base import ChatMessage
    from switchpoint.request import ChatInput
    from tests.sidecar_harness import routing_config

    router = build_engine(parse_config(routing_config()), environ={}).engine.router
    now = time.monotonic()
    return np.array(
        [
            router.route(ChatInput([ChatMessage("user", text)]), now=now).complexity
            for text in texts
        ],
        np.float64,
    )
