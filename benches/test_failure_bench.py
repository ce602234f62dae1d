"""Chat RPC under a provider failing 20% of calls, resilient versus bare (see
`benches/failure_load.py`), in the same run.

Prints a table of success rate, p50/p95/p99 milliseconds of successful calls, mean attempts and
the resilient/bare ratios, and writes `benches/results/failure_load.json`. Asserts nothing about
time (the machine is shared and noisy), and nothing about the success rates: they are the figures.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from benches.failure_load import FailureLoadResult, measure, table, write_json

# pytest-benchmark's fixture, typed loosely (see test_gate_bench.py).
Benchmark = Any

RATE_PER_S = 50.0
DURATION_S = 10.0


@pytest.mark.timeout(300)
def test_chat_under_failures_resilient_vs_bare(benchmark: Benchmark) -> None:
    # One round of the whole load: pytest-benchmark records its wall time, and --benchmark-only
    # (make bench) keeps the test because it uses the fixture.
    result: FailureLoadResult = benchmark.pedantic(
        lambda: asyncio.run(measure(rate=RATE_PER_S, duration_s=DURATION_S, segment_s=2.0)),
        rounds=1,
        iterations=1,
    )
    print()
    print(table(result))
    print(f"wrote {write_json(result)}")
    calls = round(RATE_PER_S * DURATION_S)
    assert result.resilient.calls == result.bare.calls == calls
