"""In-process overhead of switchpoint.Router.chat and LiteLLM's Router against the same loopback
provider called directly (see `benches/library_overhead.py`).

Prints p50/p99 of each path and its overhead and ratio against the direct call; writes
`benches/results/library_overhead.json`. Asserts nothing about time: the machine is shared and
noisy.
"""

from __future__ import annotations

from typing import Any

import pytest

from benches.library_overhead import LibraryOverheadResult, measure, table, write_json

# pytest-benchmark's fixture, typed loosely (see test_gate_bench.py).
Benchmark = Any


@pytest.mark.timeout(300)
def test_library_overhead(benchmark: Benchmark) -> None:
    result: LibraryOverheadResult = benchmark.pedantic(measure, rounds=1, iterations=1)
    print()
    print(table(result))
    print(f"wrote {write_json(result)}")
    measured = [m.mode for m in result.modes]
    assert measured[:3] == ["direct", "direct-lean", "switchpoint"]
    assert all(m.errors == 0 for m in result.modes)
    # LiteLLM's row: measured, or skipped with the reason printed.
    assert ("litellm" in measured) == (result.litellm_skipped is None)
