"""Route RPC latency with the token gate on versus off, measured in one process and one run.

Two real sidecars (the 4-model `routing_config()`, which never calls a provider for Route) run side
by side on loopback: one with a per-tenant rate limit and budget so large they never refuse, one
with no limits or budgets. Calls are sequential unary Route RPCs (concurrency 1), in alternating
blocks so that noise on the shared machine lands on both sides alike. The on/off ratio is the
figure to read; absolute microseconds depend on the machine.

Run directly (`.venv/bin/python -m benches.route_load`) or through
`benches/test_route_gate_bench.py` under `make bench`.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from switchpoint.v1 import router_pb2 as pb
from tests.sidecar_harness import (
    RunningSidecar,
    routing_config,
    running_sidecar,
    user,
    with_changes,
)

RESULTS_DIR = Path(__file__).parent / "results"
RESULT_FILE = RESULTS_DIR / "route_gate.json"

GATE_LIMITS: list[dict[str, Any]] = [
    {"name": "r", "match": {"tenant": "*"}, "rpm": 1e9, "tpm": 1e12, "concurrency": 100000}
]
GATE_BUDGETS: list[dict[str, Any]] = [
    {"name": "b", "match": {"tenant": "*"}, "window": "day", "limit_usd": 1e9}
]


@dataclass(frozen=True)
class Side:
    calls: int
    mean_us: float
    p50_us: float
    p90_us: float
    p99_us: float
    max_us: float


@dataclass(frozen=True)
class RouteGateResult:
    calls_per_side: int
    warmup_per_side: int
    block: int
    gate_on: Side
    gate_off: Side
    ratio_p50: float
    ratio_p99: float
    ratio_mean: float
    wall_s: float


def gate_on_config() -> dict[str, Any]:
    return with_changes(routing_config(), limits=GATE_LIMITS, budgets=GATE_BUDGETS)


def gate_off_config() -> dict[str, Any]:
    return routing_config()


def _request() -> pb.RouteRequest:
    return pb.RouteRequest(
        messages=user("hello there, route me please"),
        routing=pb.RoutingOptions(tenant="acme"),
    )


def _percentile(sorted_us: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    rank = max(1, round(q / 100.0 * len(sorted_us)))
    return sorted_us[min(rank, len(sorted_us)) - 1]


def _side(samples_ns: list[int]) -> Side:
    us = sorted(s / 1000.0 for s in samples_ns)
    return Side(
        calls=len(us),
        mean_us=statistics.fmean(us),
        p50_us=_percentile(us, 50),
        p90_us=_percentile(us, 90),
        p99_us=_percentile(us, 99),
        max_us=us[-1],
    )


async def _block(sidecar: RunningSidecar, request: pb.RouteRequest, n: int, out: list[int]) -> None:
    stub = sidecar.stub
    for _ in range(n):
        start = time.perf_counter_ns()
        decision = await stub.Route(request)
        out.append(time.perf_counter_ns() - start)
        if not decision.model:
            raise RuntimeError("Route returned no model")


async def measure(calls: int = 2000, warmup: int = 200, block: int = 100) -> RouteGateResult:
    """`calls` timed Route RPCs per side after `warmup` untimed ones, alternating `block`s."""
    request = _request()
    started = time.perf_counter()
    async with (
        running_sidecar(gate_on_config()) as on,
        running_sidecar(gate_off_config()) as off,
    ):
        sink: list[int] = []
        for start in range(0, warmup, block):
            await _block(on, request, min(block, warmup - start), sink)
            await _block(off, request, min(block, warmup - start), sink)
        on_ns: list[int] = []
        off_ns: list[int] = []
        done = 0
        first_on = True
        while done < calls:
            n = min(block, calls - done)
            # Alternate which side goes first, so neither always follows the other.
            order = [(on, on_ns), (off, off_ns)] if first_on else [(off, off_ns), (on, on_ns)]
            for sidecar, out in order:
                await _block(sidecar, request, n, out)
            first_on = not first_on
            done += n
        # The gate really was consulted on one side and absent on the other.
        if not on.sidecar.engine.gate.enabled or on.sidecar.engine.gate.gate.limit_count() == 0:
            raise RuntimeError("gate-on sidecar never created a rate-limit instance")
        if off.sidecar.engine.gate.enabled:
            raise RuntimeError("gate-off sidecar has limits or budgets")
    gate_on, gate_off = _side(on_ns), _side(off_ns)
    return RouteGateResult(
        calls_per_side=calls,
        warmup_per_side=warmup,
        block=block,
        gate_on=gate_on,
        gate_off=gate_off,
        ratio_p50=gate_on.p50_us / gate_off.p50_us,
        ratio_p99=gate_on.p99_us / gate_off.p99_us,
        ratio_mean=gate_on.mean_us / gate_off.mean_us,
        wall_s=time.perf_counter() - started,
    )


def table(result: RouteGateResult) -> str:
    rows = [
        f"Route RPC, concurrency 1, {result.calls_per_side} calls/side "
        f"(+{result.warmup_per_side} warm-up), blocks of {result.block}",
        f"{'':10} {'mean us':>10} {'p50 us':>10} {'p90 us':>10} {'p99 us':>10} {'max us':>10}",
    ]
    for name, side in (("gate ON", result.gate_on), ("gate OFF", result.gate_off)):
        rows.append(
            f"{name:10} {side.mean_us:10.1f} {side.p50_us:10.1f} {side.p90_us:10.1f} "
            f"{side.p99_us:10.1f} {side.max_us:10.1f}"
        )
    rows.append(
        f"{'on/off':10} {result.ratio_mean:10.3f} {result.ratio_p50:10.3f} {'':>10} "
        f"{result.ratio_p99:10.3f}"
    )
    return "\n".join(rows)


def write_json(result: RouteGateResult, path: Path = RESULT_FILE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": "route_gate", "unit": "microseconds", **asdict(result)}
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def main() -> None:
    result = asyncio.run(measure())
    print(table(result))
    print(f"wrote {write_json(result)}")


if __name__ == "__main__":
    main()
