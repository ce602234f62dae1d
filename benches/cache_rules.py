"""Which semantic hits the cache serves, on QQP and on paraphrase sets from other domains and
languages: the old default beside the new one, and the choice of the new one's parameters.

Protocol (../shared/data/README.md, the one GPTCache publishes figures with): every question of
a set is cached, every paraphrase is looked up; a hit on its own question (for QQP: on a question
of the same duplicate cluster, see benches/cache_eval.py) is correct, a hit on another is wrong,
no hit is a miss, and misses are not stored. precision = correct / hits, hit rate = hits /
lookups. Two kinds of no-answer lookups, where every hit is wrong:
- `near-miss`: one question of each group of near misses is left out of the cache and its
  paraphrase looked up, so the closest entries are its siblings (the hardest case);
- `unrelated`: a fifth of the groups (QQP: of the duplicate clusters) is left out whole.

A lookup here is decided by the store's own functions (switchpoint.cache.decide for the floor
and the rival test, switchpoint.cache.guard), over the same number of candidates
(`cache.semantic.candidates`); tests/test_cache_rules.py holds the store to the same answers.

Sets: QQP's report half (the projection trained, and the parameters were chosen, on the other),
and benches/data/paraphrases: `tune/` (parameters chosen on it) and `report/` (never used for a
choice); the projection never saw either (it trained on `train/`, other domains).

    .venv/bin/python -m benches.cache_rules            # the table (writes cache_rules.json)
    .venv/bin/python -m benches.cache_rules --choose   # the parameter search on the tune sets
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import faiss
import numpy as np
import numpy.typing as npt

from benches.cache_eval import RESULTS, cluster_half, duplicate_clusters, load_pairs
from switchpoint.cache.config import SemanticConfig
from switchpoint.cache.decide import NO_RIVAL, Candidate, rival_similarity
from switchpoint.cache.embedders import LocalSentenceEncoder, Vectors
from switchpoint.cache.guard import agrees
from switchpoint.cache.projection import load_projection

ROOT = Path(__file__).resolve().parents[1]
PARAPHRASES = ROOT / "benches" / "data" / "paraphrases"
TARGET_PRECISION = 0.97
MIN_FLOOR = 0.65
Ints = npt.NDArray[np.int64]


@dataclass(frozen=True)
class LookupSet:
    name: str
    questions: list[str]
    queries: list[str]
    truth: Ints  # each query's own question
    cluster: Ints  # per question: questions of one cluster answer each other's queries
    group: list[str]  # per question: its group of near misses (QQP: its cluster)


def paraphrase_set(name: str, files: Sequence[Path]) -> LookupSet:
    rows = [
        json.loads(line)
        for path in files
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    return LookupSet(
        name=name,
        questions=[row["origin"] for row in rows],
        queries=[row["similar"] for row in rows],
        truth=np.arange(len(rows)),
        cluster=np.arange(len(rows)),
        group=[row["group"] for row in rows],
    )


def qqp_set(half: int) -> LookupSet:
    pairs = load_pairs()
    clusters = duplicate_clusters(pairs)
    pairs = [(o, s) for o, s in pairs if cluster_half(clusters[o]) == half]
    questions = list(dict.fromkeys(origin for origin, _ in pairs))
    position = {q: i for i, q in enumerate(questions)}
    label = {root: n for n, root in enumerate(dict.fromkeys(clusters[q] for q in questions))}
    return LookupSet(
        name=f"qqp-{'tune' if half == 0 else 'report'}",
        questions=questions,
        queries=[s for _, s in pairs],
        truth=np.array([position[o] for o, _ in pairs]),
        cluster=np.array([label[clusters[q]] for q in questions]),
        group=[clusters[q] for q in questions],
    )


def sets(kind: str) -> list[LookupSet]:
    half = 0 if kind == "tune" else 1
    return [
        qqp_set(half),
        paraphrase_set(f"{kind}-en", [PARAPHRASES / kind / "en.jsonl"]),
        paraphrase_set(f"{kind}-multilingual", [PARAPHRASES / kind / "multilingual.jsonl"]),
    ]


def _hashed(text: str, salt: str) -> int:
    return int(hashlib.sha256(f"{salt}:{text}".encode()).hexdigest()[:8], 16)


@dataclass(frozen=True)
class Searched:
    """Every lookup's candidates, each with its rival's similarity and the guard's verdict."""

    similarity: npt.NDArray[np.float32]  # lookups x k
    found: Ints  # question index per candidate (-1: none)
    rival: npt.NDArray[np.float64]
    guard_ok: npt.NDArray[np.bool_]
    right: npt.NDArray[np.bool_]  # candidate answers the lookup


