"""The semantic cache's default rule against the old one, on QQP and the paraphrase sets, by the
protocol with every question cached first (`benches/cache_rules.py`) and as a live stream
(`benches/cache_stream.py`). Prints both tables and writes their JSON to benches/results. Run
with `.venv/bin/pytest benches/test_cache_rules_bench.py --benchmark-only -p no:cacheprovider -s`.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from benches import cache_rules, cache_stream
from benches.cache_eval import RESULTS

# pytest-benchmark's fixture, typed loosely (see test_gate_bench.py).
Benchmark = Any


@pytest.mark.timeout(1800)
def test_cache_rules_on_other_domains(benchmark: Benchmark) -> None:
    report = benchmark.pedantic(lambda: cache_rules.table("report"), rounds=1, iterations=1)
    path = RESULTS / "cache_rules_report.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    assert set(report["sets"]) == {"qqp-report", "report-en", "report-multilingual"}


@pytest.mark.timeout(1800)
def test_cache_rules_in_a_live_stream(benchmark: Benchmark) -> None:
    path = benchmark.pedantic(cache_stream.run, rounds=1, iterations=1)
    assert path.exists()
