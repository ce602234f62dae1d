"""Route RPC against the floor of a Python gRPC service: an empty unary call, same run, same core.

Two server processes, both pinned to the same core (where the machine has two or more):

- the real sidecar, `switchpoint serve`, on the 4-model `routing_config()` (Route never calls a
  provider);
- the floor: a process running `grpc.aio.server()` under `asyncio.run`, as the sidecar does, with
  one generic unary method that returns b"" through identity (de)serializers: no protobuf, no
  servicer, no work. It receives *the same request bytes* as Route.

The load comes from the compiled load generator (`benches/loadgen.py`, `run_load`), pinned to
another core; each call's prompt carries its sequence number in an 8-digit slot, so no two calls
send the same request (to either server). Three phases, each alternating between the two servers
so that noise on the shared machine lands on both alike:

1. concurrency 1: sequential calls, in alternating blocks, after a warm-up;
2. open loop at a fixed rate (default 300/s, at most half of what Route serves one call at a time),
   in alternating 1 s segments; latency runs from each call's scheduled send time; an open loop
   the load generator could not send on time (p99 lag over `SEND_LAG_LIMIT_US`) is flagged;
3. throughput: 8 concurrent callers back to back, in alternating segments; also the server
   process's CPU time per call.

The Route/empty ratios are the figures to read; absolute microseconds depend on the machine.
Targets from the issue (not asserted): p50 within 1.25x, p99 within 1.5x, throughput >= 0.85.

Run directly (`.venv/bin/python -m benches.rpc_floor`, `--log-level INFO` for the sidecar's default
logging: a request line per call; `--matrix` for prompt sizes x tokenizers, see
`benches/rpc_floor_matrix.py`) or through `benches/test_rpc_floor_bench.py` under `make bench`.
`python -m benches.rpc_floor empty-server` runs the floor server alone (it prints `port N`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc

from benches.loadgen import (
    SEND_LAG_LIMIT_US,
    SLOT_DIGITS,
    ClosedLoopMode,
    GrpcTarget,
    LoadReport,
    OpenLoopMode,
    Phase,
    PhaseReport,
    SequentialMode,
    held_schedule,
    machine,
    plan_cores,
    run_load,
    server_process,
    sidecar_process,
    slot_offset,
)
from benches.route_load import _percentile
from switchpoint.bench.floor import EMPTY_METHOD, empty_rpc_server
from switchpoint.v1 import router_pb2 as pb
from tests.sidecar_harness import routing_config, user

RESULTS_DIR = Path(__file__).parent / "results"
RESULT_FILE = RESULTS_DIR / "rpc_floor.json"
SIDES = ("route", "empty")
CALL_TIMEOUT_S = 10.0
ROUTE_METHOD = f"/{pb.DESCRIPTOR.services_by_name['Router'].full_name}/Route"
PROMPT = f"{SLOT_DIGITS.decode()} hello there, route me please"
# The open loop runs at most at this share of Route's rate one call at a time, so that a slow cell
# (a long prompt counted exactly) is measured under load rather than in an ever-growing queue.
RATE_SHARE_OF_SEQUENTIAL = 0.5
THROUGHPUT_SEGMENTS = 4
TARGETS = {"p50_ratio_max": 1.25, "p99_ratio_max": 1.5, "throughput_min": 0.85}


# -- the floor server (its own process) ----------------------------------------------------------


async def _serve_empty() -> None:
    server, port = empty_rpc_server()
    await server.start()
    print(f"port {port}", flush=True)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    await server.stop(0)


# -- results -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    calls: int = 2000  # per side at concurrency 1
    warmup: int = 200
    block: int = 100
    rate: float = 300.0
    open_loop_s: float = 5.0
    concurrency: int = 8
    throughput_s: float = 6.0
    sequential_s: float | None = None  # per side: fewer calls where they take longer than this


@dataclass(frozen=True)
class Latency:
    calls: int
    errors: int
    p50_us: float
    p90_us: float
    p99_us: float
    max_us: float


@dataclass(frozen=True)
class OpenLoopSide(Latency):
    max_send_lag_us: float
    loadgen_cpu_us_per_call: float


@dataclass(frozen=True)
class Throughput:
    calls: int
    errors: int
    seconds: float
    per_s: float
    server_cpu_us_per_call: float
    loadgen_cpu_us_per_call: float


@dataclass(frozen=True)
class Comparison:
    """Route against the floor on one request, every phase alternating the two."""

    prompt_bytes: int
    request_bytes: int
    rate_per_s: float
    route_sequential: Latency
    empty_sequential: Latency
    route_open_loop: OpenLoopSide
    empty_open_loop: OpenLoopSide
    route_throughput: Throughput
    empty_throughput: Throughput
    ratio_sequential_p50: float
    ratio_sequential_p99: float
    ratio_open_loop_p50: float
    ratio_open_loop_p99: float
    ratio_throughput: float
    # False: the load generator sent an open-loop call late; the open-loop figures are not figures.
    open_loop_on_schedule: bool


@dataclass(frozen=True)
class RpcFloorResult(Comparison):
    settings: Settings
    log_level: str
    pinning: dict[str, Any]
    machine: dict[str, Any]
    wall_s: float
    targets: dict[str, float] = field(default_factory=lambda: dict(TARGETS))


def _percentiles(us: list[float]) -> dict[str, float]:
    ordered = sorted(us)
    if not ordered:
        return dict.fromkeys(("p50_us", "p90_us", "p99_us", "max_us"), math.nan)
    return {
        "p50_us": _percentile(ordered, 50),
        "p90_us": _percentile(ordered, 90),
        "p99_us": _percentile(ordered, 99),
        "max_us": ordered[-1],
    }


def _errors(phases: Sequence[PhaseReport]) -> int:
    return sum(sum(p.errors.values()) for p in phases)


def _latency(phases: Sequence[PhaseReport]) -> Latency:
    us = [v for p in phases for v in p.latencies_us]
    return Latency(calls=sum(p.calls for p in phases), errors=_errors(phases), **_percentiles(us))


def _open_side(phases: Sequence[PhaseReport]) -> OpenLoopSide:
    calls = sum(p.calls for p in phases)
    return OpenLoopSide(
        calls=calls,
        errors=_errors(phases),
        **_percentiles([v for p in phases for v in p.latencies_us]),
        max_send_lag_us=max(p.max_send_lag_us for p in phases),
        loadgen_cpu_us_per_call=sum(p.cpu_s for p in phases) / max(1, calls) * 1e6,
    )


def _throughput(phases: Sequence[PhaseReport], side: str) -> Throughput:
    calls = sum(p.calls for p in phases)
    seconds = sum(p.wall_s for p in phases)
    return Throughput(
        calls=calls,
        errors=_errors(phases),
        seconds=seconds,
        per_s=(calls - _errors(phases)) / seconds,
        server_cpu_us_per_call=sum(p.watched_cpu_s[side] for p in phases) / max(1, calls) * 1e6,
        loadgen_cpu_us_per_call=sum(p.cpu_s for p in phases) / max(1, calls) * 1e6,
    )


# -- the load ------------------------------------------------------------------------------------


def route_request(prompt: str) -> bytes:
    """A Route request for `prompt`, serialized: the bytes both servers receive."""
    request = pb.RouteRequest(messages=user(prompt), routing=pb.RoutingOptions(tenant="acme"))
    return request.SerializeToString()


def check_route(port: int, body: bytes) -> None:
    """One Route call from a plain grpc client: the request is one the sidecar routes."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(ROUTE_METHOD)
        decision = pb.RouteDecision.FromString(call(body, timeout=CALL_TIMEOUT_S))
    if not decision.model:
        raise RuntimeError("Route returned no model")