def search(
    lookups: LookupSet,
    q_rows: Vectors,
    e_rows: Vectors,
    cached: Ints,
    asked: Ints,
    *,
    k: int,
    same: float,
) -> Searched:
    index = faiss.IndexFlatIP(e_rows.shape[1])
    index.add(np.ascontiguousarray(e_rows[cached]))
    scores, local = index.search(np.ascontiguousarray(q_rows[asked]), k)
    found = np.where(local >= 0, cached[np.maximum(local, 0)], -1)
    rival = np.full(scores.shape, NO_RIVAL)
    guard_ok = np.zeros(scores.shape, dtype=bool)
    for row in range(len(asked)):
        hits = [j for j in range(k) if found[row, j] >= 0]
        candidates = [Candidate(float(scores[row, j]), e_rows[found[row, j]]) for j in hits]
        unseen = NO_RIVAL if len(hits) < k else float(scores[row, k - 1])
        for j in hits:
            rival[row, j] = rival_similarity(candidates, j, unseen_bound=unseen, same_question=same)
    right = (found >= 0) & (
        lookups.cluster[np.maximum(found, 0)] == lookups.cluster[lookups.truth[asked]][:, None]
    )
    return Searched(scores, found, rival, guard_ok, right)


def with_guard(lookups: LookupSet, searched: Searched, asked: Ints, floor: float) -> None:
    """The guard's verdicts, only where a candidate could ever be served (it is the costly part)."""
    for row, j in zip(*np.nonzero(searched.similarity >= floor), strict=True):
        question = lookups.questions[searched.found[row, j]]
        searched.guard_ok[row, j] = agrees(lookups.queries[asked[row]], question).ok


def served(searched: Searched, floor: float, margin: float, guard: bool) -> Ints:
    """Per lookup, the candidate position served (-1: a miss), as ResponseCache decides."""
    ok = (searched.found >= 0) & (searched.similarity >= floor)
    if margin > 0:
        ok &= searched.similarity - searched.rival >= margin
    if guard:
        ok &= searched.guard_ok
    return np.where(ok.any(axis=1), ok.argmax(axis=1), -1)


@dataclass(frozen=True)
class Point:
    precision: float
    hit_rate: float
    near_miss_hits: float | None  # share of no-answer lookups (siblings cached) given a wrong
    # answer; None for QQP, whose "siblings" are duplicates, so a hit on one is right
    unrelated_hits: float


@dataclass
class Prepared:
    lookups: LookupSet
    main: Searched
    near_miss: Searched
    unrelated: Searched

    def point(self, floor: float, margin: float, guard: bool) -> Point:
        chosen = served(self.main, floor, margin, guard)
        hit = chosen >= 0
        correct = self.main.right[np.arange(len(chosen)), np.maximum(chosen, 0)] & hit
        return Point(
            precision=float(correct.sum() / hit.sum()) if hit.any() else 1.0,
            hit_rate=float(hit.mean()),
            near_miss_hits=None
            if self.lookups.name.startswith("qqp")
            else float((served(self.near_miss, floor, margin, guard) >= 0).mean()),
            unrelated_hits=float((served(self.unrelated, floor, margin, guard) >= 0).mean()),
        )


def prepare(
    lookups: LookupSet, embed: Callable[[list[str]], Vectors], k: int, same: float, floor: float
) -> Prepared:
    e_rows = embed(lookups.questions)
    q_rows = embed(lookups.queries)
    everything = np.arange(len(lookups.questions))
    groups: dict[str, list[int]] = {}
    for i, name in enumerate(lookups.group):
        groups.setdefault(name, []).append(i)
    # near-miss: one question per group of two or more leaves the cache
    left_out = {
        members[_hashed(name, "near-miss") % len(members)]
        for name, members in groups.items()
        if len(members) > 1
    }
    # unrelated: a fifth of the groups leaves whole
    gone = {
        i for name, members in groups.items() if _hashed(name, "group") % 5 == 0 for i in members
    }
    parts = {}
    for part, out in (("main", set[int]()), ("near_miss", left_out), ("unrelated", gone)):
        cached = np.array([i for i in everything if i not in out])
        asked = (
            np.arange(len(lookups.queries))
            if part == "main"
            else np.array([n for n, t in enumerate(lookups.truth) if int(t) in out])
        )
        searched = search(lookups, q_rows, e_rows, cached, asked, k=k, same=same)
        with_guard(lookups, searched, asked, floor)
        parts[part] = searched
    return Prepared(lookups, parts["main"], parts["near_miss"], parts["unrelated"])


