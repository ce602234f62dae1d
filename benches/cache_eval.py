"""Semantic-cache quality on QQP paraphrase pairs: precision and hit rate per cosine threshold,
for each embedder, with and without the hit guard (switchpoint.cache.guard).

Protocol (../shared/data/README.md, the one GPTCache publishes figures with):
- every distinct `origin` goes into a FAISS IndexFlatIP over unit rows; each `similar` is looked
  up (top 1). A hit on its own origin is correct, a hit on another origin is wrong, else a miss.
  Origins are deduplicated by text first: two pairs with the same origin share one entry, so a
  hit on it is correct for both (with one entry per pair a correct hit could count as wrong).
- precision = correct / (correct + wrong), hit rate = (correct + wrong) / pairs.
- QQP's duplicate pairs chain: "lose 4kg weight?" is the `similar` of one pair and the `origin`
  of another, so a `similar` often hits a different origin that QQP itself judges a duplicate of
  its own (through other pairs). Strictly counted, such hits are wrong, which caps precision near
  0.85 at any threshold for every embedder we tried. So precision is reported twice: `strict`
  (the protocol as written) and `precision` (cluster-aware: a hit is correct when its origin is in
  the same connected component of the duplicate graph, texts as nodes and pairs as edges, as the
  query's own origin). The lowest threshold reaching the target precision on it is reported; the
  cache's default rule itself is chosen by benches/cache_rules.py, over QQP and other domains.
- negatives: a second index without the origins of a fixed 20% of the duplicate clusters (by a
  hash of the cluster); the `similar`s of those pairs have no right answer there, so every hit is
  wrong under either labelling.
- with the guard, a hit whose top candidate the guard refuses becomes a miss.

Embeddings are cached in benches/results/cache_eval_<embedder>_<hash>.npy (the hash covers the
texts, so a different slice or data file computes afresh).

    .venv/bin/python -m benches.cache_eval              # the whole set
    .venv/bin/python -m benches.cache_eval --limit 5000 # a slice
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import faiss
import numpy as np
import numpy.typing as npt

from benches import minilm_embedder
from switchpoint.cache.embedders import LocalSentenceEncoder, Vectors
from switchpoint.cache.guard import agrees

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "semantic-cache" / "qqp_similar_pairs.json.gz"
RESULTS = ROOT / "benches" / "results"
THRESHOLDS = tuple(round(0.70 + 0.02 * step, 2) for step in range(15))  # 0.70 .. 0.98
TARGET_PRECISION = 0.97
# MiniLM in numpy embeds ~30 texts/s on two cores (USE: ~600): the whole set would take half an
# hour, so it is compared with USE on this slice; USE also runs on the whole set.
MINILM_PAIRS = 5000
HOLDOUT_PERCENT = 20
_BATCH = 512

Encoder = Callable[[Sequence[str]], Vectors]


@dataclass(frozen=True, slots=True)
class Point:
    threshold: float
    precision: float  # cluster-aware (see the module docstring)
    strict_precision: float
    hit_rate: float
    negative_hit_rate: float  # share of no-answer questions that got a (wrong) hit


@dataclass(frozen=True, slots=True)
class EmbedderResult:
    embedder: str
    dim: int
    pairs: int
    negatives: int
    default_threshold_strict: float | None  # same rule on strict precision (None: unreachable)
    embed_ms_per_text: float  # batched throughput when the embeddings were computed
    plain: list[Point]
    guarded: list[Point]
    default_threshold: float | None  # lowest grid threshold with guarded precision >= target
    guarded_at_default: Point | None
    plain_best_hit_rate_at_same_precision: float | None  # fine sweep, no guard
    plain_threshold_at_same_precision: float | None
    guard_refuses_correct: float  # share of correct top-1 candidates the guard refuses
    guard_refuses_wrong: float  # share of wrong top-1 candidates the guard refuses


def load_pairs(limit: int | None = None) -> list[tuple[str, str]]:
    with gzip.open(DATA, "rt", encoding="utf-8") as handle:
        rows = json.load(handle)
    pairs = [(str(row["origin"]), str(row["similar"])) for row in rows]
    return pairs[:limit] if limit else pairs


def use_encoder() -> Encoder:
    # Batches of 512 amortise the weight reads; 2 BLAS threads use this machine's cores.
    model = LocalSentenceEncoder(threads=2, lru_size=0)

    def encode(texts: Sequence[str]) -> Vectors:
        return asyncio.run(model.embed(texts))

    return encode


def embed_all(name: str, encoder: Callable[[], Encoder], texts: list[str]) -> tuple[Vectors, float]:
    """Rows for `texts` from the .npy cache or the model; and ms per text when computed now."""
    digest = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]
    cache = RESULTS / f"cache_eval_{name}_{digest}.npy"
    timing = RESULTS / f"cache_eval_{name}_{digest}.ms.txt"
    if cache.exists() and timing.exists():
        return np.load(cache), float(timing.read_text())
    encode = encoder()
    started = time.perf_counter()
    parts = []
    for start in range(0, len(texts), _BATCH):
        parts.append(encode(texts[start : start + _BATCH]))
        done = min(start + _BATCH, len(texts))
        if done % (_BATCH * 20) == 0 or done == len(texts):
            print(f"  {name}: embedded {done}/{len(texts)}", flush=True)
    ms = (time.perf_counter() - started) * 1000 / max(len(texts), 1)
    rows = np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)
    RESULTS.mkdir(parents=True, exist_ok=True)
    np.save(cache, rows)
    timing.write_text(f"{ms:.4f}")
    return rows, ms


def top1(
    cached: Vectors, queries: Vectors
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    index = faiss.IndexFlatIP(cached.shape[1])
    index.add(cached)
    scores, ids = index.search(queries, 1)
    return scores[:, 0], ids[:, 0]


def duplicate_clusters(pairs: list[tuple[str, str]]) -> dict[str, str]:
    """Each text's cluster: a representative text of its connected component (union-find)."""
    parent: dict[str, str] = {}

    def find(text: str) -> str:
        parent.setdefault(text, text)
        while parent[text] != text:
            parent[text] = parent[parent[text]]
            text = parent[text]
        return text

    for origin, similar in pairs:
        parent[find(origin)] = find(similar)
    return {text: find(text) for text in parent}


