"""The priority queues of every deployment (`switchpoint.quota.queue` is one queue): created from
config, resized and re-bounded on reload, read for GetStats."""

from __future__ import annotations

import time
from collections.abc import Mapping

from switchpoint.quota.queue import (
    DEFAULT_WAIT_WINDOW,
    LANES,
    Clock,
    PriorityQueue,
    QueueRejected,
    QueueStats,
    lane_weights,
)
from switchpoint.request import Priority

__all__ = ["QueueRejected", "QueueStats", "Scheduler"]


class Scheduler:
    """One `PriorityQueue` per deployment. Deployments without a limit (None, or not listed) get
    an unlimited queue, created on first use, so in-flight counts cover every deployment. Every
    queue holds at most `max_depth` waiters, none longer than `max_wait_s` (None: unbounded)."""

    def __init__(
        self,
        limits: Mapping[str, int | None],
        *,
        weights: Mapping[Priority, int] | None = None,
        max_age_s: float = 5.0,
        max_depth: int | None = None,
        max_wait_s: float | None = None,
        clock: Clock = time.monotonic,
        wait_window: int = DEFAULT_WAIT_WINDOW,
    ) -> None:
        self._weights = lane_weights(weights)  # validate once, up front
        self._weights_by_priority = dict(zip(LANES, self._weights, strict=True))
        self._max_age_s = max_age_s
        self._max_depth = max_depth
        self._max_wait_s = max_wait_s
        self._clock = clock
        self._wait_window = wait_window
        self._queues: dict[str, PriorityQueue] = {}
        for name, limit in limits.items():
            self._queues[name] = self._new_queue(name, limit)

    def _new_queue(self, name: str, limit: int | None) -> PriorityQueue:
        return PriorityQueue(
            name,
            limit,
            weights=self._weights_by_priority,
            max_age_s=self._max_age_s,
            max_depth=self._max_depth,
            max_wait_s=self._max_wait_s,
            clock=self._clock,
            wait_window=self._wait_window,
        )

    def queue(self, name: str) -> PriorityQueue:
        found = self._queues.get(name)
        if found is None:
            found = self._queues[name] = self._new_queue(name, None)
        return found

    def update(self, limits: Mapping[str, int | None]) -> None:
        """Apply reloaded limits. Queues are kept (with their waiters and stats); deployments no
        longer listed become unlimited."""
        for name, queue in self._queues.items():
            if name not in limits:
                queue.set_max_concurrency(None)
        for name, limit in limits.items():
            existing = self._queues.get(name)
            if existing is None:
                self._queues[name] = self._new_queue(name, limit)
            else:
                existing.set_max_concurrency(limit)

    def set_bounds(self, max_depth: int | None, max_wait_s: float | None) -> None:
        """Apply reloaded queue bounds to every queue (see `PriorityQueue.set_bounds`)."""
        for queue in self._queues.values():
            queue.set_bounds(max_depth, max_wait_s)
        self._max_depth, self._max_wait_s = max_depth, max_wait_s

    def snapshot(self) -> dict[str, QueueStats]:
        return {name: queue.snapshot() for name, queue in self._queues.items()}
