"""Route RPC latency, token gate on versus off, in the same run (see `benches/route_load.py`).

Prints a table of p50/p99 microseconds and the on/off ratios, and writes
`benches/results/route_gate.json`. Asserts nothing about time: the machine is shared and noisy.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from benches.route_load import RouteGateResult, measure, table, write_json

# pytest-benchmark's fixture, typed loosely (see test_gate_bench.py).
Benchmark = Any


@pytest.mark.timeout(300)
def test_route_latency_gate_on_vs_off(benchmark: Benchmark) -> None:
    # One round of the whole load: pytest-benchmark records its wall time, and --benchmark-only
    # (make bench) keeps the test because it uses the fixture.
    result: RouteGateResult = benchmark.pedantic(
        lambda: asyncio.run(measure(calls=2000, warmup=200, block=100)), rounds=1, iterations=1
    )
    print()
    print(table(result))
    print(f"wrote {write_json(result)}")
    assert result.gate_on.calls == result.gate_off.calls == 2000
