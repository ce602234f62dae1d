"""Shared pieces of the multi-process overhead benches (`rpc_floor`, `proxy_overhead`).

- CPU pinning: the load generator on one core, the servers on another, where the
  machine has two or more; `python -m benches.loadgen pin CORE MODULE ARGS...` runs a module with
  its affinity set before it starts any thread, so every thread it makes inherits the mask.
- Server processes: the real sidecar (`python -m switchpoint.cli serve`) from a config dict, and
  any helper that announces its port on a line of its own output; output goes to a file, never a
  pipe, so a chatty process cannot block on a full pipe.
- The load itself: `run_load` hands a plan to the compiled load generator (`benches/loadgen/`,
  Rust), tens of microseconds of CPU per call where a Python client spends a millisecond, so it is
  not the bottleneck. `cargo build --release -p switchpoint-loadgen` runs on first use in a process
  (a no-op once built; cargo must be on PATH). Sequential calls, an open loop (latency from each
  call's *scheduled* send time, so queueing anywhere on the path is not hidden) and a closed loop;
  an 8-digit slot of the request can carry each call's sequence number.
- The same three in Python (`sequential`, `open_loop`, `closed_loop`) for `benches/profile.py`,
  where the sampled sidecar, not the client, is the subject.
- Per-process CPU time from /proc/PID/stat, and a description of the machine.

Percentiles are nearest-rank, as in `benches/route_load.py` (whose helper this reuses).
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import platform
import re
import runpy
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc

from benches.route_load import _percentile

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_SIDECAR_ANNOUNCE = re.compile(r"gRPC on [\d.]+:(\d+)")
# Open-loop sends sleep until this long before their time, then spin yielding to the loop.
SPIN_S = 0.002
PORT_ANNOUNCE = re.compile(r"^port (\d+)$", re.MULTILINE)


# -- pinning -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cores:
    """Where the load generator and the servers run; None: not pinned (fewer than two cores)."""

    available: tuple[int, ...]
    loadgen: int | None
    servers: int | None

    @property
    def pinned(self) -> bool:
        return self.loadgen is not None


def plan_cores() -> Cores:
    available = tuple(sorted(os.sched_getaffinity(0)))
    if len(available) < 2:
        return Cores(available, None, None)
    return Cores(available, available[0], available[-1])


@contextmanager
def pinned_self(core: int | None) -> Iterator[None]:
    """Pin this process's calling thread to `core` for the block, then restore its mask."""
    if core is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {core})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def _pinned_argv(core: int | None, module: str, args: Sequence[str]) -> list[str]:
    if core is None:
        return [sys.executable, "-m", module, *args]
    return [sys.executable, "-m", "benches.loadgen", "pin", str(core), module, *args]


# -- server processes ----------------------------------------------------------------------------


@dataclass
class ServerProcess:
    name: str
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def cpu_s(self) -> float:
        return process_cpu_s(self.process.pid)


