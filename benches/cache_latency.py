"""Response-cache lookup latency and memory at 1k, 10k and 100k entries.

What is timed is `ResponseCache.lookup` end to end, the cost a request pays before the provider
call: exact-key miss, embedding the question with the real sentence encoder (its text LRU turned
off, so every lookup embeds), the FAISS search, and the guard on candidates above the threshold.
Embedding and FAISS search are also timed on their own.

The cache holds one partition (one tenant, one model class, default parameters): the worst case,
since lookups only ever search their own partitions. Of its entries, 1,000 are real questions
(QQP origins) with their USE vectors; the rest are filler entries whose vectors are random unit
vectors (embedding 100k texts for a latency figure would take minutes and measure nothing more:
flat search cost does not depend on the data, HNSW's only mildly). Each filler entry holds a
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

from switchpoint.cache.embedders import LocalSentenceEncoder, Vectors
from switchpoint.cache.store import ResponseCache
from tests.support.cache_support import answer, ask, cache_config, qqp_pairs

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


@dataclass(frozen=True, slots=True)
class SizeResult:
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


async def measure(size: int, encoder: LocalSentenceEncoder, seed: int = 7) -> SizeResult:
    pairs = qqp_pairs(REAL_ENTRIES)
    filler_count = size - len(pairs)
    rng = np.random.default_rng(seed)
    gc.collect()
    rss_before = _rss_mib()
    vectors = rng.standard_normal((filler_count, encoder.dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    filler = {f"filler question {i}": vectors[i] for i in range(filler_count)}
    del vectors
    cache = ResponseCache(cache_config(max_entries=size), FillerAwareEmbedder(encoder, filler))
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
        await cache._index.search([scope], rows[0], 4)
        searches.append(time.perf_counter() - began)
    await cache.close()

    lookup_p50, lookup_p99 = _percentiles(lookups)
    embed_p50, embed_p99 = _percentiles(embeds)
    search_p50, search_p99 = _percentiles(searches)
    return SizeResult(
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
        "entries  index  lookup p50/p99 ms  embed p50/p99 ms  search p50/p99 ms  hits      "
        "RSS MiB  MiB/100k",
    ]
    for r in results:
        lines.append(
            f"{r.entries:>7}  {r.index:<5}  {r.lookup_p50_ms:7.2f} /{r.lookup_p99_ms:6.2f}   "
            f"{r.embed_p50_ms:6.2f} /{r.embed_p99_ms:6.2f}   {r.search_p50_ms:7.3f} /"
            f"{r.search_p99_ms:6.3f}   {r.semantic_hits:>4}/{r.lookups:<4}  {r.rss_mib:7.1f}  "
            f"{r.rss_per_100k_mib:8.1f}"
        )
    return "\n".join(lines)


async def run(sizes: Sequence[int] = SIZES) -> list[SizeResult]:
    encoder = LocalSentenceEncoder(lru_size=0)
    await encoder.warm_up()
    try:
        return [await measure(size, encoder) for size in sizes]
    finally:
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
