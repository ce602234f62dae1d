"""PNGs of `switchpoint eval` and benches/routing_eval.py: PGR against the strong share for two
models, quality against cost for several. matplotlib is imported only when a plot is asked for
(it is a dev extra); the Agg backend needs no display."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from switchpoint.errors import SwitchpointError
from switchpoint.routing.replay.metrics import CostQualityPoint, PgrCurve


def _pyplot() -> Any:
    try:
        import matplotlib  # noqa: PLC0415
    except ImportError:
        raise SwitchpointError("--png needs matplotlib (pip install matplotlib)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt


def pgr_png(curves: Mapping[str, PgrCurve], path: Path, *, title: str) -> Path:
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(6.5, 4.5))
    for name, curve in curves.items():
        axes.plot(100 * curve.strong_share, curve.pgr, label=f"{name} (APGR {curve.apgr:.3f})")
    axes.set_xlabel("calls to the strong model (%)")
    axes.set_ylabel("performance gap recovered")
    axes.set_title(title, fontsize=9)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right")
    return _save(plt, figure, path)


def pgr_panels_png(
    panels: Mapping[str, Mapping[str, PgrCurve]], path: Path, *, columns: int = 2
) -> Path:
    """One PGR plot per data set, side by side."""
    plt = _pyplot()
    rows = -(-len(panels) // columns)
    figure, grid = plt.subplots(rows, columns, figsize=(6 * columns, 4.2 * rows), squeeze=False)
    for axes, (title, curves) in zip(grid.flat, panels.items(), strict=False):
        for name, curve in curves.items():
            axes.plot(100 * curve.strong_share, curve.pgr, label=f"{name} ({curve.apgr:.3f})")
        axes.set_title(title)
        axes.set_xlabel("calls to the strong model (%)")
        axes.set_ylabel("PGR")
        axes.grid(alpha=0.3)
        axes.legend(loc="lower right", fontsize=7)
    for axes in list(grid.flat)[len(panels) :]:
        axes.set_visible(False)
    return _save(plt, figure, path)


def cost_quality_png(
    points: Sequence[CostQualityPoint],
    baselines: Mapping[str, Sequence[float]],
    singles: Mapping[str, tuple[float, float]],
    path: Path,
) -> Path:
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(6.5, 4.5))
    costs = [point.cost for point in points]
    axes.plot(costs, [point.quality for point in points], marker="o", label="predictor")
    for name, qualities in baselines.items():
        axes.plot(costs, qualities, linestyle="--", label=name)
    for model, (cost, quality) in singles.items():
        axes.scatter([cost], [quality], marker="s", color="black")
        axes.annotate(model, (cost, quality), textcoords="offset points", xytext=(4, 4))
    axes.set_xlabel("mean cost per call")
    axes.set_ylabel("mean score")
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right")
    return _save(plt, figure, path)


def _save(plt: Any, figure: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path