def _held_out(cluster: str) -> bool:
    return int(hashlib.sha256(cluster.encode()).hexdigest()[:8], 16) % 100 < HOLDOUT_PERCENT


def cluster_half(cluster: str) -> int:
    """0: the tuning half of QQP's duplicate clusters (the paraphrase projection trains on it and
    the semantic rule is chosen on it), 1: the half its figures are reported on."""
    return int(hashlib.sha256(cluster.encode()).hexdigest()[8:16], 16) % 2


def evaluate(
    name: str, encoder: Callable[[], Encoder], pairs: list[tuple[str, str]]
) -> EmbedderResult:
    origins = list(dict.fromkeys(origin for origin, _ in pairs))
    position = {origin: i for i, origin in enumerate(origins)}
    similars = [similar for _, similar in pairs]
    vectors, ms = embed_all(name, encoder, origins + similars)
    origin_rows, query_rows = vectors[: len(origins)], vectors[len(origins) :]
    truth = np.array([position[origin] for origin, _ in pairs])
    cluster = duplicate_clusters(pairs)
    cluster_id = {root: n for n, root in enumerate(dict.fromkeys(cluster.values()))}
    origin_cluster = np.array([cluster_id[cluster[origin]] for origin in origins])

    scores, ids = top1(origin_rows, query_rows)
    strict_top = ids == truth
    correct_top = origin_cluster[ids] == origin_cluster[truth]
    guard_ok = np.array([agrees(q, origins[i]).ok for q, i in zip(similars, ids, strict=True)])

    kept = [i for i, origin in enumerate(origins) if not _held_out(cluster[origin])]
    negatives = [n for n, (origin, _) in enumerate(pairs) if _held_out(cluster[origin])]
    neg_scores, neg_local = top1(origin_rows[kept], query_rows[negatives])
    neg_guard_ok = np.array(
        [
            agrees(similars[n], origins[kept[j]]).ok
            for n, j in zip(negatives, neg_local, strict=True)
        ]
    )

    def point(threshold: float, guarded: bool) -> Point:
        hit = scores >= threshold
        neg_hit = neg_scores >= threshold
        if guarded:
            hit &= guard_ok
            neg_hit &= neg_guard_ok
        hits = int(hit.sum())
        correct = int((hit & correct_top).sum())
        strict = int((hit & strict_top).sum())
        return Point(
            threshold=threshold,
            precision=correct / hits if hits else 1.0,
            strict_precision=strict / hits if hits else 1.0,
            hit_rate=hits / len(pairs),
            negative_hit_rate=float(neg_hit.mean()) if negatives else 0.0,
        )

    plain = [point(t, guarded=False) for t in THRESHOLDS]
    guarded = [point(t, guarded=True) for t in THRESHOLDS]
    default = next((p for p in guarded if p.precision >= TARGET_PRECISION), None)
    strict_default = next((p for p in guarded if p.strict_precision >= TARGET_PRECISION), None)
    best_plain: Point | None = None
    if default is not None:
        # The fairest comparison: the plain threshold, on a fine grid, with the most hits at no
        # less precision than the guarded default.
        fine = [point(t, guarded=False) for t in np.round(np.arange(0.50, 1.0, 0.001), 3)]
        eligible = [p for p in fine if p.precision >= default.precision]
        best_plain = max(eligible, key=lambda p: p.hit_rate, default=None)
    return EmbedderResult(
        embedder=name,
        dim=int(vectors.shape[1]),
        pairs=len(pairs),
        negatives=len(negatives),
        default_threshold_strict=strict_default.threshold if strict_default else None,
        embed_ms_per_text=ms,
        plain=plain,
        guarded=guarded,
        default_threshold=default.threshold if default else None,
        guarded_at_default=default,
        plain_best_hit_rate_at_same_precision=best_plain.hit_rate if best_plain else None,
        plain_threshold_at_same_precision=float(best_plain.threshold) if best_plain else None,
        guard_refuses_correct=float((~guard_ok[correct_top]).mean()),
        guard_refuses_wrong=float((~guard_ok[~correct_top]).mean()),
    )


