"""Metric instruments: typed recording calls over one MeterProvider's `switchpoint.*` instruments.

OTel names and units are chosen for the Prometheus exposition they turn into: unit "s" adds
`_seconds`, counters get `_total`, and annotation units such as "{request}" add nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Final

from opentelemetry.metrics import CallbackOptions, Meter, Observation
from prometheus_client import CollectorRegistry

from switchpoint._native import RouteTally
from switchpoint.quota.labels import OTHER, Labels
from switchpoint.telemetry.tally import BucketHistogram, Tally

# Provider latency spans fast local models to slow long generations; the routing overhead is
# meant to be tens of microseconds, so its buckets start at 10 us to make regressions visible.
PROVIDER_LATENCY_BUCKETS: Final = (
    *(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5),
    *(1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0),
)
OVERHEAD_BUCKETS: Final = (
    *(0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005),
    *(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1),
)

# Breaker states as exported by switchpoint.breaker.state.
BREAKER_CLOSED: Final = 0
BREAKER_HALF_OPEN: Final = 1
BREAKER_OPEN: Final = 2

QueueSource = Callable[[], Mapping[str, int]]
BudgetSource = Callable[[], Iterable[tuple[Mapping[str, str], float]]]
BreakerSource = Callable[[], Iterable[tuple[str, int]]]


class Metrics:
    """Typed recording calls over the OTel instruments, one set per `Telemetry`."""

    def __init__(self, meter: Meter, registry: CollectorRegistry) -> None:
        # Counters and histograms recorded per request or per attempt aggregate in `tally` and
        # are read at scrape time (see there for why); the gauges below read their sources then.
        # Route calls the Rust router answers alone are counted and timed in `route_tally`.
        self.route_tally = RouteTally(OVERHEAD_BUCKETS)
        # Tenants and stages are the caller's to name: only known ones are labels of their own.
        self._labels = Labels()
        self._requests = Tally(("model", "outcome", "tenant", "stage"), self._routed_requests)
        self._tokens = Tally(("model", "tenant", "stage", "direction"))
        self._cost = Tally(("model", "tenant", "stage"))
        self._cache_hits = Tally(("kind",))
        self._cache_misses = Tally(("kind",))
        # Split and arm names come from the config, so these series stay few.
        self._split_requests = Tally(("split", "arm", "outcome"))
        self._split_cost = Tally(("split", "arm"))
        for name, unit, description, tally in (
            ("switchpoint.requests", "{request}", "Requests served, by outcome.", self._requests),
            (
                "switchpoint.tokens",
                "{token}",
                "Tokens sent to and received from models.",
                self._tokens,
            ),
            # Lower-case "usd" so Prometheus shows switchpoint_cost_usd_total, not _USD_total.
            ("switchpoint.cost", "usd", "Provider cost in US dollars.", self._cost),
            ("switchpoint.cache.hits", "{lookup}", "Response cache hits.", self._cache_hits),
            ("switchpoint.cache.misses", "{lookup}", "Response cache misses.", self._cache_misses),
            (
                "switchpoint.split.requests",
                "{request}",
                "Requests an A/B split sent to each arm, by outcome.",
                self._split_requests,
            ),
            ("switchpoint.split.cost", "usd", "Provider cost per A/B split arm.", self._split_cost),
        ):
            meter.create_observable_counter(
                name, callbacks=[tally.observe], unit=unit, description=description
            )
        self._provider_latency = BucketHistogram(
            "switchpoint_provider_latency_seconds",
            "Duration of one provider attempt.",
            ("model", "provider", "outcome"),
            PROVIDER_LATENCY_BUCKETS,
        )
        self._ttft = BucketHistogram(
            "switchpoint_provider_ttft_seconds",
            "Time to the first streamed token of a provider attempt.",
            ("model",),
            PROVIDER_LATENCY_BUCKETS,
        )
        self._overhead = BucketHistogram(
            "switchpoint_routing_overhead_seconds",
            "Time spent inside switchpoint per RPC, excluding provider time.",
            ("rpc",),
            OVERHEAD_BUCKETS,
            self._routed_overhead,
        )
        for histogram in (self._provider_latency, self._ttft, self._overhead):
            registry.register(histogram)
        # The gauges exist from the start and read whatever sources `observe` installed at scrape
        # time, so observe() can be called late, or again, without re-registering instruments.
        self._queues: QueueSource | None = None
        self._budgets: BudgetSource | None = None
        self._breakers: BreakerSource | None = None
        meter.create_observable_gauge(
            "switchpoint.queue.depth",
            callbacks=[self._observe_queues],
            unit="{request}",
            description="Requests waiting for a model's concurrency slot.",
        )
        meter.create_observable_gauge(
            "switchpoint.budget.remaining_usd",
            callbacks=[self._observe_budgets],
            unit="usd",
            description="US dollars left in a budget window.",
        )
        meter.create_observable_gauge(
            "switchpoint.breaker.state",
            callbacks=[self._observe_breakers],
            unit="{state}",
            description="Circuit breaker per model: 0 closed, 1 half-open, 2 open.",
        )

    def _routed_requests(self) -> list[tuple[tuple[str, ...], float]]:
        return [
            ((seen.model, "ok", seen.tenant, seen.stage), float(seen.calls))
            for seen in self.route_tally.requests()
        ]

    def _routed_overhead(self) -> list[tuple[tuple[str, ...], list[int], float]]:
        overhead = self.route_tally.overhead()
        counts = overhead.counts
        return [(("Route",), counts, overhead.sum_s)] if any(counts) else []

    def set_labels(self, labels: Labels) -> None:
        """From now on a tenant or stage outside `labels` is recorded as `other` (the Rust
        router's tally too); series already recorded keep their labels."""
        self._labels = labels
        self.route_tally.set_labels(sorted(labels.tenants), sorted(labels.stages), OTHER)

    def request(self, *, model: str, outcome: str, tenant: str, stage: str) -> None:
        labels = self._labels
        self._requests.add(1, (model, outcome, labels.tenant(tenant), labels.stage(stage)))

    def tokens(
        self, *, model: str, input_tokens: int, output_tokens: int, tenant: str, stage: str
    ) -> None:
        tenant, stage = self._labels.tenant(tenant), self._labels.stage(stage)
        self._tokens.add(input_tokens, (model, tenant, stage, "input"))
        self._tokens.add(output_tokens, (model, tenant, stage, "output"))

    def cost(self, *, model: str, usd: float, tenant: str, stage: str) -> None:
        self._cost.add(usd, (model, self._labels.tenant(tenant), self._labels.stage(stage)))

    def cache(self, *, hit: bool, kind: str) -> None:
        (self._cache_hits if hit else self._cache_misses).add(1, (kind,))

    def provider_latency(self, *, model: str, provider: str, seconds: float, outcome: str) -> None:
        self._provider_latency.record(seconds, (model, provider, outcome))

    def ttft(self, *, model: str, seconds: float) -> None:
        self._ttft.record(seconds, (model,))

    def routing_overhead(self, *, rpc: str, seconds: float) -> None:
        self._overhead.record(seconds, (rpc,))

    def split(self, *, split: str, arm: str, outcome: str, usd: float) -> None:
        self._split_requests.add(1, (split, arm, outcome))
        self._split_cost.add(usd, (split, arm))

    def observe(
        self,
        *,
        queues: QueueSource | None = None,
        budgets_remaining: BudgetSource | None = None,
        breakers: BreakerSource | None = None,
    ) -> None:
        """Install the gauge sources; a None argument leaves that source as it was."""
        if queues is not None:
            self._queues = queues
        if budgets_remaining is not None:
            self._budgets = budgets_remaining
        if breakers is not None:
            self._breakers = breakers

    def _observe_queues(self, _options: CallbackOptions) -> Iterable[Observation]:
        if self._queues is None:
            return []
        return [Observation(depth, {"model": model}) for model, depth in self._queues().items()]

    def _observe_budgets(self, _options: CallbackOptions) -> Iterable[Observation]:
        if self._budgets is None:
            return []
        return [Observation(usd, dict(labels)) for labels, usd in self._budgets()]

    def _observe_breakers(self, _options: CallbackOptions) -> Iterable[Observation]:
        if self._breakers is None:
            return []
        return [Observation(state, {"model": model}) for model, state in self._breakers()]
