"""The soak's report: latency and error mix per phase, the checks, the JSON in
benches/results/soak.json and a PNG of latency and resident memory over time."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benches.soak_checks import Check, Sample
from benches.soak_traffic import Call

RESULTS_DIR = Path(__file__).parent / "results"
RESULT_FILE = RESULTS_DIR / "soak.json"
PLOT_FILE = RESULTS_DIR / "soak.png"
PHASE_COLORS = {
    "warm-up": "white",
    "faults": "tab:orange",
    "redis-down": "tab:red",
    "after-reload": "tab:purple",
    "drain": "tab:green",
}


@dataclass(frozen=True)
class PhaseSummary:
    phase: str
    start_s: float
    calls: int
    ok: int
    p50_ms: float | None  # successful calls, from the scheduled send
    p99_ms: float | None
    max_ms: float | None
    by_status: dict[str, int]
    by_kind: dict[str, int]


def _percentile(ascending: list[float], q: float) -> float | None:
    """Nearest-rank percentile of an ascending list; None when it is empty."""
    if not ascending:
        return None
    rank = max(1, round(q / 100.0 * len(ascending)))
    return ascending[min(rank, len(ascending)) - 1]


def phase_summaries(calls: list[Call], phases: list[tuple[str, float]]) -> list[PhaseSummary]:
    out = []
    for name, start in phases:
        mine = [c for c in calls if c.phase == name]
        ok_ms = sorted(c.latency_ms for c in mine if c.status == "OK")
        out.append(
            PhaseSummary(
                phase=name,
                start_s=start,
                calls=len(mine),
                ok=len(ok_ms),
                p50_ms=_percentile(ok_ms, 50),
                p99_ms=_percentile(ok_ms, 99),
                max_ms=ok_ms[-1] if ok_ms else None,
                by_status=dict(Counter(c.status for c in mine).most_common()),
                by_kind=dict(Counter(c.kind for c in mine).most_common()),
            )
        )
    return out


def lag_summary(lags_s: list[float]) -> dict[str, float | None]:
    """How late the sends were against their schedule (ms): the open loop held if p99 is small."""
    ordered = sorted(lag * 1000.0 for lag in lags_s)
    return {"p50": _percentile(ordered, 50), "p99": _percentile(ordered, 99), "max": ordered[-1]}


def _ms(value: float | None) -> str:
    return f"{value:8.1f}" if value is not None else f"{'-':>8}"


def render(result: dict[str, Any]) -> str:
    lines = [
        f"soak: {result['calls']} calls open loop at {result['rate_per_s']:g}/s for "
        f"{result['seconds']:g} s (seed {result['seed']}), send lag p99 "
        f"{result['send_lag_ms']['p99']:.1f} ms, max {result['send_lag_ms']['max']:.1f} ms",
        "",
        f"{'phase':<13}{'calls':>7}{'ok':>7}{'p50 ms':>9}{'p99 ms':>9}  error mix",
    ]
    for phase in result["phases"]:
        errors = {s: n for s, n in phase["by_status"].items() if s != "OK"}
        mix = ", ".join(f"{s} {n}" for s, n in errors.items()) or "-"
        lines.append(
            f"{phase['phase']:<13}{phase['calls']:>7}{phase['ok']:>7}"
            f"{_ms(phase['p50_ms'])} {_ms(phase['p99_ms'])}  {mix}"
        )
    lines.append("")
    for check in result["checks"]:
        lines.append(f"[{'PASS' if check['passed'] else 'FAIL'}] {check['name']}")
        for key, value in check["detail"].items():
            lines.append(f"    {key}: {json.dumps(value, sort_keys=True)}")
    lines.append("")
    lines.append(f"faults drawn: {json.dumps(result['faults_drawn'], sort_keys=True)}")
    lines.append(f"provider requests: {json.dumps(result['provider_requests'], sort_keys=True)}")
    lines.append(f"chaos: {json.dumps(result['chaos'])}")
    return "\n".join(lines)


def result_json(
    *,
    settings: dict[str, Any],
    calls: list[Call],
    phases: list[tuple[str, float]],
    checks: list[Check],
    samples: list[Sample],
    extra: dict[str, Any],
) -> dict[str, Any]:
    return {
        **settings,
        "calls": len(calls),
        "phases": [asdict(p) for p in phase_summaries(calls, phases)],
        "checks": [asdict(c) for c in checks],
        "passed": all(c.passed for c in checks),
        "samples": [asdict(s) for s in samples],
        # Every call, for plotting again: [scheduled s, latency ms, status, kind, tenant].
        "call_series": [
            [round(c.scheduled_s, 3), round(c.latency_ms, 2), c.status, c.kind, c.tenant]
            for c in calls
        ],
        **extra,
    }


def write(result: dict[str, Any], path: Path = RESULT_FILE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return path


def plot(
    calls: list[Call],
    samples: list[Sample],
    phases: list[tuple[str, float]],
    end_s: float,
    path: Path = PLOT_FILE,
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 7), sharex=True)
    ok = [c for c in calls if c.status == "OK"]
    failed = [c for c in calls if c.status not in {"OK", "CANCELLED"}]
    top.scatter(
        [c.scheduled_s for c in ok], [c.latency_ms for c in ok], s=3, alpha=0.4, label="answered"
    )
    top.scatter(
        [c.scheduled_s for c in failed],
        [c.latency_ms for c in failed],
        s=6,
        color="tab:red",
        marker="x",
        label="error answer",
    )
    top.set(yscale="log", ylabel="latency from scheduled send (ms)")
    top.set_title("every call, by its scheduled send", pad=16)
    bottom.plot([s.t_s for s in samples], [s.rss_mib for s in samples], label="RSS (MiB)")
    fds = bottom.twinx()
    fds.plot([s.t_s for s in samples], [s.fds for s in samples], color="tab:gray", label="FDs")
    fds.set_ylabel("open file descriptors")
    bottom.set(xlabel="time since start (s)", ylabel="resident memory (MiB)")
    bounds = [*(start for _, start in phases[1:]), end_s]
    for (name, start), stop in zip(phases, bounds, strict=True):
        for ax in (top, bottom):
            ax.axvspan(start, stop, color=PHASE_COLORS.get(name, "white"), alpha=0.08)
        top.text(
            start, 1.0, f" {name}", transform=top.get_xaxis_transform(), va="bottom", fontsize=8
        )
    top.legend(fontsize=8, loc="upper right")
    bottom.legend(fontsize=8, loc="upper left")
    fds.legend(fontsize=8, loc="upper right")
    for ax in (top, bottom):
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
