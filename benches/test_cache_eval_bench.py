"""Semantic-cache quality on the whole QQP set (see `benches/cache_eval.py`).

Prints precision / hit rate per threshold for each embedder, with and without the hit guard,
writes `benches/results/cache_eval.json`, and the lowest plain-cosine threshold that reaches the
target precision (the default rule is chosen by benches/cache_rules.py). The first run embeds
~54k texts (a few minutes); later runs read the embeddings from benches/results/*.npy.
"""

from __future__ import annotations

from typing import Any

import pytest

from benches.cache_eval import TARGET_PRECISION, run, write_json

# pytest-benchmark's fixture, typed loosely (see test_gate_bench.py).
Benchmark = Any


@pytest.mark.timeout(1800)
def test_semantic_cache_quality(benchmark: Benchmark) -> None:
    report: dict[str, Any] = benchmark.pedantic(run, rounds=1, iterations=1)
    print(f"wrote {write_json(report)}")
    use_whole = report["embedders"][0]
    assert use_whole["pairs"] == report["pairs"]
    default = use_whole["guarded_at_default"]
    assert default is not None, "no threshold reaches the target precision with the guard"
    print(
        f"lowest plain threshold at the target: {default['threshold']:.2f} (guard on, precision"
        f" {default['precision']:.4f} >= {TARGET_PRECISION}, hit rate {default['hit_rate']:.4f});"
        f" plain cosine at the same precision: hit rate"
        f" {use_whole['plain_best_hit_rate_at_same_precision']:.4f}"
    )
