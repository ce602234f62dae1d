"""`Router.stats()`: GetStats' answer (switchpoint.v1.Stats) as plain frozen dataclasses with the
same field names, built from the one place that computes it for every front."""

from __future__ import annotations

from dataclasses import dataclass

from switchpoint.v1 import router_pb2 as pb


@dataclass(frozen=True, slots=True)
class LatencySummary:
    p50_ms: float
    p95_ms: float
    p99_ms: float
    # Decayed sample weight behind the percentiles.
    samples: float

    @classmethod
    def of(cls, message: pb.LatencySummary) -> LatencySummary:
        return cls(message.p50_ms, message.p95_ms, message.p99_ms, message.samples)


@dataclass(frozen=True, slots=True)
class ModelStats:
    model: str
    provider: str
    requests: int
    errors: int
    input_tokens: int
    output_tokens: int
    cost_usd: float
    latency: LatencySummary
    ttft: LatencySummary
    tpot: LatencySummary
    breaker_state: str
    breaker_opens: int
    queue_depth: int
    in_flight: int
    queue_wait: LatencySummary
    queue_rejected: int

    @classmethod
    def of(cls, m: pb.ModelStats) -> ModelStats:
        return cls(
            model=m.model,
            provider=m.provider,
            requests=m.requests,
            errors=m.errors,
            input_tokens=m.input_tokens,
            output_tokens=m.output_tokens,
            cost_usd=m.cost_usd,
            latency=LatencySummary.of(m.latency),
            ttft=LatencySummary.of(m.ttft),
            tpot=LatencySummary.of(m.tpot),
            breaker_state=m.breaker_state,
            breaker_opens=m.breaker_opens,
            queue_depth=m.queue_depth,
            in_flight=m.in_flight,
            queue_wait=LatencySummary.of(m.queue_wait),
            queue_rejected=m.queue_rejected,
        )


@dataclass(frozen=True, slots=True)
class CacheStats:
    enabled: bool
    entries: int
    hits: int
    misses: int
    exact_hits: int
    semantic_hits: int
    hit_rate: float
    guard_rejections: int
    ambiguous_rejections: int
    evictions: int
    expired: int
    last_snapshot_error: str

    @classmethod
    def of(cls, c: pb.CacheStats) -> CacheStats:
        return cls(
            enabled=c.enabled,
            entries=c.entries,
            hits=c.hits,
            misses=c.misses,
            exact_hits=c.exact_hits,
            semantic_hits=c.semantic_hits,
            hit_rate=c.hit_rate,
            guard_rejections=c.guard_rejections,
            ambiguous_rejections=c.ambiguous_rejections,
            evictions=c.evictions,
            expired=c.expired,
            last_snapshot_error=c.last_snapshot_error,
        )


@dataclass(frozen=True, slots=True)
class BudgetLeft:
    name: str
    scope: dict[str, str]
    window: str
    limit_usd: float
    remaining_usd: float


@dataclass(frozen=True, slots=True)
class SplitArmStats:
    split: str
    arm: str
    share: float
    requests: int
    errors: int
    input_tokens: int
    output_tokens: int
    cost_usd: float


@dataclass(frozen=True, slots=True)
class Stats:
    models: tuple[ModelStats, ...]
    uptime_s: float
    # "" when shared state is not configured, "ok", or "degraded: <why>".
    shared_state: str
    # Why the last reload was refused; "" when it succeeded or none was tried.
    config_error: str
    config_version: int
    cache: CacheStats
    budgets: tuple[BudgetLeft, ...]
    splits: tuple[SplitArmStats, ...]


def stats_of(message: pb.Stats) -> Stats:
    return Stats(
        models=tuple(ModelStats.of(m) for m in message.models),
        uptime_s=message.uptime_s,
        shared_state=message.shared_state,
        config_error=message.config_error,
        config_version=message.config_version,
        cache=CacheStats.of(message.cache),
        budgets=tuple(
            BudgetLeft(b.name, dict(b.scope), b.window, b.limit_usd, b.remaining_usd)
            for b in message.budgets
        ),
        splits=tuple(
            SplitArmStats(
                s.split,
                s.arm,
                s.share,
                s.requests,
                s.errors,
                s.input_tokens,
                s.output_tokens,
                s.cost_usd,
            )
            for s in message.splits
        ),
    )
