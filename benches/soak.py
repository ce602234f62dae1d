"""Soak and chaos: minutes of mixed traffic against a sidecar whose providers fail at random,
whose Redis is killed and restarted and whose config is reloaded mid-run; then checks that nothing
was lost, leaked or mischarged (benches/soak_checks.py).

One process holds it all, as the test harness does: a real sidecar on a loopback port (INFO logs,
metrics on, shared state in a real redis-server started here), four loopback providers on their
own threads (benches/soak_faults.py), and the open-loop client (benches/soak_traffic.py). The run
goes through five phases, by share of `--seconds`:

    warm-up 20 %    no faults
    faults 25 %     providers fail at random (429/500/503, stalls, resets, malformed JSON)
    redis-down 15 % Redis stopped at the start (SIGTERM, no persistence; faults go on)
    after-reload 25 % Redis restarted empty, then the config reloaded (a budget limit changed)
    drain 15 %      faults off; then every call is awaited

`make soak` runs it for 5 minutes (`.venv/bin/python -m benches.soak --seconds 300`); it prints the
per-phase table and the checks, writes benches/results/soak.json and soak.png, and exits 1 if a
check failed. tests/test_soak.py runs it for 60 s in `make test`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benches import soak_report
from benches.soak_checks import (
    Check,
    Sample,
    check_answered,
    check_ledger,
    check_nothing_held,
    check_resources,
    check_server_view,
    open_fds,
    read_log,
    rss_mib,
    sample_resources,
)
from benches.soak_faults import (
    ADMIN_AUTH,
    ENV,
    RELOADED_BUDGET_USD,
    Providers,
    providers,
    sidecar_config,
)
from benches.soak_traffic import LONG_DEADLINE_S, Call, open_loop
from switchpoint.logs import configure_logging, unconfigure_logging
from switchpoint.v1 import admin_pb2, admin_pb2_grpc
from switchpoint.v1 import router_pb2 as pb
from tests.redis_server import RedisServer
from tests.sidecar_harness import RunningSidecar, running_sidecar, write_config

PHASE_SHARES = (
    ("warm-up", 0.20),
    ("faults", 0.25),
    ("redis-down", 0.15),
    ("after-reload", 0.25),
    ("drain", 0.15),
)
DEFAULT_SECONDS = 300.0
DEFAULT_RATE = 20.0
SEED = 20261207
# Every call carries a deadline of at most LONG_DEADLINE_S: past it (and this slack) it is hung.
AWAIT_SLACK_S = 5.0


def phase_starts(seconds: float) -> list[tuple[str, float]]:
    starts, at = [], 0.0
    for name, share in PHASE_SHARES:
        starts.append((name, at))
        at += share * seconds
    return starts


@dataclass
class Chaos:
    """What the chaos actions did, for the report and the checks."""

    events: list[dict[str, Any]] = field(default_factory=list)
    degraded_seen: bool = False
    reload_version: int = 0
    reload_ok: bool = False

    def note(self, started: float, event: str, **detail: Any) -> None:
        self.events.append(
            {"t_s": round(time.perf_counter() - started, 2), "event": event, **detail}
        )


async def _shared_state(sidecar: RunningSidecar) -> str:
    return (await sidecar.stub.GetStats(pb.StatsRequest(models=["steady-local"]))).shared_state


async def run_chaos(  # noqa: PLR0917 - the run's parts, each used
    sidecar: RunningSidecar,
    found: Providers,
    redis: RedisServer,
    config_path: Path,
    phases: list[tuple[str, float]],
    started: float,
    chaos: Chaos,
) -> None:
    """Fires each phase's action at its start."""
    for name, start in phases:
        await asyncio.sleep(max(0.0, started + start - time.perf_counter()))
        if name == "faults":
            found.set_faults(True)
            chaos.note(started, "faults on")
        elif name == "redis-down":
            await asyncio.to_thread(redis.stop)
            chaos.note(started, "redis killed")
            await _wait_for_degraded(sidecar, chaos, started)
        elif name == "after-reload":
            await asyncio.to_thread(redis.start)
            chaos.note(started, "redis restarted (empty)")
            await _reload(sidecar, found, redis, config_path, chaos, started)
        elif name == "drain":
            found.set_faults(False)
            chaos.note(started, "faults off")


async def _wait_for_degraded(sidecar: RunningSidecar, chaos: Chaos, started: float) -> None:
    for _ in range(100):  # bounded: the sync round notices within a few intervals
        state = await _shared_state(sidecar)
        if state.startswith("degraded"):
            chaos.degraded_seen = True
            chaos.note(started, "sidecar reports shared state degraded", state=state[:120])
            return
        await asyncio.sleep(0.1)


async def _reload(  # noqa: PLR0917 - the run's parts, each used
    sidecar: RunningSidecar,
    found: Providers,
    redis: RedisServer,
    config_path: Path,
    chaos: Chaos,
    started: float,
) -> None:
    write_config(config_path, sidecar_config(found, redis.url, budget_usd=RELOADED_BUDGET_USD))
    admin = admin_pb2_grpc.AdminStub(sidecar.channel)
    reply = await admin.ReloadConfig(admin_pb2.ReloadConfigRequest(), metadata=ADMIN_AUTH)
    chaos.reload_ok, chaos.reload_version = reply.ok, reply.version
    chaos.note(
        started, "config reloaded", ok=reply.ok, version=reply.version, errors=list(reply.errors)
    )


