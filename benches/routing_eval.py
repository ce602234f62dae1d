"""How well routers sort MMLU prompts by whether the cheap model gets them right.

The data (../shared/data/routing/mmlu, RouteLLM's): 14,042 MMLU questions in 57 subjects, with
whether Mixtral-8x7B (weak) and GPT-4 (strong) answered each correctly. Metrics: RouteLLM's
APGR, CPT(50 %), CPT(80 %) (switchpoint.routing.replay.metrics), over the pooled test prompts of
every fold, and each fold's APGR alone.

Data sets, none training and testing on the same prompt:
- `by subject`: 5 folds by a fixed hash of the subject name, so no subject is in both halves;
- `STEM -> humanities+social` and the reverse: a domain the predictor never saw (MMLU's own
  categories; the "other" subjects are left out);
- `by prompt hash`: 5 folds by a fixed hash of the prompt, so every subject is in both: a domain
  the predictor has feedback from.

Routers: random, prompt length, the rule classifier's complexity (the Rust router's), the kept
predictor (kNN over USE embeddings, through the sidecar's own OutcomeStore and predict) and the
variants compared with it (benches/routing_variants.py). Every router's score is "how much the
strong model is needed"; the predictors' is predicted(strong) - predicted(weak).

Embeddings are cached in benches/results/routing_eval_<embedder>_<hash>.npy (the hash covers the
texts): the first run embeds the 14k prompts (minutes on two busy cores), later runs take seconds.

    .venv/bin/python -m benches.routing_eval                 # table, JSON and docs/routing_eval.png
    .venv/bin/python -m benches.routing_eval --embed-only    # fill the embedding cache
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final

import numpy as np

from benches import routing_variants as variants
from benches.mmlu_outcomes import Question, read_mmlu
from switchpoint.cache.embedders import (
    LOCAL_MODEL_DIM,
    LOCAL_MODEL_NAME,
    LocalSentenceEncoder,
    Vectors,
)
from switchpoint.providers.base import ChatMessage
from switchpoint.routing.predictor.config import PredictorConfig
from switchpoint.routing.predictor.outcomes import prompt_text
from switchpoint.routing.predictor.predict import Weighing
from switchpoint.routing.predictor.tokens_embedder import TokenMeanEmbedder
from switchpoint.routing.replay import plots
from switchpoint.routing.replay.metrics import PgrCurve, RouterFigures, pgr_curve
from switchpoint.routing.replay.predictions import embed_texts, stable_bucket

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benches" / "results"
PNG = ROOT / "docs" / "routing_eval.png"
FOLDS: Final = 5
EMBED_THREADS: Final = 2


def texts_of(questions: Sequence[Question]) -> list[str]:
    """What the predictor embeds for each question (as when read from an outcome file)."""
    return [prompt_text([ChatMessage("user", q.prompt)]) for q in questions]


def _token_means(texts: Sequence[str]) -> Vectors:
    embedder = TokenMeanEmbedder()
    try:
        return embedder.embed_now(list(texts))
    finally:
        embedder.close()


def cached_embeddings(texts: Sequence[str], *, progress: bool = True) -> Vectors:
    """Each text's USE row, from the cache file when it holds these texts."""
    digest = hashlib.sha256("\x00".join(texts).encode("utf-8")).hexdigest()[:16]
    path = RESULTS / f"routing_eval_{LOCAL_MODEL_NAME}_{digest}.npy"
    if path.exists():
        cached: Vectors = np.load(path)
        if cached.shape == (len(texts), LOCAL_MODEL_DIM):
            return cached
    unique = list(dict.fromkeys(texts))
    started = time.perf_counter()

    async def embed() -> Vectors:
        embedder = LocalSentenceEncoder(threads=EMBED_THREADS, lru_size=0)
        try:
            rows = np.empty((len(unique), embedder.dim), np.float32)
            step = 1024
            for start in range(0, len(unique), step):
                rows[start : start + step] = await embed_texts(
                    embedder, unique[start : start + step]
                )
                if progress:
                    print(
                        f"embedded {min(start + step, len(unique))}/{len(unique)} "
                        f"({time.perf_counter() - started:.0f} s)",
                        file=sys.stderr,
                    )
            return rows
        finally:
            embedder.close()

    rows = asyncio.run(embed())
    row_of = {text: index for index, text in enumerate(unique)}
    vectors = rows[[row_of[text] for text in texts]]
    RESULTS.mkdir(parents=True, exist_ok=True)
    np.save(path, vectors)
    return vectors


def _subjects(names: str) -> frozenset[str]:
    return frozenset(names.split())