def _order(index: int) -> tuple[str, ...]:
    return SIDES if index % 2 == 0 else SIDES[::-1]


def _by_side(
    labelled: list[tuple[str, Phase]], report: LoadReport, label: str, side: str
) -> list[PhaseReport]:
    return [
        r
        for (name, phase), r in zip(labelled, report.phases, strict=True)
        if name == label and phase.target == side
    ]


def compare(
    ports: dict[str, int],
    pids: dict[str, int],
    prompt: str,
    settings: Settings,
    core: int | None,
) -> Comparison:
    """Route (`ports["route"]`) against the floor (`ports["empty"]`) on `prompt`, in two load
    generator runs: concurrency 1 first, whose Route p50 bounds the open loop's rate."""
    body = route_request(prompt)
    check_route(ports["route"], body)
    offset = slot_offset(body)
    targets = {
        "route": GrpcTarget(f"127.0.0.1:{ports['route']}", ROUTE_METHOD, body, offset),
        "empty": GrpcTarget(f"127.0.0.1:{ports['empty']}", EMPTY_METHOD, body, offset),
    }
    s = settings
    blocks = math.ceil(s.calls / s.block)
    block_s = s.sequential_s / blocks if s.sequential_s else None
    first = [("warmup", Phase(side, SequentialMode(s.warmup))) for side in SIDES]
    for index in range(blocks):
        n = min(s.block, s.calls - index * s.block)
        first += [("seq", Phase(side, SequentialMode(n, block_s))) for side in _order(index)]
    one_at_a_time = run_load(targets, [p for _, p in first], core=core, timeout_s=CALL_TIMEOUT_S)
    seq = {side: _latency(_by_side(first, one_at_a_time, "seq", side)) for side in SIDES}

    rate = min(s.rate, RATE_SHARE_OF_SEQUENTIAL * 1e6 / seq["route"].p50_us)
    segments = max(1, round(s.open_loop_s))
    per_segment = max(1, round(rate * s.open_loop_s / segments))
    warm_open = max(1, round(rate * 0.3))
    second = [("warmup", Phase(side, OpenLoopMode(rate, warm_open))) for side in SIDES]
    for index in range(segments):
        second += [("open", Phase(side, OpenLoopMode(rate, per_segment))) for side in _order(index)]
    closed = ClosedLoopMode(s.concurrency, s.throughput_s / THROUGHPUT_SEGMENTS)
    for index in range(THROUGHPUT_SEGMENTS):
        second += [("thr", Phase(side, closed)) for side in _order(index)]
    loaded = run_load(
        targets, [p for _, p in second], core=core, timeout_s=CALL_TIMEOUT_S, watch_pids=pids
    )
    opened = {side: _open_side(_by_side(second, loaded, "open", side)) for side in SIDES}
    open_phases = [p for side in SIDES for p in _by_side(second, loaded, "open", side)]
    thr = {side: _throughput(_by_side(second, loaded, "thr", side), side) for side in SIDES}
    return Comparison(
        prompt_bytes=len(prompt.encode()),
        request_bytes=len(body),
        rate_per_s=rate,
        route_sequential=seq["route"],
        empty_sequential=seq["empty"],
        route_open_loop=opened["route"],
        empty_open_loop=opened["empty"],
        route_throughput=thr["route"],
        empty_throughput=thr["empty"],
        ratio_sequential_p50=seq["route"].p50_us / seq["empty"].p50_us,
        ratio_sequential_p99=seq["route"].p99_us / seq["empty"].p99_us,
        ratio_open_loop_p50=opened["route"].p50_us / opened["empty"].p50_us,
        ratio_open_loop_p99=opened["route"].p99_us / opened["empty"].p99_us,
        ratio_throughput=thr["route"].per_s / thr["empty"].per_s,
        open_loop_on_schedule=held_schedule(open_phases),
    )


