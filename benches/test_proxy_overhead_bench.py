"""Chat through the sidecar minus the provider called directly, open loop (see
`benches/proxy_overhead.py`).

Prints p50/p95/p99 of both and of the overhead at each rate, CPU time per request, and the highest
rate held with p99 overhead under 5 ms; writes `benches/results/proxy_overhead.json` and
`benches/results/overhead.png`. Asserts nothing about time: the machine is shared and noisy.
"""

from __future__ import annotations

from typing import Any

import pytest

from benches.plot import plot_overhead
from benches.proxy_overhead import PLOT_FILE, ProxyOverheadResult, measure, table, write_json

# pytest-benchmark's fixture, typed loosely (see test_gate_bench.py).
Benchmark = Any


@pytest.mark.timeout(300)
def test_chat_proxy_overhead(benchmark: Benchmark) -> None:
    result: ProxyOverheadResult = benchmark.pedantic(measure, rounds=1, iterations=1)
    print()
    print(table(result))
    print(f"wrote {write_json(result)}")
    print(f"wrote {plot_overhead(result, PLOT_FILE)}")
    assert [r.rate_per_s for r in result.rates] == [50.0, 100.0, 200.0, 400.0, 600.0, 800.0]
    assert all(r.sidecar.errors == r.direct.errors == 0 for r in result.rates)
    # The HTTP front's rows: measured without errors, or skipped with the reason printed.
    assert all(r.http.errors == 0 for r in result.rates if r.http is not None)
    assert (result.http_skipped is None) == all(r.http is not None for r in result.rates)