class Embeddings:
    """Vectors of USE multilingual, plain or projected, computed once per text (cached on disk)."""

    def __init__(self) -> None:
        self._model = LocalSentenceEncoder(threads=2, lru_size=0)
        self._projection = load_projection()

    def rows(self, texts: list[str], projected: bool) -> Vectors:
        digest = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]
        path = RESULTS / f"cache_rules_use_{digest}.npy"
        if path.exists():
            plain = np.load(path)
        else:
            plain = np.concatenate(
                [
                    asyncio.run(self._model.embed(texts[s : s + 512]))
                    for s in range(0, len(texts), 512)
                ]
            )
            RESULTS.mkdir(parents=True, exist_ok=True)
            np.save(path, plain)
        return self._projection.apply(plain) if projected else plain

    def embedder(self, projected: bool) -> Callable[[list[str]], Vectors]:
        def rows(texts: list[str]) -> Vectors:
            return self.rows(texts, projected)

        return rows


@dataclass(frozen=True)
class Variant:
    name: str
    projected: bool
    floor: float
    margin: float
    guard: bool = True


def variants() -> list[Variant]:
    default = SemanticConfig()
    floor, margin = default.threshold, default.margin
    return [
        Variant("old default: cosine >= 0.98 + guard", False, 0.98, 0.0),
        Variant("cosine >= 0.90 + guard", False, 0.90, 0.0),
        Variant(f"rival test ({floor} / {margin}) + guard", False, floor, margin),
        Variant("projection, cosine >= 0.90 + guard", True, 0.90, 0.0),
        Variant("new default: projection + rival test + guard", True, floor, margin),
    ]


def table(kind: str) -> dict[str, object]:
    embeddings = Embeddings()
    config = SemanticConfig()
    report: dict[str, object] = {"sets": {}, "target_precision": TARGET_PRECISION}
    lines = []
    for lookups in sets(kind):
        prepared = {
            projected: prepare(
                lookups,
                embeddings.embedder(projected),
                config.candidates,
                config.same_question,
                floor=0.0,
            )
            for projected in (False, True)
        }
        rows = []
        for variant in variants():
            point = prepared[variant.projected].point(variant.floor, variant.margin, variant.guard)
            rows.append({"variant": variant.name, **asdict(point)})
            near = (
                "  -  " if point.near_miss_hits is None else f"{100 * point.near_miss_hits:4.1f}%"
            )
            lines.append(
                f"{lookups.name:20s} {variant.name:46s} precision {point.precision:.3f}"
                f"  hits {100 * point.hit_rate:5.1f}%  wrong answers: near misses {near}"
                f"  unrelated {100 * point.unrelated_hits:4.1f}%"
            )
        report["sets"][lookups.name] = {"lookups": len(lookups.queries), "rows": rows}  # type: ignore[index]
    print("\n".join(lines))
    return report


def choose(projected: bool) -> None:
    embeddings = Embeddings()
    config = SemanticConfig()
    tuned = [
        prepare(
            lookups,
            lambda t: embeddings.rows(t, projected),
            config.candidates,
            config.same_question,
            0.5,
        )
        for lookups in sets("tune")
    ]
    found = []
    for floor in np.round(np.arange(0.50, 0.96, 0.01), 2):
        for margin in np.round(np.arange(0.0, 0.21, 0.01), 2):
            points = [prepared.point(float(floor), float(margin), True) for prepared in tuned]
            # floors below 0.65 serve unrelated questions in sparse caches (docs/cache.md)
            if floor >= MIN_FLOOR and min(p.precision for p in points) >= TARGET_PRECISION + 0.005:
                found.append((min(p.hit_rate for p in points), float(floor), float(margin), points))
    found.sort(key=lambda row: -row[0])
    for worst, floor, margin, points in found[:10]:
        cells = "  ".join(f"{p.precision:.3f}/{100 * p.hit_rate:4.1f}%" for p in points)
        print(
            f"floor {floor:.2f} margin {margin:.2f}  worst hit rate {100 * worst:4.1f}%   {cells}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument(
        "--choose", action="store_true", help="search floor and margin on tune sets"
    )
    parser.add_argument(
        "--plain", action="store_true", help="with --choose: without the projection"
    )
    parser.add_argument("--sets", choices=("report", "tune"), default="report")
    args = parser.parse_args()
    if args.choose:
        choose(projected=not args.plain)
        return
    report = table(args.sets)
    path = RESULTS / f"cache_rules_{args.sets}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