# MMLU's categories (Hendrycks et al.'s categories.py); "other" (business, health, misc.) is
# left out of the domain split.
STEM: Final = _subjects(
    "abstract_algebra astronomy college_biology college_chemistry college_computer_science "
    "college_mathematics college_physics computer_security conceptual_physics "
    "electrical_engineering elementary_mathematics high_school_biology high_school_chemistry "
    "high_school_computer_science high_school_mathematics high_school_physics "
    "high_school_statistics machine_learning"
)
HUMANITIES_SOCIAL: Final = _subjects(
    "formal_logic high_school_european_history high_school_us_history "
    "high_school_world_history international_law jurisprudence logical_fallacies "
    "moral_disputes moral_scenarios philosophy prehistory professional_law world_religions "
    "econometrics high_school_geography high_school_government_and_politics "
    "high_school_macroeconomics high_school_microeconomics high_school_psychology "
    "human_sexuality professional_psychology public_relations security_studies sociology "
    "us_foreign_policy"
)

Indices = variants.Indices
Split = list[tuple[Indices, Indices]]  # (train rows, test rows) per fold


def data_sets(questions: Sequence[Question]) -> dict[str, Split]:
    subjects = {q.subject for q in questions}
    unknown = (STEM | HUMANITIES_SOCIAL) - subjects
    if unknown:
        raise SystemExit(f"subjects missing from the data: {sorted(unknown)}")
    subject_fold = np.array([stable_bucket(q.subject, FOLDS) for q in questions])
    prompt_fold = np.array([stable_bucket(q.prompt, FOLDS) for q in questions])
    stem = np.array([q.subject in STEM for q in questions])
    other = np.array([q.subject in HUMANITIES_SOCIAL for q in questions])

    def folds(assigned: np.ndarray) -> Split:
        return [
            (np.flatnonzero(assigned != k), np.flatnonzero(assigned == k)) for k in range(FOLDS)
        ]

    return {
        "by subject (5 folds)": folds(subject_fold),
        "STEM -> humanities+social": [(np.flatnonzero(stem), np.flatnonzero(other))],
        "humanities+social -> STEM": [(np.flatnonzero(other), np.flatnonzero(stem))],
        "by prompt hash (5 folds)": folds(prompt_fold),
    }


@dataclass(frozen=True, slots=True)
class Inputs:
    weak: np.ndarray
    strong: np.ndarray
    use: Vectors
    # The same texts by `routing.predictor.embedder: use-tokens`.
    tokens: Vectors
    hashed: Vectors
    features: np.ndarray
    complexity: np.ndarray
    texts: list[str]
    # Each whole prompt's length in characters (`texts` are what the predictor embeds of them).
    chars: np.ndarray


KEPT: Final = "kNN USE (kept: sidecar)"
TOKENS: Final = "the same, embedder use-tokens"
# name -> score of the test rows of one fold
Router = Callable[[Inputs, Indices, Indices], np.ndarray]


def routers(weighing: Weighing) -> dict[str, Router]:
    def fold(inputs: Inputs, train: Indices, test: Indices, vectors: Vectors) -> variants.Fold:
        return variants.Fold(
            vectors[train],
            inputs.weak[train],
            inputs.strong[train],
            vectors[test],
            inputs.chars[train],
            inputs.chars[test],
        )

    def exact(neighbours: int, floor: float, kind: str) -> Router:
        setting = Weighing(neighbours, floor, weighing.prior_weight, weighing.half_life_s)

        def route(inputs: Inputs, train: Indices, test: Indices) -> np.ndarray:
            vectors = inputs.use if kind == "use" else inputs.hashed
            return variants.knn_exact(fold(inputs, train, test, vectors), setting)

        return route

    def clusters(count: int) -> Router:
        return lambda i, tr, te: variants.clusters(
            fold(i, tr, te, i.use), count, weighing.prior_weight
        )

    return {
        "random": lambda i, tr, te: np.random.default_rng(len(te)).random(len(te)),
        "prompt length": lambda i, tr, te: i.chars[te].astype(np.float64),
        "rule classifier (complexity)": lambda i, tr, te: i.complexity[te],
        KEPT: lambda i, tr, te: variants.knn_use(fold(i, tr, te, i.use), weighing),
        TOKENS: lambda i, tr, te: variants.knn_use(
            fold(i, tr, te, i.tokens), Weighing.of(PredictorConfig(embedder="use-tokens"))
        ),
        "kNN USE, k=100, no floor": exact(100, 0.0, "use"),
        "kNN USE, k=256, no floor": exact(256, 0.0, "use"),
        f"kNN hashed words, k={weighing.neighbours}, no floor": exact(
            weighing.neighbours, 0.0, "hashed"
        ),
        "clusters (k-means 16)": clusters(16),
        "clusters (k-means 64)": clusters(64),
        "logistic, difficulty features": lambda i, tr, te: variants.difficulty_logistic(
            i.features[tr], fold(i, tr, te, i.use), i.features[te]
        ),
    }