def _wait_for_port(
    process: subprocess.Popen[bytes], log_path: Path, pattern: re.Pattern[str], name: str
) -> int:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        text = log_path.read_text(errors="replace")
        found = pattern.search(text)
        if found:
            return int(found.group(1))
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}:\n{text[-2000:]}")
        time.sleep(0.02)
    raise RuntimeError(f"{name} did not announce its port within {START_TIMEOUT_S} s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT_S)


@contextmanager
def server_process(
    name: str,
    module: str,
    args: Sequence[str],
    *,
    core: int | None,
    pattern: re.Pattern[str] = PORT_ANNOUNCE,
    env: dict[str, str] | None = None,
) -> Iterator[ServerProcess]:
    """Run `python -m module args` (pinned to `core`) until the block ends; SIGTERM stops it."""
    with tempfile.TemporaryDirectory(prefix=f"switchpoint-bench-{name}-") as tmp:
        log_path = Path(tmp) / "out.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                _pinned_argv(core, module, args),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            )
            try:
                port = _wait_for_port(process, log_path, pattern, name)
                yield ServerProcess(name, process, port, log_path)
            finally:
                _stop(process)


@contextmanager
def sidecar_process(
    config: dict[str, Any],
    *,
    core: int | None,
    env: dict[str, str] | None = None,
    log_level: str = "WARNING",
) -> Iterator[ServerProcess]:
    """The real sidecar, `switchpoint serve`, on a free loopback port with `config` (a dict),
    logging at `log_level`."""
    with tempfile.TemporaryDirectory(prefix="switchpoint-bench-config-") as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(json.dumps(config))  # JSON is YAML
        args = [
            "serve",
            "--config",
            str(path),
            "--grpc-address",
            "127.0.0.1:0",
            "--log-level",
            log_level,
        ]
        with server_process(
            "sidecar", "switchpoint.cli", args, core=core, pattern=_SIDECAR_ANNOUNCE, env=env
        ) as sidecar:
            yield sidecar


async def wait_ready(channel: grpc.aio.Channel, timeout_s: float = START_TIMEOUT_S) -> None:
    await asyncio.wait_for(channel.channel_ready(), timeout_s)


# -- CPU time and the machine --------------------------------------------------------------------


def process_cpu_s(pid: int) -> float:
    """utime + stime of a process (all its threads), seconds, from /proc/PID/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # the name may hold spaces; skip past it
    # fields[0] is field 3 (state): utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = plan_cores()
    return {
        "nproc": os.cpu_count(),
        "cpus_available": list(cores.available),
        "cpu_model": model,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "grpcio": grpc.__version__,
        "loadavg_at_start": list(os.getloadavg()),
    }


# -- load ----------------------------------------------------------------------------------------


Call = Callable[[], Awaitable[object]]


@dataclass
class OpenLoop:
    latencies_ms: list[float]  # from the scheduled send time, successful calls
    errors: int
    max_send_lag_ms: float
    wall_s: float


async def open_loop(call: Call, rate: float, n: int) -> OpenLoop:
    """`n` calls sent on a fixed schedule at `rate`/s, each as its own task; waits for all."""
    latencies: list[float] = []
    errors = 0

    async def one(scheduled: float) -> None:
        nonlocal errors
        try:
            await call()
        except Exception:
            errors += 1
            return
        latencies.append((time.perf_counter() - scheduled) * 1000.0)

    started = time.perf_counter()
    start = started + 0.005
    tasks: list[asyncio.Task[None]] = []
    max_lag = 0.0
    for i in range(n):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter() - SPIN_S
        if delay > 0:
            await asyncio.sleep(delay)
        # The loop's timers are ms-coarse (epoll rounds up): spin the rest, yielding to the loop.
        while time.perf_counter() < scheduled:  # noqa: ASYNC110 - a deadline, not an event
            await asyncio.sleep(0)
        max_lag = max(max_lag, time.perf_counter() - scheduled)
        tasks.append(asyncio.create_task(one(scheduled)))
    await asyncio.gather(*tasks)
    return OpenLoop(latencies, errors, max_lag * 1000.0, time.perf_counter() - started)


async def sequential(call: Call, n: int) -> list[float]:
    """`n` calls one after another (concurrency 1); latencies in microseconds."""
    out: list[float] = []
    for _ in range(n):
        start = time.perf_counter_ns()
        await call()
        out.append((time.perf_counter_ns() - start) / 1000.0)
    return out


async def closed_loop(call: Call, concurrency: int, duration_s: float) -> tuple[int, float]:
    """`concurrency` workers calling back to back for `duration_s`: (calls completed, seconds)."""
    done = 0
    started = time.perf_counter()
    deadline = started + duration_s

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await call()
            done += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done, time.perf_counter() - started


# -- the compiled load generator ----------------------------------------------------------------

LOADGEN_CRATE = "switchpoint-loadgen"
SLOT_DIGITS = b"00000000"  # the slot's placeholder in a request template
# Where permitted (CAP_SYS_NICE), the load generator runs ahead of what shares its core (the
# provider in proxy_overhead, strangers on a shared machine), so they do not delay its sends.
LOADGEN_NICE = -10
# An open loop whose sends ran later than this behind schedule (at its 99th percentile: one
# preemption by a stranger on a shared machine is not a rate the generator could not hold)
# measured the load generator, not the server.
SEND_LAG_LIMIT_US = 2000.0


@dataclass(frozen=True)
class GrpcTarget:
    """A unary gRPC method; `body` is the serialized request message."""

    address: str
    method: str
    body: bytes
    slot_offset: int | None = None  # where SLOT_DIGITS sit in `body`


@dataclass(frozen=True)
class HttpTarget:
    """An HTTP/1.1 POST of `body` to `url` (http://host:port/path)."""

    url: str
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)
    slot_offset: int | None = None


@dataclass(frozen=True)
class SequentialMode:
    calls: int
    max_seconds: float | None = None  # stop early after this long


@dataclass(frozen=True)
class OpenLoopMode:
    rate: float
    calls: int


@dataclass(frozen=True)
class ClosedLoopMode:
    callers: int
    seconds: float


@dataclass(frozen=True)
class Phase:
    target: str
    mode: SequentialMode | OpenLoopMode | ClosedLoopMode


@dataclass(frozen=True)
class PhaseReport:
    target: str
    mode: str
    calls: int
    latencies_us: list[float]  # successful calls; open loop: from the scheduled send
    errors: dict[str, int]  # by kind: "connect", "timeout", "grpc-status 14", "http-status 500"
    send_lags_us: list[float]  # open loop: each send's lag behind its schedule
    max_send_lag_us: float
    wall_s: float
    cpu_s: float  # the load generator's own
    watched_cpu_s: dict[str, float]  # of each watched process, over the phase


@dataclass(frozen=True)
class LoadReport:
    nice: int  # the nice value it ran at
    phases: list[PhaseReport]  # in the plan's order
    cpu_s: float
    wall_s: float


def held_schedule(phases: Sequence[PhaseReport]) -> bool:
    """Whether the open-loop `phases` sent on time (see SEND_LAG_LIMIT_US)."""
    lags = sorted(lag for p in phases for lag in p.send_lags_us)
    return not lags or _percentile(lags, 99) <= SEND_LAG_LIMIT_US


def slot_offset(body: bytes) -> int:
    """Where the one SLOT_DIGITS of a request template sits."""
    offset = body.find(SLOT_DIGITS)
    if offset < 0 or body.find(SLOT_DIGITS, offset + 1) >= 0:
        raise ValueError(f"the request holds {SLOT_DIGITS!r} {body.count(SLOT_DIGITS)} times")
    return offset


@functools.cache
def loadgen_binary() -> Path:
    """Builds the load generator (release; a no-op when up to date) and returns its path."""
    built = subprocess.run(
        ["cargo", "build", "--release", "-p", LOADGEN_CRATE, "--message-format=json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if built.returncode != 0:
        raise RuntimeError(f"building {LOADGEN_CRATE} failed:\n{built.stderr[-4000:]}")
    for line in built.stdout.splitlines():
        message = json.loads(line)
        built_binary = message.get("reason") == "compiler-artifact" and message.get("executable")
        if built_binary and message["target"]["name"] == LOADGEN_CRATE:
            return Path(message["executable"])
    raise RuntimeError(f"cargo built no {LOADGEN_CRATE} executable")


def _target_json(target: GrpcTarget | HttpTarget) -> dict[str, Any]:
    endpoint: dict[str, Any]
    if isinstance(target, GrpcTarget):
        endpoint = {"grpc": {"address": target.address, "method": target.method}}
    else:
        endpoint = {"http": {"url": target.url, "headers": dict(target.headers)}}
    return {**endpoint, "body_hex": target.body.hex(), "slot_offset": target.slot_offset}


def _mode_json(mode: SequentialMode | OpenLoopMode | ClosedLoopMode) -> dict[str, Any]:
    name = {SequentialMode: "sequential", OpenLoopMode: "open_loop", ClosedLoopMode: "closed_loop"}
    return {name[type(mode)]: asdict(mode)}


def plan_json(
    targets: Mapping[str, GrpcTarget | HttpTarget],
    phases: Sequence[Phase],
    *,
    core: int | None = None,
    timeout_s: float = 10.0,
    watch_pids: Mapping[str, int] | None = None,
) -> str:
    return json.dumps(
        {
            "targets": {name: _target_json(t) for name, t in targets.items()},
            "phases": [{"target": p.target, "mode": _mode_json(p.mode)} for p in phases],
            "timeout_ms": max(1, round(timeout_s * 1000)),
            "cpu": core,
            "nice": LOADGEN_NICE,
            "watch_pids": dict(watch_pids or {}),
        }
    )


def run_load(
    targets: Mapping[str, GrpcTarget | HttpTarget],
    phases: Sequence[Phase],
    *,
    core: int | None = None,
    timeout_s: float = 10.0,
    watch_pids: Mapping[str, int] | None = None,
) -> LoadReport:
    """Runs `phases` one after another in one load generator process (pinned to `core`), each
    against one of `targets`; connections persist across phases. `watch_pids`: processes whose
    CPU time each phase reports."""
    plan = plan_json(targets, phases, core=core, timeout_s=timeout_s, watch_pids=watch_pids)
    done = subprocess.run(
        [str(loadgen_binary())], input=plan, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"the load generator refused its plan:\n{done.stderr.strip()}")
    report = json.loads(done.stdout)
    return LoadReport(
        nice=report["nice"],
        phases=[PhaseReport(**p) for p in report["phases"]],
        cpu_s=report["cpu_s"],
        wall_s=report["wall_s"],
    )


def percentiles(values: list[float], qs: Sequence[float] = (50, 95, 99)) -> dict[str, float]:
    ordered = sorted(values)
    if not ordered:
        return {}
    out = {f"p{q:g}": _percentile(ordered, q) for q in qs}
    out["max"] = ordered[-1]
    return out


def _pin_main(argv: list[str]) -> None:
    """`pin CORE MODULE ARGS...`: set this process's affinity, then run MODULE as __main__."""
    if len(argv) < 3 or argv[0] != "pin":
        raise SystemExit("usage: python -m benches.loadgen pin CORE MODULE [ARGS...]")
    os.sched_setaffinity(0, {int(argv[1])})
    sys.argv = [argv[2], *argv[3:]]
    runpy.run_module(argv[2], run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    _pin_main(sys.argv[1:])
