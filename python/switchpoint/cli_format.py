"""Terminal rendering for `switchpoint stats` and `switchpoint route`: plain text tables that fit
the terminal width, no colour and no dependencies, so the output survives pipes and `watch`."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass

from switchpoint.v1 import router_pb2 as pb

ELLIPSIS = "…"
# The narrowest a shrinkable column gets before we give up and let the line overflow.
_MIN_SHRUNK = 6
_GAP = "  "

_LEVELS: dict[int, str] = {
    pb.DECISION_LEVEL_OVERRIDE: "override",
    pb.DECISION_LEVEL_STAGE: "stage",
    pb.DECISION_LEVEL_AUTO: "auto",
    pb.DECISION_LEVEL_FALLBACK: "fallback",
}


@dataclass(frozen=True)
class Column:
    header: str
    # "<" left, ">" right.
    align: str = ">"
    # The one column allowed to lose characters (with an ellipsis) when the table is too wide.
    shrink: bool = False


def truncate(text: str, width: int) -> str:
    if len(text) <= width:
        return text
    if width <= 1:
        return ELLIPSIS[:width]
    return text[: width - 1] + ELLIPSIS


def render_table(columns: Sequence[Column], rows: Sequence[Sequence[str]], max_width: int) -> str:
    """Aligned columns; when the natural width exceeds max_width the shrinkable column is cut."""
    widths = [max([len(c.header), *(len(r[i]) for r in rows)]) for i, c in enumerate(columns)]
    total = sum(widths) + len(_GAP) * (len(columns) - 1)
    for i, column in enumerate(columns):
        if column.shrink and total > max_width:
            cut = min(total - max_width, widths[i] - max(_MIN_SHRUNK, len(column.header)))
            if cut > 0:
                widths[i] -= cut
                total -= cut

    def line(cells: Sequence[str]) -> str:
        parts = []
        for cell, column, width in zip(cells, columns, widths, strict=True):
            text = truncate(cell, width)
            parts.append(text.ljust(width) if column.align == "<" else text.rjust(width))
        return _GAP.join(parts).rstrip()

    return "\n".join([line([c.header for c in columns]), *(line(r) for r in rows)])


def human_count(n: float) -> str:
    """1234 -> 1.2k, 5600000 -> 5.6M: token counts are read for magnitude, not digits."""
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= limit:
            return f"{n / limit:.1f}{suffix}"
    return f"{n:.0f}"


def ms(value: float) -> str:
    if value >= 10_000:
        return f"{value / 1000:.1f}s"
    return f"{value:.0f}" if value >= 10 else f"{value:.1f}"


def _latency_text(value: float) -> str:
    text = ms(value)
    return text if text.endswith("s") else f"{text} ms"


def usd(value: float) -> str:
    # Sub-cent costs are the common case for a single request, so small values keep precision.
    if value == 0:
        return "0"
    if value < 0.01:
        return f"{value:.6f}"
    return f"{value:.4f}" if value < 100 else f"{value:,.2f}"


def duration(seconds: float) -> str:
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


STATS_COLUMNS = (
    Column("model", "<", shrink=True),
    Column("reqs"),
    Column("err%"),
    Column("p50"),
    Column("p95"),
    Column("p99"),
    Column("ttft50"),
    Column("tok in"),
    Column("tok out"),
    Column("cost $"),
    Column("breaker", "<"),
    Column("queue"),
)


def _latency(summary: pb.LatencySummary) -> list[str]:
    # No samples yet: a 0 would read as "instant", which it is not.
    if summary.samples <= 0:
        return ["-", "-", "-"]
    return [ms(summary.p50_ms), ms(summary.p95_ms), ms(summary.p99_ms)]


def stats_row(model: pb.ModelStats) -> list[str]:
    err = f"{100.0 * model.errors / model.requests:.1f}" if model.requests else "-"
    ttft = ms(model.ttft.p50_ms) if model.ttft.samples > 0 else "-"
    breaker = model.breaker_state or "-"
    return [
        model.model,
        human_count(model.requests),
        err,
        *_latency(model.latency),
        ttft,
        human_count(model.input_tokens),
        human_count(model.output_tokens),
        usd(model.cost_usd),
        breaker,
        f"{model.queue_depth}/{model.in_flight}",
    ]


def render_stats(stats: pb.Stats, *, address: str, max_width: int) -> str:
    head = f"switchpoint at {address}: up {duration(stats.uptime_s)}, {len(stats.models)} models"
    if stats.shared_state:
        head += f", shared state {stats.shared_state}"
    if not stats.models:
        return f"{head}\n(no models)"
    table = render_table(STATS_COLUMNS, [stats_row(m) for m in stats.models], max_width)
    legend = "latency in ms (whole call; ttft50 = time to first token p50); queue = waiting/running"
    lines = [head, "", table, ""]
    if stats.config_error:
        lines.append(truncate(f"config reload refused: {stats.config_error}", max_width))
    if stats.cache.enabled:
        cache = stats.cache
        lines.append(
            f"cache: {cache.entries} entries, hit rate {cache.hit_rate:.0%} "
            f"({cache.exact_hits} exact, {cache.semantic_hits} semantic, {cache.misses} misses)"
        )
    for budget in stats.budgets:
        scope = ",".join(f"{k}={v}" for k, v in sorted(budget.scope.items()))
        name = f"{budget.name}[{scope}]" if scope else budget.name
        lines.append(
            truncate(
                f"budget {name} ({budget.window}): ${budget.remaining_usd:.4g} left "
                f"of ${budget.limit_usd:.4g}",
                max_width,
            )
        )
    for arm in stats.splits:
        lines.append(
            truncate(
                f"split {arm.split} arm {arm.arm} ({arm.share:.0%}): "
                f"{human_count(arm.requests)} reqs, {human_count(arm.errors)} errors, "
                f"${usd(arm.cost_usd)}",
                max_width,
            )
        )
    lines.append(truncate(legend, max_width))
    return "\n".join(lines)


ROUTE_COLUMNS = (
    Column("#"),
    Column("model", "<", shrink=True),
    Column("provider", "<"),
    Column("score"),
    Column("cost"),
    Column("latency"),
    Column("quality"),
    Column("est $"),
    Column("est ms"),
)


def level_name(level: int) -> str:
    return _LEVELS.get(level, "unspecified")


def _weights(weights: pb.Weights) -> str:
    return f"cost {weights.cost:.3g}, latency {weights.latency:.3g}, quality {weights.quality:.3g}"


def render_route(decision: pb.RouteDecision, *, max_width: int) -> str:
    lines = [
        f"model     {decision.model}",
        f"level     {level_name(decision.level)}",
        f"strategy  {decision.strategy or '-'} ({_weights(decision.weights)})",
    ]
    if decision.task_class:
        lines.append(f"task      {decision.task_class}, complexity {decision.complexity:.2f}")
    cost, latency = usd(decision.estimated_cost_usd), _latency_text(decision.estimated_latency_ms)
    lines.append(
        f"estimate  ${cost}, {latency}, "
        f"{decision.estimated_input_tokens} tokens in / {decision.estimated_output_tokens} out"
    )
    rows = [
        [
            str(rank),
            c.model,
            c.provider,
            f"{c.score:.3f}",
            f"{c.norm_cost:.3f}",
            f"{c.norm_latency:.3f}",
            f"{c.quality:.2f}",
            usd(c.estimated_cost_usd),
            ms(c.estimated_latency_ms) + ("*" if c.latency_observed else ""),
        ]
        for rank, c in enumerate(decision.candidates, start=1)
    ]
    lines += ["", "candidates (cost and latency normalised over the eligible set: 0 is best)"]
    lines.append(render_table(ROUTE_COLUMNS, rows, max_width) if rows else "(none)")
    if any(c.latency_observed for c in decision.candidates):
        lines.append("* latency from live samples, not the config prior")
    if decision.reasons:
        lines += ["", "reasons"]
        # Reasons can be long (they list excluded models); wrap rather than overflow the terminal.
        lines += [
            textwrap.fill(r, max_width, initial_indent="  - ", subsequent_indent="    ")
            for r in decision.reasons
        ]
    return "\n".join(lines)