@dataclass(frozen=True, slots=True)
class Measured:
    """Per data set and router: the pooled curve, and each fold's APGR on its own."""

    curves: dict[str, dict[str, PgrCurve]]
    fold_apgr: dict[str, dict[str, list[float]]]


def evaluate(inputs: Inputs, splits: dict[str, Split], weighing: Weighing) -> Measured:
    """Each data set's PGR curve per router, over the test rows of all its folds together (each
    fold's scores come from its own training rows), and each fold's APGR alone."""
    measured = Measured({}, {})
    for name, split in splits.items():
        tested = np.concatenate([test for _, test in split])
        curves = measured.curves[name] = {}
        fold_apgr = measured.fold_apgr[name] = {}
        for router, route in routers(weighing).items():
            started = time.perf_counter()
            per_fold = [route(inputs, train, test) for train, test in split]
            scores = np.concatenate(per_fold)
            curves[router] = pgr_curve(scores, inputs.weak[tested], inputs.strong[tested])
            fold_apgr[router] = [
                pgr_curve(fold_scores, inputs.weak[test], inputs.strong[test]).apgr
                for fold_scores, (_, test) in zip(per_fold, split, strict=True)
            ]
            print(
                f"{name}: {router}: APGR {curves[router].apgr:.3f} pooled, "
                f"{np.mean(fold_apgr[router]):.3f} mean over folds "
                f"({time.perf_counter() - started:.1f} s)",
                file=sys.stderr,
            )
    return measured


def render(
    figures: dict[str, dict[str, RouterFigures]],
    fold_apgr: dict[str, dict[str, list[float]]],
    sizes: dict[str, int],
) -> str:
    names = list(next(iter(figures.values())))
    sets = list(figures)
    lines = [
        "APGR (CPT(50%) / CPT(80%): strong calls needed) over the pooled test prompts of each "
        "data set; [APGR mean over folds]",
        "",
        "| router | " + " | ".join(f"{s} ({sizes[s]})" for s in sets) + " |",
        "|---|" + "---|" * len(sets),
    ]
    for router in names:
        cells = []
        for data_set in sets:
            f = figures[data_set][router]
            cell = f"{f.apgr:.3f} ({100 * f.cpt50:.0f} / {100 * f.cpt80:.0f} %)"
            folds = fold_apgr[data_set][router]
            cells.append(cell + (f" [{np.mean(folds):.3f}]" if len(folds) > 1 else ""))
        lines.append(f"| {router} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="routers' APGR and CPT on MMLU")
    parser.add_argument("--embed-only", action="store_true", help="fill the embedding cache")
    parser.add_argument("--png", type=Path, default=PNG)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    questions = read_mmlu()
    texts = texts_of(questions)
    use = cached_embeddings(texts)
    if args.embed_only:
        return
    inputs = Inputs(
        weak=np.array([q.weak for q in questions]),
        strong=np.array([q.strong for q in questions]),
        use=use,
        tokens=_token_means(texts),
        hashed=variants.hashed_word_vectors(texts),
        features=variants.difficulty_features(texts),
        complexity=variants.rule_complexity(texts),
        texts=texts,
        chars=np.array([len(q.prompt) for q in questions], np.int64),
    )
    weighing = Weighing.of(PredictorConfig())
    splits = data_sets(questions)
    measured = evaluate(inputs, splits, weighing)
    curves = measured.curves
    figures = {s: {r: RouterFigures.of(c) for r, c in by.items()} for s, by in curves.items()}
    sizes = {s: sum(len(test) for _, test in split) for s, split in splits.items()}
    print(render(figures, measured.fold_apgr, sizes))
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = {
        "data": "routing/mmlu (RouteLLM): Mixtral-8x7B weak, GPT-4-1106 strong",
        "pooled": True,
        "test_prompts": sizes,
        "weighing": asdict(weighing),
        "figures": {s: {r: asdict(f) for r, f in by.items()} for s, by in figures.items()},
        "fold_apgr": measured.fold_apgr,
        "seconds": round(time.perf_counter() - started, 1),
    }
    (RESULTS / "routing_eval.json").write_text(json.dumps(result, indent=2) + "\n")
    shown = {
        s: {r: c for r, c in by.items() if "k=100" not in r and "k=256" not in r}
        for s, by in curves.items()
    }
    plots.pgr_panels_png(shown, args.png)
    print(f"\nwrote {RESULTS / 'routing_eval.json'} and {args.png}")


if __name__ == "__main__":
    main()
