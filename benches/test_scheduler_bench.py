"""Micro-benchmark of the priority queue when a slot is free: the cost every request pays on the hot
path.

As in the other benches nothing asserts a time (the machine is shared and noisy): the figure is
printed as a ratio against baselines timed by the same loop in the same test, an `async with` over
a do-nothing context manager and an uncontended `asyncio.Semaphore`.
Run with `.venv/bin/pytest benches/test_scheduler_bench.py -p no:cacheprovider -q -s`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from types import TracebackType

from switchpoint.quota.queue import PriorityQueue
from switchpoint.request import Priority

ITERATIONS = 50_000


class _Nothing:
    async def __aenter__(self) -> None:
        return None

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None


async def _per_op_ns(op: Callable[[], Awaitable[None]], repeats: int = 5) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter_ns()
        for _ in range(ITERATIONS):
            await op()
        best = min(best, (time.perf_counter_ns() - start) / ITERATIONS)
    return best


async def test_admit_fast_path_against_baselines() -> None:
    queue = PriorityQueue("bench", 64)
    nothing = _Nothing()
    semaphore = asyncio.Semaphore(64)

    async def admit() -> None:
        async with queue.wait_turn(Priority.INTERACTIVE, None, 0.5):
            pass

    async def empty_context() -> None:
        async with nothing:
            pass

    async def uncontended_semaphore() -> None:
        async with semaphore:
            pass

    target = await _per_op_ns(admit)
    baselines = {
        "empty async with": await _per_op_ns(empty_context),
        "asyncio.Semaphore": await _per_op_ns(uncontended_semaphore),
    }
    print(f"\n[admit, free slot] {target / 1000:.3f} us/op")
    for name, ns in baselines.items():
        print(f"  vs {name:<20} {ns / 1000:.3f} us/op   ratio {target / ns:.1f}x")
    stats = queue.snapshot()
    assert stats.in_flight == 0
    assert stats.admitted_total == 5 * ITERATIONS