async def _check_chaos(sidecar: RunningSidecar, chaos: Chaos) -> Check:
    admin = admin_pb2_grpc.AdminStub(sidecar.channel)
    budgets = await admin.GetBudgets(admin_pb2.GetBudgetsRequest(), metadata=ADMIN_AUTH)
    limits = sorted({b.limit_usd for b in budgets.budgets})
    state = await _shared_state(sidecar)
    return Check(
        "chaos applied",
        chaos.degraded_seen
        and chaos.reload_ok
        and limits == [RELOADED_BUDGET_USD]
        and state == "ok",
        {
            "outage_reported_degraded": chaos.degraded_seen,
            "reload_ok": chaos.reload_ok,
            "config_version": chaos.reload_version,
            "budget_limits_after_reload": limits,
            "shared_state_at_end": state,
        },
    )


async def soak(*, seconds: float, rate: float, seed: int = SEED) -> dict[str, Any]:
    """Runs the soak and returns the result (see soak_report.result_json)."""
    phases = phase_starts(seconds)
    starts = dict(phases)
    warmup_end = starts["faults"]
    workdir = Path(tempfile.mkdtemp(prefix="switchpoint-soak-"))
    log_file = (workdir / "sidecar.log").open("w", encoding="utf-8")
    # The default's logging: JSON lines at INFO (here to a file, read back for the checks).
    configure_logging("INFO", stream=log_file)
    chaos = Chaos()
    try:
        with providers(seed) as found, RedisServer() as redis:
            config_path = workdir / "config.yaml"
            config = sidecar_config(found, redis.url)
            async with running_sidecar(config, ENV, config_path=config_path) as sidecar:
                started = time.perf_counter()
                samples: list[Sample] = []
                calls: list[Call] = []
                stop = asyncio.Event()
                sampler = asyncio.create_task(sample_resources(samples, started, calls, stop))
                chaos_task = asyncio.create_task(
                    run_chaos(sidecar, found, redis, config_path, phases, started, chaos)
                )

                def phase_at(t: float) -> str:
                    return [name for name, start in phases if start <= t][-1]

                tasks, lags = await open_loop(
                    sidecar,
                    calls,
                    rate=rate,
                    seconds=seconds,
                    seed=seed,
                    phase_at=phase_at,
                    started=started,
                )
                await chaos_task
                unfinished: set[asyncio.Task[None]] = set()
                if tasks:
                    _, unfinished = await asyncio.wait(
                        tasks, timeout=LONG_DEADLINE_S + AWAIT_SLACK_S
                    )
                for task in unfinished:
                    task.cancel()
                checks = [check_answered(calls, len(unfinished))]
                checks.append(await check_nothing_held(sidecar))
                checks.append(await check_ledger(sidecar, calls, redis))
                checks.append(await _check_chaos(sidecar, chaos))
                end_s = time.perf_counter() - started
                final = Sample(end_s, rss_mib(), open_fds(), 0)
                stop.set()
                await sampler
                samples.append(final)
                checks.append(
                    check_resources(samples, (0.0, warmup_end), starts["after-reload"], final)
                )
                metrics_port = sidecar.sidecar.metrics_port
            drawn, received = found.faults_drawn(), found.requests_received()
    finally:
        unconfigure_logging()
        log_file.close()
    # Read once the sidecar stopped: it writes the request lines still waiting as it stops.
    log = read_log(workdir / "sidecar.log")
    checks.insert(1, check_server_view(calls, log.requests))
    result = soak_report.result_json(
        settings={"seconds": seconds, "rate_per_s": rate, "seed": seed},
        calls=calls,
        phases=phases,
        checks=checks,
        samples=samples,
        extra={
            "send_lag_ms": soak_report.lag_summary(lags),
            "faults_drawn": drawn,
            "provider_requests": received,
            "chaos": chaos.events,
            "log_lines_by_level": dict(log.levels),
            "log_lines_with_traceback": log.tracebacks,
            "log_file": str(workdir / "sidecar.log"),
            "metrics_served": metrics_port is not None,
            "cpus": os.cpu_count(),
        },
    )
    result["_calls"] = calls  # for the plot; dropped before the JSON is written
    result["_end_s"] = end_s
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=DEFAULT_SECONDS)
    parser.add_argument("--rate", type=float, default=DEFAULT_RATE, help="calls per second")
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)
    result = asyncio.run(soak(seconds=args.seconds, rate=args.rate, seed=args.seed))
    calls: list[Call] = result.pop("_calls")
    end_s: float = result.pop("_end_s")
    print(soak_report.render(result))
    print(f"\nwrote {soak_report.write(result)}")
    phases = phase_starts(args.seconds)
    print(
        f"wrote {soak_report.plot(calls, [Sample(**s) for s in result['samples']], phases, end_s)}"
    )
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
