"""ASGI stacks for the HTTP front, compared in one run (servers in `benches/asgi_servers.py`).

Each stack runs in its own process on the default asyncio loop, pinned alone on one CPU where the
machine has two; the compiled load generator (`benches/loadgen.py`, HTTP/1.1 keep-alive) on the
other sends closed loop at concurrency 1 and 8 to `POST /json` (~2 KB JSON in, ~1 KB out) and
`POST /sse` (20 events and `data: [DONE]`, latency to the stream's end). Reported per stack and
load: p50/p99 latency, throughput, and the server's CPU time per request (its utime+stime over the
phase), with ratios against `baseline`, a bare asyncio-streams HTTP/1.1 responder measured in the
same run. A stack whose package is not installed is listed as skipped.

Run `python -m benches.asgi_stacks` with httptools, hypercorn and granian installed beside
uvicorn and starlette, or through `benches/test_asgi_stacks_bench.py` under `make bench`; writes
`benches/results/asgi_stacks.json`.
"""

from __future__ import annotations

import importlib.util
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benches.asgi_servers import STACK_MODULES, STACKS, request_body
from benches.loadgen import (
    ClosedLoopMode,
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
    seconds_per_load: float
    stacks: list[StackResult]
    skipped: dict[str, str]  # stack -> why
    pinned: bool
    machine: dict[str, Any]
    wall_s: float


def missing_modules(stack: str) -> list[str]:
    return [m for m in STACK_MODULES[stack] if importlib.util.find_spec(m) is None]


def _load_result(endpoint: str, concurrency: int, phase: PhaseReport) -> LoadResult:
    lat = percentiles(phase.latencies_us, (50, 99))
    return LoadResult(
        endpoint=endpoint,
        concurrency=concurrency,
        calls=phase.calls,
        errors=sum(phase.errors.values()),
        p50_us=lat.get("p50", float("nan")),
        p99_us=lat.get("p99", float("nan")),
        per_s=phase.calls / phase.wall_s if phase.wall_s else 0.0,
        server_cpu_us_per_call=phase.watched_cpu_s["server"] / max(1, phase.calls) * 1e6,
    )


def measure_stack(
    stack: str, *, seconds: float, warmup: int, core: int | None, loadgen_core: int | None
) -> StackResult:
    body = request_body()
    with server_process(stack, "benches.asgi_servers", [stack], core=core) as server:
        base = f"http://127.0.0.1:{server.port}"
        headers = {"content-type": "application/json"}
        targets = {e: HttpTarget(f"{base}/{e}", body, headers=headers) for e in ENDPOINTS}
        # Untimed: eight connections open on each endpoint before anything is measured.
        phases = [Phase(e, ClosedLoopMode(8, 0.2)) for e in ENDPOINTS]
        phases += [Phase(e, SequentialMode(warmup)) for e in ENDPOINTS]
        loads = [(e, c) for c in CONCURRENCIES for e in ENDPOINTS]
        phases += [Phase(e, ClosedLoopMode(c, seconds)) for e, c in loads]
        report = run_load(targets, phases, core=loadgen_core, watch_pids={"server": server.pid})
    measured = report.phases[-len(loads) :]
    return StackResult(
        stack, [_load_result(e, c, p) for (e, c), p in zip(loads, measured, strict=True)]
    )


def measure(*, seconds: float = 2.0, warmup: int = 200) -> AsgiStacksResult:
    started = time.perf_counter()
    cores = plan_cores()
    skipped = {s: f"not installed: {', '.join(missing_modules(s))}" for s in STACKS}
    skipped = {s: why for s, why in skipped.items() if missing_modules(s)}
    results = [
        measure_stack(
            s, seconds=seconds, warmup=warmup, core=cores.servers, loadgen_core=cores.loadgen
        )
        for s in STACKS
        if s not in skipped
    ]
    return AsgiStacksResult(
        seconds_per_load=seconds,
        stacks=results,
        skipped=skipped,
        pinned=cores.pinned,
        machine=machine(),
        wall_s=time.perf_counter() - started,
    )


def table(result: AsgiStacksResult) -> str:
    m = result.machine
    rows = [
        f"ASGI stacks, closed loop {result.seconds_per_load:g} s per load, HTTP/1.1 keep-alive; "
        f"server {'alone on one CPU' if result.pinned else 'not pinned'}; machine: {m['nproc']} "
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
