"""The PNG of `benches/proxy_overhead.py`: latency percentiles against request rate.

Left: p50/p95/p99 of Chat via the sidecar (solid) and direct to the provider (dashed); right: the
overhead (sidecar minus direct) at each percentile, with the 5 ms line the issue asks about. Rates
at which the load generator fell behind its schedule are shaded on both: they measure its core.
Needs matplotlib (a dev extra); uses the Agg backend, so no display is needed.
"""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from benches.proxy_overhead import ProxyOverheadResult

PERCENTILES = ("p50", "p95", "p99")
COLORS = {"p50": "tab:blue", "p95": "tab:orange", "p99": "tab:red"}


def plot_overhead(result: ProxyOverheadResult, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = [r.rate_per_s for r in result.rates]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    for q in PERCENTILES:
        left.plot(
            rates,
            [r.sidecar.latency_ms.get(q, float("nan")) for r in result.rates],
            marker="o",
            color=COLORS[q],
            label=f"sidecar {q}",
        )
        left.plot(
            rates,
            [r.direct.latency_ms.get(q, float("nan")) for r in result.rates],
            marker="x",
            linestyle="--",
            color=COLORS[q],
            label=f"direct {q}",
        )
        right.plot(
            rates,
            [r.overhead_ms.get(q, float("nan")) for r in result.rates],
            marker="o",
            color=COLORS[q],
            label=f"overhead {q}",
        )
        http_overheads = [r.http_overhead_ms for r in result.rates]
        if all(o is not None for o in http_overheads):
            right.plot(
                rates,
                [o.get(q, float("nan")) if o else float("nan") for o in http_overheads],
                marker="s",
                linestyle="-.",
                color=COLORS[q],
                label=f"HTTP front overhead {q}",
            )
    right.axhline(5.0, color="grey", linestyle=":", label="5 ms")
    step = min((b - a for a, b in pairwise(rates)), default=50.0) / 2
    for r in result.rates:
        if r.loadgen_saturated:
            for ax in (left, right):
                ax.axvspan(r.rate_per_s - step, r.rate_per_s + step, color="grey", alpha=0.15)
    if any(r.loadgen_saturated for r in result.rates):
        right.text(
            0.99,
            0.97,
            "shaded: load generator fell behind",
            transform=right.transAxes,
            ha="right",
            va="top",
            fontsize=8,
            color="dimgrey",
        )
    left.set(
        xlabel="request rate (req/s, open loop)",
        ylabel="latency from scheduled send (ms)",
        title=f"Chat latency, provider fixed {result.provider_latency_ms:g} ms",
    )
    right.set(
        xlabel="request rate (req/s, open loop)",
        ylabel="sidecar - direct (ms)",
        title="proxy overhead",
    )
    for ax in (left, right):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    m = result.machine
    fig.suptitle(
        f"{m['nproc']} CPUs, {m['cpu_model']}, Python {m['python']}",
        fontsize=9,
        y=0.02,
        va="bottom",
    )
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
