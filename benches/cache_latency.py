"""Response-cache lookup latency and memory at 1k, 10k and 100k entries.

What is timed is `ResponseCache.lookup` end to end, the cost a request pays before the provider
call: exact-key miss, embedding the question with the real sentence encoder (its text LRU turned
off, so every lookup embeds), the FAISS search with each candidate's own vector, the semantic rule
(switchpoint.cache.decide) and the guard. Embedding and FAISS search are also timed on their own.

Two configurations run at each size, in the same process: the default (`new`: the paraphrase
projection, 8 candidates, the floor and rival test) and the one before it (`old`: USE's own
vectors, cosine >= 0.98, 4 candidates) as the baseline its ratios are printed against.

The cache holds one partition (one tenant, one model class, default parameters): the worst case,
since lookups only ever search their own partitions. Of its entries, 1,000 are real questions
(QQP origins) with their USE vectors; the rest are filler entries whose vectors are shaped like
questions' (each the mean of two QQP questions' vectors plus noise: an HNSW graph's search cost
depends on how its vectors cluster, and uniform noise is its worst case; with the projection on,
the filler goes through it as every stored vector would). Each filler entry holds a
distinct 400-character answer, so the memory figure includes answers of a realistic size. The
queries are the 1,000 QQP paraphrases of the stored origins, so lookups are a mix of semantic hits
and misses, as in service.

Above `hnsw_above` (20,000 by default) the partition is an HNSW graph, so 1k and 10k measure the
exact flat index and 100k the graph.

    .venv/bin/python -m benches.cache_latency            # 1k, 10k, 100k
    .venv/bin/python -m benches.cache_latency --sizes 1000
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from benches.cache_eval import embed_all, load_pairs, use_encoder
from switchpoint.cache.config import CacheConfig, SemanticConfig
from switchpoint.cache.embedders import LocalSentenceEncoder, Vectors
from switchpoint.cache.projection import load_projection
from switchpoint.cache.store import ResponseCache
from tests.support.cache_support import answer, ask, qqp_pairs

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benches" / "results"
SIZES = (1_000, 10_000, 100_000)
REAL_ENTRIES = 1_000
ANSWER_CHARS = 400
WARM_UP = 50


class FillerAwareEmbedder:
    """The real encoder, except for filler texts, whose vectors are handed out from a table."""

    def __init__(self, real: LocalSentenceEncoder, filler: dict[str, Vectors]) -> None:
        self.name = real.name
        self.dim = real.dim
        self._real = real
        self._filler = filler

    async def embed(self, texts: Sequence[str]) -> Vectors:
        if all(text in self._filler for text in texts):
            return np.stack([self._filler[text] for text in texts])
        return await self._real.embed(texts)


VARIANTS = ("old", "new")


def variant_config(variant: str, size: int) -> CacheConfig:
    if variant == "old":
        semantic = SemanticConfig(threshold=0.98, margin=0.0, candidates=4)
        return CacheConfig(enabled=True, max_entries=size, semantic=semantic)
    return CacheConfig(enabled=True, max_entries=size)


@dataclass(frozen=True, slots=True)
class SizeResult:
    variant: str
    entries: int
    index: str
    lookup_p50_ms: float
    lookup_p99_ms: float
    embed_p50_ms: float
    embed_p99_ms: float
    search_p50_ms: float
    search_p99_ms: float
    semantic_hits: int
    lookups: int
    rss_mib: float
    rss_per_100k_mib: float
    fill_s: float


def _percentiles(samples: list[float]) -> tuple[float, float]:
    values = np.array(samples) * 1000
    return float(np.percentile(values, 50)), float(np.percentile(values, 99))


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def filler_vectors(rng: np.random.Generator, count: int) -> Vectors:
    """Vectors shaped like questions' (an HNSW graph searches real text's clusters faster than
    uniform noise, and the projection reshapes noise unlike text): each the normalised mean of two
    QQP questions' USE vectors plus a little noise, so none duplicates a real question."""
    pairs = load_pairs()
    # The texts in benches/cache_eval.py's order, so its cached vectors serve; computed on a
    # thread of its own when missing (the encoder runs its own event loop).
    texts = list(dict.fromkeys(origin for origin, _ in pairs)) + [similar for _, similar in pairs]
    pool, _ = await asyncio.to_thread(embed_all, "use-multilingual-v3", use_encoder, texts)
    first = pool[rng.integers(0, len(pool), count)]
    second = pool[rng.integers(0, len(pool), count)]
    noise = rng.standard_normal(first.shape, dtype=np.float32) * 0.02
    mixed: Vectors = (first + second + noise).astype(np.float32)
    mixed /= np.linalg.norm(mixed, axis=1, keepdims=True)
    return mixed


