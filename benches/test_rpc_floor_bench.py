"""Route RPC against an empty unary gRPC call, same run (see `benches/rpc_floor.py`).

Prints a table of p50/p99 microseconds at concurrency 1 and in open loop, throughput at
concurrency 8, and the Route/empty ratios; writes `benches/results/rpc_floor.json`. Asserts
nothing about time: the machine is shared and noisy.
"""

from __future__ import annotations

from typing import Any

import pytest

from benches.rpc_floor import RpcFloorResult, measure, table, write_json

# pytest-benchmark's fixture, typed loosely (see test_gate_bench.py).
Benchmark = Any


@pytest.mark.timeout(300)
def test_route_rpc_vs_empty_rpc_floor(benchmark: Benchmark) -> None:
    result: RpcFloorResult = benchmark.pedantic(measure, rounds=1, iterations=1)
    print()
    print(table(result))
    print(f"wrote {write_json(result)}")
    assert result.route_sequential.calls == result.empty_sequential.calls == 2000
    assert result.route_open_loop.errors == result.empty_open_loop.errors == 0
