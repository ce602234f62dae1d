"""What every `switchpoint bench` figure is made of: a value against a baseline of the same run,
and the latencies and percentiles behind the RPC figures."""

from __future__ import annotations

import statistics
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Figure:
    name: str
    value_us: float
    baseline_name: str
    baseline_us: float
    # True when switchpoint should beat the baseline (scoring vs Python): the ratio is a speedup.
    speedup: bool = False
    # True when what switchpoint adds is the figure to read (Chat over a provider call): the
    # table shows the difference next to the ratio.
    added: bool = False

    @property
    def ratio(self) -> float:
        """baseline / switchpoint for a speedup, switchpoint / baseline otherwise."""
        over, under = (
            (self.baseline_us, self.value_us) if self.speedup else (self.value_us, self.baseline_us)
        )
        return over / under if under else float("inf")


async def latencies_each(call: Callable[[T], Awaitable[object]], args: Iterable[T]) -> list[float]:
    """Microseconds of each `await call(arg)`, one at a time."""
    samples = []
    for arg in args:
        start = time.perf_counter()
        await call(arg)
        samples.append((time.perf_counter() - start) * 1e6)
    return samples


async def latencies(call: Callable[[], Awaitable[object]], calls: int) -> list[float]:
    return await latencies_each(lambda _: call(), range(calls))


def percentile(samples: list[float], q: int) -> float:
    return statistics.quantiles(sorted(samples), n=100)[q - 1] if q < 100 else max(samples)
