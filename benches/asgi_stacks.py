"""ASGI stacks for the HTTP front, compared in one run (servers in `benches/asgi_servers.py`).

Each stack runs in its own process on the default asyncio loop, the servers on one CPU where the
machine has two (only the stack under load is busy); the compiled load generator
(`benches/loadgen.py`, HTTP/1.1 keep-alive) on the other sends closed loop at concurrency 1 and 8
to `POST /json` (~2 KB JSON in, ~1 KB out) and `POST /sse` (20 events and `data: [DONE]`, latency
to the stream's end). Reported per stack and load: p50/p99 latency, throughput, and the server's
CPU time per request (its utime+stime over the phase, every thread of it), with ratios against
`baseline`, a bare asyncio-streams HTTP/1.1 responder measured in the same run. The stacks take
turns at each load for several short rounds (pooled), so the drift of a shared machine falls on
all of them alike. A stack whose package is not installed is listed as skipped.

Run `python -m benches.asgi_stacks` with httptools, hypercorn and granian installed beside
uvicorn and starlette, or through `benches/test_asgi_stacks_bench.py` under `make bench`; writes
`benches/results/asgi_stacks.json`.
"""

from __future__ import annotations

import importlib.util
import json
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benches.asgi_servers import STACK_MODULES, STACKS, request_body
from benches.loadgen import (
    ClosedLoopMode,
    Cores,
    HttpTarget,
    Phase,
    PhaseReport,
    SequentialMode,
    machine,
    percentiles,
    plan_cores,
    run_load,
    server_process,
)

RESULT_FILE = Path(__file__).parent / "results" / "asgi_stacks.json"
ENDPOINTS = ("json", "sse")
CONCURRENCIES = (1, 8)
BASELINE = "baseline"


@dataclass(frozen=True)
class LoadResult:
    endpoint: str
    concurrency: int
    calls: int
    errors: int
    p50_us: float
    p99_us: float
    per_s: float
    server_cpu_us_per_call: float


@dataclass(frozen=True)
class StackResult:
    stack: str
    loads: list[LoadResult]


@dataclass(frozen=True)
class AsgiStacksResult:
    rounds: int
    seconds_per_load: float  # per round
    stacks: list[StackResult]
    skipped: dict[str, str]  # stack -> why
    pinned: bool
    machine: dict[str, Any]
    wall_s: float


def missing_modules(stack: str) -> list[str]:
    return [m for m in STACK_MODULES[stack] if importlib.util.find_spec(m) is None]


def _load_result(endpoint: str, concurrency: int, phases: list[PhaseReport]) -> LoadResult:
    """One load pooled over its rounds: percentiles of every call, totals over every phase."""
    lat = percentiles([us for p in phases for us in p.latencies_us], (50, 99))
    calls = sum(p.calls for p in phases)
    wall_s = sum(p.wall_s for p in phases)
    server_cpu_s = sum(p.watched_cpu_s[p.target.split("/")[0]] for p in phases)
    return LoadResult(
        endpoint=endpoint,
        concurrency=concurrency,
        calls=calls,
        errors=sum(sum(p.errors.values()) for p in phases),
        p50_us=lat.get("p50", float("nan")),
        p99_us=lat.get("p99", float("nan")),
        per_s=calls / wall_s if wall_s else 0.0,
        server_cpu_us_per_call=server_cpu_s / max(1, calls) * 1e6,
    )


def run_stacks(
    stacks: list[str], *, rounds: int, seconds: float, warmup: int, cores: Cores
) -> list[StackResult]:
    """Every stack's server up at once, one load generator run; the stacks take turns at each
    load, round after round, so drift on a shared machine falls on all of them alike."""
    body = request_body()
    headers = {"content-type": "application/json"}
    loads = [(e, c) for c in CONCURRENCIES for e in ENDPOINTS]
    with ExitStack() as running:
        servers = {
            s: running.enter_context(
                server_process(s, "benches.asgi_servers", [s], core=cores.servers)
            )
            for s in stacks
        }
        targets = {
            f"{s}/{e}": HttpTarget(f"http://127.0.0.1:{server.port}/{e}", body, headers=headers)
            for s, server in servers.items()
            for e in ENDPOINTS
        }
        # Untimed: eight connections open on every target before anything is measured.
        phases = [Phase(t, ClosedLoopMode(8, 0.2)) for t in targets]
        phases += [Phase(t, SequentialMode(warmup)) for t in targets]
        measured_from = len(phases)
        order = [(s, e, c) for _ in range(rounds) for e, c in loads for s in stacks]
        phases += [Phase(f"{s}/{e}", ClosedLoopMode(c, seconds)) for s, e, c in order]
        report = run_load(
            targets,
            phases,
            core=cores.loadgen,
            watch_pids={s: server.pid for s, server in servers.items()},
        )
    done = list(zip(order, report.phases[measured_from:], strict=True))
    return [
        StackResult(
            s,
            [_load_result(e, c, [p for key, p in done if key == (s, e, c)]) for e, c in loads],
        )
        for s in stacks
    ]


def measure(*, rounds: int = 3, seconds: float = 1.0, warmup: int = 200) -> AsgiStacksResult:
    started = time.perf_counter()
    cores = plan_cores()
    skipped = {s: f"not installed: {', '.join(missing_modules(s))}" for s in STACKS}
    skipped = {s: why for s, why in skipped.items() if missing_modules(s)}
    stacks = [s for s in STACKS if s not in skipped]
    return AsgiStacksResult(
        rounds=rounds,
        seconds_per_load=seconds,
        stacks=run_stacks(stacks, rounds=rounds, seconds=seconds, warmup=warmup, cores=cores),
        skipped=skipped,
        pinned=cores.pinned,
        machine=machine(),
        wall_s=time.perf_counter() - started,
    )


def table(result: AsgiStacksResult) -> str:
    m = result.machine
    rows = [
        f"ASGI stacks, closed loop, {result.rounds} rounds of {result.seconds_per_load:g} s per "
        "load, stacks in turn, HTTP/1.1 keep-alive; "
        f"servers {'on one CPU, load generator on another' if result.pinned else 'not pinned'}; "
        f"machine: {m['nproc']} "
        f"CPUs, {m['cpu_model']}, Python {m['python']}",
        "latency us to the whole answer (the SSE stream's end); x = ratio to baseline",
        f"{'stack':20} {'load':7} {'calls':>6} {'err':>4} {'p50':>7} {'p99':>7} {'req/s':>7} "
        f"{'CPU us/req':>10} {'x p50':>6} {'x CPU':>6}",
    ]
    base = next((s for s in result.stacks if s.stack == BASELINE), None)
    for stack in result.stacks:
        for load, ref in zip(stack.loads, base.loads if base else stack.loads, strict=True):
            rows.append(
                f"{stack.stack:20} {load.endpoint + ' c' + str(load.concurrency):7} "
                f"{load.calls:6d} {load.errors:4d} {load.p50_us:7.0f} {load.p99_us:7.0f} "
                f"{load.per_s:7.0f} {load.server_cpu_us_per_call:10.0f} "
                f"{load.p50_us / ref.p50_us:6.2f} "
                f"{load.server_cpu_us_per_call / ref.server_cpu_us_per_call:6.2f}"
            )
    for name, why in result.skipped.items():
        rows.append(f"{name:20} skipped: {why}")
    return "\n".join(rows)


def write_json(result: AsgiStacksResult, path: Path = RESULT_FILE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": "asgi_stacks", "unit": "microseconds", **asdict(result)}
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def main() -> None:
    result = measure()
    print(table(result))
    print(f"wrote {write_json(result)}")


if __name__ == "__main__":
    main()
