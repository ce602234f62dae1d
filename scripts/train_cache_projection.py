"""Train the semantic cache's paraphrase projection (switchpoint.cache.projection).

One 512 x 512 matrix W, applied to USE multilingual's unit vectors and re-normalised, trained so
that each question lands nearer its own paraphrase than anything else in its batch (InfoNCE,
temperature 0.05, Adam), with a penalty pulling W towards the identity so the space moves only as
far as the data asks. Batches are of two kinds:

- QQP paraphrase pairs (../shared/data/semantic-cache), only the clusters of the tuning half
  (benches/cache_eval.py reports on the other half); each batch adds the three nearest other
  origins of every query as hard negatives, and other questions of the query's own duplicate
  cluster are masked out (they are right answers too, not negatives);
- groups of near-miss questions with one paraphrase each (benches/data/paraphrases/train/*.jsonl),
  several whole groups per batch, so siblings are each other's negatives.

The training groups cover domains the evaluation sets do not (benches/data/paraphrases/README.md),
so the figures docs/cache.md reports are on domains the projection never saw.

    .venv/bin/python scripts/train_cache_projection.py            # writes the package's file
    .venv/bin/python scripts/train_cache_projection.py --out x.npz

The vectors are cached in benches/results (keyed by the texts), so a re-run only trains (~1 min).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import numpy.typing as npt

from benches.cache_eval import embed_all, use_encoder
from benches.cache_rules import PARAPHRASES, LookupSet, paraphrase_set, qqp_set
from switchpoint.cache.projection import PROJECTION_FILE

TRAIN_DIR = PARAPHRASES / "train"
NAME = "paraphrase-1"
SEED = 17
EPOCHS = 3
BATCH = 256
TEMPERATURE = 0.05
LEARNING_RATE = 1e-3
TOWARDS_IDENTITY = 1e-3
HARD_NEGATIVES = 3
GROUP_BATCHES_PER_EPOCH = 40

Matrix = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Pairs:
    """Queries, their candidate answers, and which answers count as right for which query."""

    queries: Matrix
    answers: Matrix
    target: npt.NDArray[np.int64]  # answers row of each query's own question
    cluster: npt.NDArray[np.int64]  # per answer row: answers in one cluster answer each other


def _unit(rows: Matrix) -> tuple[Matrix, Matrix]:
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / norms, norms


def _loss_gradient(
    weights: Matrix,
    queries: Matrix,
    answers: Matrix,
    target: npt.NDArray[np.int64],
    masked: npt.NDArray[np.bool_],
) -> tuple[Matrix, float]:
    """InfoNCE over `answers` for each query, other right answers masked; dL/dW."""
    zq, nq = _unit(queries @ weights)
    za, na = _unit(answers @ weights)
    logits = zq @ za.T / TEMPERATURE
    logits[masked] = -1e9
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    rows = np.arange(len(queries))
    loss = float(-np.log(probs[rows, target] + 1e-12).mean())
    probs[rows, target] -= 1.0
    probs /= len(queries)
    dzq = probs @ za / TEMPERATURE
    dza = probs.T @ zq / TEMPERATURE
    dyq = (dzq - zq * (zq * dzq).sum(axis=1, keepdims=True)) / nq
    dya = (dza - za * (za * dza).sum(axis=1, keepdims=True)) / na
    return queries.T @ dyq + answers.T @ dya, loss


def _pairs(lookups: LookupSet) -> Pairs:
    vectors, _ = embed_all("use-multilingual-v3", use_encoder, lookups.questions + lookups.queries)
    count = len(lookups.questions)
    return Pairs(
        queries=vectors[count:].astype(np.float64),
        answers=vectors[:count].astype(np.float64),
        target=lookups.truth,
        cluster=lookups.cluster,
    )


def qqp_pairs() -> tuple[Pairs, npt.NDArray[np.int64]]:
    """The tuning half of QQP, and each of its queries' nearest other origins."""
    pairs = _pairs(qqp_set(half=0))
    index = faiss.IndexFlatIP(pairs.answers.shape[1])
    index.add(np.ascontiguousarray(pairs.answers, dtype=np.float32))
    query_rows = np.ascontiguousarray(pairs.queries, dtype=np.float32)
    _, nearest = index.search(query_rows, HARD_NEGATIVES + 1)
    return pairs, nearest


def group_pairs() -> tuple[Pairs, list[npt.NDArray[np.int64]]]:
    lookups = paraphrase_set("train", sorted(TRAIN_DIR.glob("*.jsonl")))
    groups: dict[str, list[int]] = {}
    for i, name in enumerate(lookups.group):
        groups.setdefault(name, []).append(i)
    return _pairs(lookups), [np.array(members) for members in groups.values()]


def batches(
    rng: np.random.Generator,
    qqp: Pairs,
    nearest: npt.NDArray[np.int64],
    own: Pairs,
    groups: list[npt.NDArray[np.int64]],
) -> Iterator[tuple[Matrix, Matrix, npt.NDArray[np.int64], npt.NDArray[np.bool_]]]:
    plan: list[tuple[str, npt.NDArray[np.int64]]] = []
    order = rng.permutation(len(qqp.queries))
    plan += [("qqp", order[s : s + BATCH]) for s in range(0, len(order), BATCH)]
    per_batch = max(1, BATCH // 3)
    for _ in range(GROUP_BATCHES_PER_EPOCH):
        chosen = rng.choice(len(groups), min(len(groups), per_batch), replace=False)
        plan.append(("groups", np.concatenate([groups[g] for g in chosen])))
    for position in rng.permutation(len(plan)):
        kind, members = plan[position]
        source = qqp if kind == "qqp" else own
        wanted = source.target[members]
        if kind == "qqp":
            wanted_and_hard = np.concatenate([wanted, nearest[members].reshape(-1)])
            candidates = np.unique(wanted_and_hard)
        else:
            candidates = wanted
        target = np.searchsorted(candidates, wanted) if kind == "qqp" else np.arange(len(members))
        same = source.cluster[candidates][None, :] == source.cluster[wanted][:, None]
        same[np.arange(len(members)), target] = False
        yield source.queries[members], source.answers[candidates], target, same


def train() -> Matrix:
    rng = np.random.default_rng(SEED)
    qqp, nearest = qqp_pairs()
    own, groups = group_pairs()
    weights = np.eye(qqp.queries.shape[1])
    first, second = np.zeros_like(weights), np.zeros_like(weights)
    step = 0
    for epoch in range(EPOCHS):
        losses = []
        for queries, answers, target, masked in batches(rng, qqp, nearest, own, groups):
            gradient, loss = _loss_gradient(weights, queries, answers, target, masked)
            gradient += TOWARDS_IDENTITY * (weights - np.eye(len(weights)))
            step += 1
            first = 0.9 * first + 0.1 * gradient
            second = 0.999 * second + 0.001 * gradient * gradient
            weights -= (
                LEARNING_RATE
                * (first / (1 - 0.9**step))
                / (np.sqrt(second / (1 - 0.999**step)) + 1e-8)
            )
            losses.append(loss)
        print(f"epoch {epoch + 1}: mean loss {np.mean(losses):.4f}", flush=True)
    return weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=PROJECTION_FILE)
    args = parser.parse_args()
    weights = train()
    np.savez_compressed(args.out, weights=weights.astype(np.float32), name=np.array(NAME))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