def measure(settings: Settings | None = None, log_level: str = "WARNING") -> RpcFloorResult:
    """Both servers up, the load generator pinned away from them; every phase alternates the two.
    The sidecar logs at `log_level` (INFO: a request line per call)."""
    settings = settings or Settings()
    started = time.perf_counter()
    cores = plan_cores()
    described = machine()
    with (
        sidecar_process(routing_config(), core=cores.servers, log_level=log_level) as sidecar,
        server_process("empty", "benches.rpc_floor", ["empty-server"], core=cores.servers) as floor,
    ):
        comparison = compare(
            {"route": sidecar.port, "empty": floor.port},
            {"route": sidecar.pid, "empty": floor.pid},
            PROMPT,
            settings,
            cores.loadgen,
        )
    return RpcFloorResult(
        **{name: getattr(comparison, name) for name in Comparison.__dataclass_fields__},
        settings=settings,
        log_level=log_level,
        pinning=pinning(cores.loadgen, cores.servers),
        machine=described,
        wall_s=time.perf_counter() - started,
    )


def pinning(loadgen: int | None, servers: int | None) -> dict[str, Any]:
    return {"pinned": loadgen is not None, "loadgen_core": loadgen, "servers_core": servers}


def table(result: RpcFloorResult) -> str:
    pin, m, s = result.pinning, result.machine, result.settings
    where = (
        f"load generator on CPU {pin['loadgen_core']}, both servers on CPU {pin['servers_core']}"
        if pin["pinned"]
        else "not pinned (fewer than two CPUs)"
    )
    rows = [
        f"Route RPC vs empty unary gRPC (the floor), same {result.request_bytes}-byte requests, "
        f"same run; sidecar at {result.log_level}; {where}",
        f"machine: {m['nproc']} CPUs, {m['cpu_model']}, Python {m['python']}, grpcio {m['grpcio']}",
        f"concurrency 1: {result.route_sequential.calls} calls/side (+{s.warmup} warm-up), "
        f"blocks of {s.block}",
        f"{'':12} {'p50 us':>10} {'p90 us':>10} {'p99 us':>10} {'max us':>10} {'errors':>7}",
    ]
    for name, q in (("Route", result.route_sequential), ("empty", result.empty_sequential)):
        rows.append(
            f"{name:12} {q.p50_us:10.1f} {q.p90_us:10.1f} {q.p99_us:10.1f} {q.max_us:10.1f} "
            f"{q.errors:7d}"
        )
    rows.append(
        f"{'Route/empty':12} {result.ratio_sequential_p50:10.3f} {'':>10} "
        f"{result.ratio_sequential_p99:10.3f}"
    )
    rows.append(
        f"open loop {result.rate_per_s:.0f}/s x {s.open_loop_s:g} s per side "
        f"(1 s alternating segments), latency from the scheduled send"
    )
    rows.append(
        f"{'':12} {'p50 us':>10} {'p90 us':>10} {'p99 us':>10} {'max us':>10} {'errors':>7} "
        f"{'lag us':>8} {'loadgen CPU us/call':>20}"
    )
    for name, o in (("Route", result.route_open_loop), ("empty", result.empty_open_loop)):
        rows.append(
            f"{name:12} {o.p50_us:10.1f} {o.p90_us:10.1f} {o.p99_us:10.1f} {o.max_us:10.1f} "
            f"{o.errors:7d} {o.max_send_lag_us:8.0f} {o.loadgen_cpu_us_per_call:20.1f}"
        )
    rows.append(
        f"{'Route/empty':12} {result.ratio_open_loop_p50:10.3f} {'':>10} "
        f"{result.ratio_open_loop_p99:10.3f}"
    )
    if not result.open_loop_on_schedule:
        rows.append(
            f"{'':12} the load generator sent late (p99 lag > {SEND_LAG_LIMIT_US:.0f} us): "
            "these open-loop figures measure its core, not the servers"
        )
    rows.append(
        f"throughput, concurrency {s.concurrency}, {s.throughput_s:g} s per side "
        f"({THROUGHPUT_SEGMENTS} alternating segments)"
    )
    rows.append(
        f"{'':12} {'calls':>10} {'calls/s':>10} {'errors':>7} {'srv CPU us/call':>16} "
        f"{'loadgen CPU us/call':>20}"
    )
    for name, t in (("Route", result.route_throughput), ("empty", result.empty_throughput)):
        rows.append(
            f"{name:12} {t.calls:10d} {t.per_s:10.0f} {t.errors:7d} "
            f"{t.server_cpu_us_per_call:16.1f} {t.loadgen_cpu_us_per_call:20.1f}"
        )
    rows.append(f"{'Route/empty':12} {'':>10} {result.ratio_throughput:10.3f}")
    rows.append(
        f"targets: p50 ratio <= {TARGETS['p50_ratio_max']}, p99 ratio <= "
        f"{TARGETS['p99_ratio_max']}, throughput ratio >= {TARGETS['throughput_min']} "
        "(not asserted)"
    )
    return "\n".join(rows)


def write_json(result: RpcFloorResult, path: Path = RESULT_FILE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": "rpc_floor", "unit": "microseconds", **asdict(result)}
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def main() -> None:
    if sys.argv[1:] == ["empty-server"]:
        asyncio.run(_serve_empty())
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # INFO is the sidecar's default: a request line per call.
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument(
        "--matrix", action="store_true", help="prompt sizes x tokenizers (rpc_floor_matrix)"
    )
    args = parser.parse_args()
    if args.matrix:
        from benches import rpc_floor_matrix

        rpc_floor_matrix.main()
        return
    result = measure(log_level=args.log_level)
    print(table(result))
    print(f"wrote {write_json(result)}")


if __name__ == "__main__":
    main()