def guard_microseconds(pairs: list[tuple[str, str]]) -> float:
    started = time.perf_counter()
    for origin, similar in pairs:
        agrees(similar, origin)
    return (time.perf_counter() - started) * 1e6 / max(len(pairs), 1)


def table(result: EmbedderResult) -> str:
    lines = [
        f"{result.embedder} (dim {result.dim}, {result.pairs} pairs, {result.negatives} negatives,"
        f" {result.embed_ms_per_text:.2f} ms/text batched)",
        "  thr | plain: prec strict   hit%  neg-hit% | guard: prec strict   hit%  neg-hit%",
    ]
    for plain, guarded in zip(result.plain, result.guarded, strict=True):
        lines.append(
            f" {plain.threshold:.2f} |     {plain.precision:.4f} {plain.strict_precision:.4f}"
            f" {100 * plain.hit_rate:6.2f}  {100 * plain.negative_hit_rate:7.2f} |"
            f"    {guarded.precision:.4f} {guarded.strict_precision:.4f}"
            f" {100 * guarded.hit_rate:6.2f}  {100 * guarded.negative_hit_rate:7.2f}"
        )
    lines.append(
        f"  guard refuses {100 * result.guard_refuses_correct:.1f}% of correct top-1 candidates"
        f" and {100 * result.guard_refuses_wrong:.1f}% of wrong ones"
    )
    default = result.guarded_at_default
    if default is None:
        lines.append(f"  no threshold reaches precision {TARGET_PRECISION} with the guard")
    else:
        lines.append(
            f"  default threshold {default.threshold:.2f} (guard on): precision"
            f" {default.precision:.4f}, hit rate {100 * default.hit_rate:.2f}%; plain cosine at"
            f" precision >= {default.precision:.4f}: best hit rate"
            f" {100 * (result.plain_best_hit_rate_at_same_precision or 0):.2f}% (threshold"
            f" {result.plain_threshold_at_same_precision})"
        )
    return "\n".join(lines)


def run(limit: int | None = None, minilm_pairs: int = MINILM_PAIRS) -> dict[str, object]:
    pairs = load_pairs(limit)
    results = [evaluate("use-multilingual-v3", use_encoder, pairs)]
    skipped = minilm_embedder.available()
    if skipped is not None:
        print(skipped)
    elif minilm_pairs > 0:
        # Both embedders on the same slice, so the comparison is like for like.
        head = pairs[:minilm_pairs]
        if len(head) < len(pairs):
            results.append(evaluate("use-multilingual-v3", use_encoder, head))
        results.append(
            evaluate("all-minilm-l6-v2", lambda: minilm_embedder.MiniLMNumpy().encode, head)
        )
    report: dict[str, object] = {
        "data": str(DATA.relative_to(ROOT.parent)),
        "pairs": len(pairs),
        "target_precision": TARGET_PRECISION,
        "guard_us_per_call": guard_microseconds(pairs),
        "skipped": [skipped] if skipped else [],
        "embedders": [asdict(result) for result in results],
    }
    for result in results:
        print(table(result))
    print(f"guard: {report['guard_us_per_call']:.1f} us per call (mean over the pairs)")
    return report


def write_json(report: dict[str, object], name: str = "cache_eval.json") -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--limit", type=int, default=None, help="only the first N pairs")
    parser.add_argument(
        "--minilm-pairs", type=int, default=MINILM_PAIRS, help="MiniLM's slice (0: skip it)"
    )
    args = parser.parse_args()
    report = run(args.limit, args.minilm_pairs)
    name = "cache_eval.json" if args.limit is None else f"cache_eval_{args.limit}.json"
    print(f"wrote {write_json(report, name)}")


if __name__ == "__main__":
    main()
