"""ASGI stacks for the HTTP front against a bare asyncio responder, same run (see
`benches/asgi_stacks.py`).

Prints p50/p99 latency, throughput and server CPU per request at concurrency 1 and 8 for a JSON
and an SSE endpoint on each installed stack, with ratios to the baseline; writes
`benches/results/asgi_stacks.json`. Asserts nothing about time: the machine is shared and noisy.
"""

from __future__ import annotations

from typing import Any

import pytest

from benches.asgi_servers import STACKS
from benches.asgi_stacks import BASELINE, AsgiStacksResult, measure, table, write_json

# pytest-benchmark's fixture, typed loosely (see test_gate_bench.py).
Benchmark = Any


@pytest.mark.timeout(300)
def test_asgi_stacks(benchmark: Benchmark) -> None:
    result: AsgiStacksResult = benchmark.pedantic(measure, rounds=1, iterations=1)
    print()
    print(table(result))
    print(f"wrote {write_json(result)}")
    measured = [s.stack for s in result.stacks]
    assert BASELINE in measured
    assert sorted([*measured, *result.skipped]) == sorted(STACKS)
    assert all(load.calls > 0 and load.errors == 0 for s in result.stacks for load in s.loads)
