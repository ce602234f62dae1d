"""Micro-benchmarks of the gate, the scorer and the latency tracker across the PyO3 boundary.

The machine is shared and noisy, so nothing here asserts a time: every figure is printed as a ratio
against a baseline measured in the same test (an empty call, a dict lookup, a pure-Python scorer),
timed by the same loop. pytest-benchmark records the main operation of each test as well.
Run with `make bench` or `.venv/bin/pytest benches --benchmark-only -p no:cacheprovider -q -s`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from switchpoint._native import Gate, LatencyTracker
from switchpoint.bench import figures as bench
from switchpoint.bench.figures import per_op_ns, python_score, scoring_setup
from switchpoint.config import parse_config
from switchpoint.quota.gate import TokenGate
from switchpoint.quota.scopes import RequestScope
from tests.sidecar_harness import routing_config, with_changes

# Noon UTC on a fixed day, so the `now` steps below never cross a day boundary.
NOON = 1_767_268_800.0 + 12 * 3600.0
STEP_S = 1e-6
BIG = 1e12

# `benchmark` is pytest-benchmark's fixture; typed loosely to keep the benches independent of its
# internal classes.
Benchmark = Any


async def _per_op_ns_async(
    op: Callable[[], Awaitable[object]], iterations: int, repeats: int = 5
) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter_ns()
        for _ in range(iterations):
            await op()
        best = min(best, (time.perf_counter_ns() - start) / iterations)
    return best


def _empty() -> None:
    return None


def _baselines(iterations: int) -> tuple[float, float]:
    """(empty Python call, dict lookup through a call) in ns per op."""
    table = {f"key{i}": i for i in range(64)}

    def lookup() -> int:
        return table["key17"]

    return per_op_ns(_empty, iterations), per_op_ns(lookup, iterations)


def _report(title: str, target_ns: float, baselines: dict[str, float]) -> None:
    print(f"\n[{title}] {target_ns / 1000:.3f} us/op")
    for name, ns in baselines.items():
        print(f"  vs {name:<22} {ns / 1000:.3f} us/op   ratio {target_ns / ns:.1f}x")


def _big_gate() -> tuple[Gate, list[int], list[int]]:
    gate = Gate()
    limits = [
        gate.add_rate_limit("rpm", rpm=BIG),
        gate.add_rate_limit("tpm", tpm=BIG),
        gate.add_rate_limit("all", rpm=BIG, tpm=BIG, concurrency=1_000_000),
    ]
    budgets = [
        gate.add_budget("day", limit_usd=BIG, window="day"),
        gate.add_budget("total", limit_usd=BIG, window="total"),
    ]
    return gate, limits, budgets


# -- (a) Gate through PyO3, (c) baselines ----------------------------------------------------------


def test_gate_check_reserve_settle(benchmark: Benchmark) -> None:
    gate, limits, budgets = _big_gate()
    clock = [NOON]

    def op() -> None:
        now = clock[0] = clock[0] + STEP_S
        gate.check(limits, budgets, 300, 0.001, now)
        reservation = gate.reserve(limits, budgets, 300, 0.001, now)
        gate.settle(reservation, 280, 0.0009, now)

    benchmark(op)
    iterations = 20_000
    target = per_op_ns(op, iterations)
    empty, lookup = _baselines(iterations)
    _report(
        "Gate check+reserve+settle, 3 limits 2 budgets",
        target,
        {"empty Python call": empty, "dict lookup (in a call)": lookup},
    )
    assert gate.outstanding() == 0


# -- (b) TokenGate ---------------------------------------------------------------------------------


def _token_gate() -> tuple[TokenGate, RequestScope, Any]:
    limits = [
        {"name": "r1", "match": {"tenant": "*"}, "rpm": BIG},
        {"name": "r2", "match": {"tenant": "*"}, "tpm": BIG},
        {"name": "r3", "match": {"tenant": "*"}, "rpm": BIG, "tpm": BIG, "concurrency": 1_000_000},
    ]
    budgets = [
        {"name": "b1", "match": {"tenant": "*"}, "window": "day", "limit_usd": BIG},
        {"name": "b2", "match": {"tenant": "*"}, "window": "total", "limit_usd": BIG},
    ]
    config = parse_config(with_changes(routing_config(), limits=limits, budgets=budgets))
    token_gate = TokenGate(config)
    return token_gate, RequestScope("acme", ""), config.models[0]


def test_token_gate_sync_path(benchmark: Benchmark) -> None:
    """The rule book's reserve (rule lookup and Gate.reserve in one call) + settle: what
    TokenGate.reserve does when nothing is refused."""
    token_gate, scope, model = _token_gate()
    gate, book = token_gate.gate, token_gate.book
    tenant, stage, name, provider = scope.tenant, scope.stage, model.name, model.provider

    def op() -> None:
        reservation = token_gate.asking(
            lambda: book.reserve(tenant, stage, name, provider, 300, 0.001, time.time())
        )
        assert reservation is not None
        gate.settle(reservation, 280, 0.0009, time.time())

    benchmark(op)
    iterations = 20_000
    target = per_op_ns(op, iterations)
    empty, lookup = _baselines(iterations)
    _report(
        "TokenGate rule lookup + reserve + settle (sync)",
        target,
        {"empty Python call": empty, "dict lookup (in a call)": lookup},
    )
    assert gate.outstanding() == 0


def test_token_gate_async_reserve(benchmark: Benchmark) -> None:
    """TokenGate.reserve (async) + Reservation.settle, timed in one event loop."""
    token_gate, scope, model = _token_gate()
    iterations = 20_000

    async def reserve_settle() -> None:
        reservation = await token_gate.reserve(scope, model, 300, 0.001)
        reservation.settle(280, 0.0009)

    async def noop() -> None:
        return None

    async def measure() -> tuple[float, float]:
        target = await _per_op_ns_async(reserve_settle, iterations)
        baseline = await _per_op_ns_async(noop, iterations)
        return target, baseline

    # One round: the whole async measurement, so pytest-benchmark has a row for it too.
    target, await_noop = benchmark.pedantic(lambda: asyncio.run(measure()), rounds=1, iterations=1)
    empty, lookup = _baselines(iterations)
    _report(
        "await TokenGate.reserve + settle",
        target,
        {
            "await empty coroutine": await_noop,
            "empty Python call": empty,
            "dict lookup (in a call)": lookup,
        },
    )
    assert token_gate.gate.outstanding() == 0


# -- (d) scoring -----------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [10, 100, 1000])
def test_score_rust_vs_python(benchmark: Benchmark, n: int) -> None:
    """Scoring `n` candidates through the router's entry point (a whole Route decision from its
    bytes) against the scoring alone in plain Python."""
    setup = scoring_setup(n)
    ranked, input_tokens, output_tokens = setup.ranked()

    def python() -> list[int]:
        return python_score(setup.specs, input_tokens, output_tokens, bench.WEIGHTS)

    # Same ranking, or the comparison means nothing.
    assert ranked == python()
    benchmark(setup.route)
    iterations = max(20, 20_000 // n)
    rust_ns = per_op_ns(setup.route, iterations)
    python_ns = per_op_ns(python, iterations)
    print(
        f"\n[score {n:>4} candidates] Router.route_wire {rust_ns / 1000:.2f} us   "
        f"pure Python {python_ns / 1000:.2f} us   speedup {python_ns / rust_ns:.1f}x"
    )


def test_latency_record(benchmark: Benchmark) -> None:
    """One observed call into a model's decayed TTFT/TPOT/total histograms, and reading the
    percentiles back, against an empty call and a dict lookup."""
    tracker = LatencyTracker()
    slot = tracker.slot("bench-model")

    def record() -> None:
        tracker.record(slot, 850.0, 120.0, 180)

    def percentiles() -> object:
        return tracker.percentiles(slot, "total")

    iterations = 100_000
    empty_ns, lookup_ns = _baselines(iterations)
    record_ns = per_op_ns(record, iterations)
    read_ns = per_op_ns(percentiles, iterations)
    baselines = {"empty Python call": empty_ns, "dict lookup": lookup_ns}
    _report("LatencyTracker.record", record_ns, baselines)
    _report("LatencyTracker.percentiles (after records)", read_ns, baselines)
    benchmark(record)
    seen = tracker.percentiles(slot, "total")
    p50, samples = seen.p50_ms, seen.samples
    # The records landed where they were aimed.
    assert samples > 0
    assert 800.0 <= p50 <= 900.0