async def measure(
    size: int, encoder: LocalSentenceEncoder, variant: str, seed: int = 7
) -> SizeResult:
    pairs = qqp_pairs(REAL_ENTRIES)
    filler_count = size - len(pairs)
    rng = np.random.default_rng(seed)
    gc.collect()
    rss_before = _rss_mib()
    vectors = await filler_vectors(rng, filler_count)
    if variant == "new":
        # Every stored vector goes through the projection in service, so the filler does too:
        # the graph's shape, and so its search cost, depends on how the vectors are spread.
        vectors = load_projection().apply(vectors)
    filler = {f"filler question {i}": vectors[i] for i in range(filler_count)}
    del vectors
    config = variant_config(variant, size)
    cache = ResponseCache(config, FillerAwareEmbedder(encoder, filler))
    started = time.perf_counter()
    for number, text in enumerate(filler):
        body = f"answer {number} " + "x" * ANSWER_CHARS
        await cache.store(ask(text), answer(body[:ANSWER_CHARS]))
    filler.clear()
    for number, (origin, _) in enumerate(pairs):
        await cache.store(ask(origin), answer(f"answer to origin {number}"))
    await cache.wait_for_rebuilds()
    fill_s = time.perf_counter() - started
    gc.collect()
    rss = _rss_mib() - rss_before
    stats = cache.stats()

    queries = [similar for _, similar in pairs]
    for text in queries[:WARM_UP]:
        await cache.lookup(ask(text + " (warm-up)"))
    lookups: list[float] = []
    hits = 0
    for text in queries:
        began = time.perf_counter()
        hit = await cache.lookup(ask(text))
        lookups.append(time.perf_counter() - began)
        hits += hit is not None

    embeds: list[float] = []
    searches: list[float] = []
    scope = next(iter(cache._index.partition_kinds()))  # the one partition; timed directly
    for text in queries:
        began = time.perf_counter()
        rows = await encoder.embed([text + " (embed only)"])
        embeds.append(time.perf_counter() - began)
        began = time.perf_counter()
        await cache._index.search([scope], rows[0], config.semantic.candidates)
        searches.append(time.perf_counter() - began)
    await cache.close()

    lookup_p50, lookup_p99 = _percentiles(lookups)
    embed_p50, embed_p99 = _percentiles(embeds)
    search_p50, search_p99 = _percentiles(searches)
    return SizeResult(
        variant=variant,
        entries=stats.entries,
        index="hnsw" if stats.hnsw_partitions else "flat",
        lookup_p50_ms=lookup_p50,
        lookup_p99_ms=lookup_p99,
        embed_p50_ms=embed_p50,
        embed_p99_ms=embed_p99,
        search_p50_ms=search_p50,
        search_p99_ms=search_p99,
        semantic_hits=hits,
        lookups=len(queries),
        rss_mib=rss,
        rss_per_100k_mib=rss * 100_000 / stats.entries,
        fill_s=fill_s,
    )


def table(results: Sequence[SizeResult]) -> str:
    lines = [
        "variant  entries  index  lookup p50/p99 ms  embed p50/p99 ms  search p50/p99 ms  hits"
        "      RSS MiB  MiB/100k",
    ]
    for r in results:
        lines.append(
            f"{r.variant:<7}  {r.entries:>7}  {r.index:<5}  {r.lookup_p50_ms:7.2f} /"
            f"{r.lookup_p99_ms:6.2f}   "
            f"{r.embed_p50_ms:6.2f} /{r.embed_p99_ms:6.2f}   {r.search_p50_ms:7.3f} /"
            f"{r.search_p99_ms:6.3f}   {r.semantic_hits:>4}/{r.lookups:<4}  {r.rss_mib:7.1f}  "
            f"{r.rss_per_100k_mib:8.1f}"
        )
    baseline = {r.entries: r for r in results if r.variant == "old"}
    for r in results:
        old = baseline.get(r.entries)
        if r.variant == "new" and old is not None:
            lines.append(
                f"new/old at {r.entries}: lookup p50 {r.lookup_p50_ms / old.lookup_p50_ms:.2f}x,"
                f" p99 {r.lookup_p99_ms / old.lookup_p99_ms:.2f}x; search p50"
                f" {r.search_p50_ms / old.search_p50_ms:.2f}x"
            )
    return "\n".join(lines)


async def run(sizes: Sequence[int] = SIZES) -> list[SizeResult]:
    encoders = {
        "old": LocalSentenceEncoder(lru_size=0),
        "new": LocalSentenceEncoder(lru_size=0, projection=load_projection()),
    }
    for encoder in encoders.values():
        await encoder.warm_up()
    try:
        return [
            await measure(size, encoders[variant], variant)
            for size in sizes
            for variant in VARIANTS
        ]
    finally:
        for encoder in encoders.values():
            encoder.close()


def write_json(results: Sequence[SizeResult], name: str = "cache_latency.json") -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    path.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    args = parser.parse_args()
    results = asyncio.run(run(args.sizes))
    print(table(results))
    print(f"wrote {write_json(results)}")


if __name__ == "__main__":
    main()
