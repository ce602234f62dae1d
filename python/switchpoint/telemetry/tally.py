"""Per-request metric aggregation that costs a dict update, not a trip through the OTel SDK.

Every RPC records a request count and its routing overhead, and every provider attempt records
tokens and cost. Through the SDK's synchronous instruments each of those measurements costs
microseconds of CPU (attribute hashing, view matching, a lock, a Measurement object), which was a
tenth of a Route call (docs/benchmarks.md). Here a measurement is one dict update (counters) or
a bisect and two additions (histograms), done on the event loop thread; the totals are read
only when /metrics is scraped:

- counters feed OTel *observable* counters, so they come out of the same exporter as before;
- histograms are a prometheus_client collector in the telemetry's own registry, because the OTel
  API has no asynchronous histogram. Names, units and bucket bounds are those the OTel exporter
  would give, so the exposition is unchanged (`switchpoint_routing_overhead_seconds_bucket`...).
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence

from opentelemetry.metrics import CallbackOptions, Observation
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

LabelValues = tuple[str, ...]
# Bucket bounds spelled as Prometheus clients spell them (1e-05, +Inf); untyped upstream.
_le: Callable[[float], str] = floatToGoString


# More of the same series kept elsewhere (the Rust router's `RouteTally`), added at scrape time.
ExtraTotals = Callable[[], Iterable[tuple[LabelValues, float]]]
ExtraSeries = Callable[[], Iterable[tuple[LabelValues, Sequence[int], float]]]


class Tally:
    """Running totals by label values, read by an OTel observable counter's callback."""

    def __init__(self, label_names: Sequence[str], extra: ExtraTotals | None = None) -> None:
        self._names = tuple(label_names)
        self._totals: dict[LabelValues, float] = {}
        self._extra = extra

    def add(self, amount: float, labels: LabelValues) -> None:
        totals = self._totals
        totals[labels] = totals.get(labels, 0.0) + amount

    def observe(self, _options: CallbackOptions) -> Iterable[Observation]:
        names = self._names
        # A copy: a scrape on the metrics thread must not iterate while the loop inserts.
        totals = dict(self._totals)
        for labels, amount in self._extra() if self._extra else ():
            totals[labels] = totals.get(labels, 0.0) + amount
        return [
            Observation(total, dict(zip(names, labels, strict=True)))
            for labels, total in totals.items()
        ]


class _Buckets:
    __slots__ = ("counts", "sum")

    def __init__(self, size: int) -> None:
        self.counts = [0] * size
        self.sum = 0.0


class BucketHistogram(Collector):
    """A Prometheus histogram with fixed upper bounds (inclusive, as Prometheus reads `le`)."""

    def __init__(
        self,
        name: str,
        documentation: str,
        label_names: Sequence[str],
        bounds: Sequence[float],
        extra: ExtraSeries | None = None,
    ) -> None:
        self._name = name
        self._documentation = documentation
        self._label_names = list(label_names)
        self._bounds = tuple(bounds)
        self._series: dict[LabelValues, _Buckets] = {}
        self._extra = extra

    def record(self, value: float, labels: LabelValues) -> None:
        series = self._series.get(labels)
        if series is None:
            series = self._series[labels] = _Buckets(len(self._bounds) + 1)
        # bisect_left: a value equal to a bound belongs to that bound's bucket (le is inclusive).
        series.counts[bisect_left(self._bounds, value)] += 1
        series.sum += value

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(
            self._name, self._documentation, labels=self._label_names, unit=""
        )
        edges = [*(_le(b) for b in self._bounds), _le(math.inf)]
        merged = {labels: (list(s.counts), s.sum) for labels, s in list(self._series.items())}
        for labels, extra_counts, extra_sum in self._extra() if self._extra else ():
            counts, total = merged.get(labels, ([0] * len(edges), 0.0))
            merged[labels] = (
                [a + b for a, b in zip(counts, extra_counts, strict=True)],
                total + extra_sum,
            )
        for labels, (counts, total) in merged.items():
            cumulative, buckets = 0, []
            for edge, count in zip(edges, counts, strict=True):
                cumulative += count
                buckets.append((edge, float(cumulative)))
            family.add_metric(list(labels), buckets, total)
        yield family
