"""Route RPC against the floor of a Python gRPC service: an empty unary call, same run, same core.

Two server processes, both pinned to the same core (where the machine has two or more):

- the real sidecar, `switchpoint serve`, on the 4-model `routing_config()` (Route never calls a
  provider);
- the floor: a process running `grpc.aio.server()` under `asyncio.run`, as the sidecar does, with
  one generic unary method that returns b"" through identity (de)serializers: no protobuf, no
  servicer, no work.

The load generator is this process, pinned to another core. Three phases, each alternating
between the two servers so that noise on the shared machine lands on both alike:

1. concurrency 1: sequential calls, in alternating blocks, after a warm-up;
2. open loop at a fixed rate (default 300/s), in alternating 1 s segments; latency runs from each
   call's scheduled send time;
3. throughput: 8 concurrent callers back to back, in alternating segments; also the server
   process's CPU time per call.

The Route/empty ratios are the figures to read; absolute microseconds depend on the machine.
Targets from the issue (not asserted): p50 within 1.25x, p99 within 1.5x, throughput >= 80%.

Run directly (`.venv/bin/python -m benches.rpc_floor`, `--log-level INFO` for the sidecar's default
logging: a request line per call) or through
`benches/test_rpc_floor_bench.py` under `make bench`. `python -m benches.rpc_floor empty-server`
runs the floor server alone (it prints `port N`).
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc

from benches.loadgen import (
    closed_loop,
    machine,
    open_loop,
    pinned_self,
    plan_cores,
    process_cpu_s,
    sequential,
    server_process,
    sidecar_process,
    wait_ready,
)
from benches.route_load import _percentile
from switchpoint.bench.floor import EMPTY_METHOD, empty_rpc_server
from switchpoint.v1 import router_pb2 as pb
from switchpoint.v1 import router_pb2_grpc
from tests.sidecar_harness import routing_config, user

RESULTS_DIR = Path(__file__).parent / "results"
RESULT_FILE = RESULTS_DIR / "rpc_floor.json"
SIDES = ("route", "empty")
CALL_TIMEOUT_S = 10.0


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
class Latency:
    calls: int
    p50_us: float
    p90_us: float
    p99_us: float
    max_us: float


@dataclass(frozen=True)
class OpenLoopSide:
    calls: int
    errors: int
    p50_us: float
    p90_us: float
    p99_us: float
    max_us: float
    max_send_lag_us: float


@dataclass(frozen=True)
class Throughput:
    calls: int
    seconds: float
    per_s: float
    server_cpu_us_per_call: float


@dataclass(frozen=True)
class RpcFloorResult:
    sequential_calls: int
    warmup: int
    block: int
    rate_per_s: float
    open_loop_s: float
    concurrency: int
    throughput_s: float
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
    pinning: dict[str, Any]
    machine: dict[str, Any]
    wall_s: float
    targets: dict[str, float] = field(
        default_factory=lambda: {"p50_ratio_max": 1.25, "p99_ratio_max": 1.5, "throughput_min": 0.8}
    )


def _latency(us: list[float]) -> Latency:
    ordered = sorted(us)
    return Latency(
        calls=len(ordered),
        p50_us=_percentile(ordered, 50),
        p90_us=_percentile(ordered, 90),
        p99_us=_percentile(ordered, 99),
        max_us=ordered[-1],
    )


def _open_side(ms: list[float], errors: int, lag_ms: float) -> OpenLoopSide:
    us = sorted(v * 1000.0 for v in ms)
    return OpenLoopSide(
        calls=len(us) + errors,
        errors=errors,
        p50_us=_percentile(us, 50),
        p90_us=_percentile(us, 90),
        p99_us=_percentile(us, 99),
        max_us=us[-1],
        max_send_lag_us=lag_ms * 1000.0,
    )


# -- the load ------------------------------------------------------------------------------------


async def _run(
    route_port: int,
    empty_port: int,
    pids: dict[str, int],
    *,
    calls: int,
    warmup: int,
    block: int,
    rate: float,
    open_loop_s: float,
    concurrency: int,
    throughput_s: float,
) -> dict[str, Any]:
    route_channel = grpc.aio.insecure_channel(f"127.0.0.1:{route_port}")
    empty_channel = grpc.aio.insecure_channel(f"127.0.0.1:{empty_port}")
    try:
        await wait_ready(route_channel)
        await wait_ready(empty_channel)
        stub = router_pb2_grpc.RouterStub(route_channel)
        empty: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = empty_channel.unary_unary(
            EMPTY_METHOD
        )  # bytes in, bytes out
        request = pb.RouteRequest(
            messages=user("hello there, route me please"),
            routing=pb.RoutingOptions(tenant="acme"),
        )

        async def route_call() -> object:
            decision = await stub.Route(request, timeout=CALL_TIMEOUT_S)
            if not decision.model:
                raise RuntimeError("Route returned no model")
            return decision

        async def empty_call() -> object:
            return await empty(b"", timeout=CALL_TIMEOUT_S)

        callers: dict[str, Callable[[], Awaitable[object]]] = {
            "route": route_call,
            "empty": empty_call,
        }

        def order(index: int) -> tuple[str, ...]:
            return SIDES if index % 2 == 0 else SIDES[::-1]

        # Warm-up: connections, caches, the first-call paths of both servers.
        for side in SIDES:
            await sequential(callers[side], warmup)
            await open_loop(callers[side], rate, max(1, round(rate * 0.3)))

        seq: dict[str, list[float]] = {side: [] for side in SIDES}
        done, index = 0, 0
        while done < calls:
            n = min(block, calls - done)
            for side in order(index):
                seq[side].extend(await sequential(callers[side], n))
            done += n
            index += 1

        segments = max(1, round(open_loop_s))
        per_segment = round(rate * open_loop_s / segments)
        opened: dict[str, list[float]] = {side: [] for side in SIDES}
        errors = dict.fromkeys(SIDES, 0)
        lag = dict.fromkeys(SIDES, 0.0)
        for index in range(segments):
            for side in order(index):
                result = await open_loop(callers[side], rate, per_segment)
                opened[side].extend(result.latencies_ms)
                errors[side] += result.errors
                lag[side] = max(lag[side], result.max_send_lag_ms)

        thr_segments = 4
        counted = dict.fromkeys(SIDES, 0)
        seconds = dict.fromkeys(SIDES, 0.0)
        cpu = dict.fromkeys(SIDES, 0.0)
        for index in range(thr_segments):
            for side in order(index):
                before = process_cpu_s(pids[side])
                n, s = await closed_loop(callers[side], concurrency, throughput_s / thr_segments)
                cpu[side] += process_cpu_s(pids[side]) - before
                counted[side] += n
                seconds[side] += s
    finally:
        await route_channel.close()
        await empty_channel.close()
    return {
        "sequential": {side: _latency(seq[side]) for side in SIDES},
        "open_loop": {side: _open_side(opened[side], errors[side], lag[side]) for side in SIDES},
        "throughput": {
            side: Throughput(
                calls=counted[side],
                seconds=seconds[side],
                per_s=counted[side] / seconds[side],
                server_cpu_us_per_call=cpu[side] / max(1, counted[side]) * 1e6,
            )
            for side in SIDES
        },
    }


def measure(
    *,
    calls: int = 2000,
    warmup: int = 200,
    block: int = 100,
    rate: float = 300.0,
    open_loop_s: float = 5.0,
    concurrency: int = 8,
    throughput_s: float = 6.0,
    log_level: str = "WARNING",
) -> RpcFloorResult:
    """Both servers up, this process pinned away from them; every phase alternates the two. The
    sidecar logs at `log_level` (INFO: a request line per call)."""
    started = time.perf_counter()
    cores = plan_cores()
    described = machine()
    with (
        sidecar_process(routing_config(), core=cores.servers, log_level=log_level) as sidecar,
        server_process("empty", "benches.rpc_floor", ["empty-server"], core=cores.servers) as floor,
        pinned_self(cores.loadgen),
    ):
        out = asyncio.run(
            _run(
                sidecar.port,
                floor.port,
                {"route": sidecar.pid, "empty": floor.pid},
                calls=calls,
                warmup=warmup,
                block=block,
                rate=rate,
                open_loop_s=open_loop_s,
                concurrency=concurrency,
                throughput_s=throughput_s,
            )
        )
    seq, opened, thr = out["sequential"], out["open_loop"], out["throughput"]
    return RpcFloorResult(
        sequential_calls=calls,
        warmup=warmup,
        block=block,
        rate_per_s=rate,
        open_loop_s=open_loop_s,
        concurrency=concurrency,
        throughput_s=throughput_s,
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
        pinning={
            "pinned": cores.pinned,
            "loadgen_core": cores.loadgen,
            "servers_core": cores.servers,
        },
        machine=described,
        wall_s=time.perf_counter() - started,
    )


def table(result: RpcFloorResult) -> str:
    pin = result.pinning
    where = (
        f"load generator on CPU {pin['loadgen_core']}, both servers on CPU {pin['servers_core']}"
        if pin["pinned"]
        else "not pinned (fewer than two CPUs)"
    )
    m = result.machine
    rows = [
        f"Route RPC vs empty unary gRPC (the floor), same run; {where}",
        f"machine: {m['nproc']} CPUs, {m['cpu_model']}, Python {m['python']}, grpcio {m['grpcio']}",
        f"concurrency 1: {result.sequential_calls} calls/side (+{result.warmup} warm-up), "
        f"blocks of {result.block}",
        f"{'':12} {'p50 us':>10} {'p90 us':>10} {'p99 us':>10} {'max us':>10}",
    ]
    for name, s in (("Route", result.route_sequential), ("empty", result.empty_sequential)):
        rows.append(
            f"{name:12} {s.p50_us:10.1f} {s.p90_us:10.1f} {s.p99_us:10.1f} {s.max_us:10.1f}"
        )
    rows.append(
        f"{'Route/empty':12} {result.ratio_sequential_p50:10.3f} {'':>10} "
        f"{result.ratio_sequential_p99:10.3f}"
    )
    rows.append(
        f"open loop {result.rate_per_s:g}/s x {result.open_loop_s:g} s per side "
        f"(1 s alternating segments), latency from the scheduled send"
    )
    rows.append(
        f"{'':12} {'p50 us':>10} {'p90 us':>10} {'p99 us':>10} {'max us':>10} {'errors':>7} "
        f"{'lag us':>8}"
    )
    for name, o in (("Route", result.route_open_loop), ("empty", result.empty_open_loop)):
        rows.append(
            f"{name:12} {o.p50_us:10.1f} {o.p90_us:10.1f} {o.p99_us:10.1f} {o.max_us:10.1f} "
            f"{o.errors:7d} {o.max_send_lag_us:8.0f}"
        )
    rows.append(
        f"{'Route/empty':12} {result.ratio_open_loop_p50:10.3f} {'':>10} "
        f"{result.ratio_open_loop_p99:10.3f}"
    )
    rows.append(
        f"throughput, concurrency {result.concurrency}, {result.throughput_s:g} s per side "
        f"(4 alternating segments)"
    )
    rows.append(f"{'':12} {'calls':>10} {'calls/s':>10} {'srv CPU us/call':>16}")
    for name, t in (("Route", result.route_throughput), ("empty", result.empty_throughput)):
        rows.append(f"{name:12} {t.calls:10d} {t.per_s:10.0f} {t.server_cpu_us_per_call:16.1f}")
    rows.append(f"{'Route/empty':12} {'':>10} {result.ratio_throughput:10.3f}")
    rows.append(
        "targets: p50 ratio <= 1.25, p99 ratio <= 1.5, throughput ratio >= 0.8 (not asserted)"
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
    # `--log-level INFO`: the sidecar as it runs by default, a request line per call.
    args = sys.argv[1:]
    log_level = args[1] if args[:1] == ["--log-level"] and len(args) == 2 else "WARNING"
    result = measure(log_level=log_level)
    print(f"sidecar log level: {log_level}")
    print(table(result))
    print(f"wrote {write_json(result)}")


if __name__ == "__main__":
    main()
