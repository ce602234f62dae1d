"""The priority queue in front of one deployment's concurrency limit (`quota.scheduler` keeps
one per deployment).

A request that finds a free slot and nobody waiting enters at once (one comparison and a few
counters). Otherwise it waits in one of three lanes (realtime, interactive, batch), and every freed
slot is handed straight to the next waiter:

- a waiter older than `max_age_s` goes first (the oldest of them): however much higher-priority
  traffic keeps arriving, a request that has waited that long is served in arrival order with
  everyone else who has, so no class starves;
- otherwise smooth weighted round-robin across the non-empty lanes (8:4:1 by default), FIFO within a
  lane, so under overload every class keeps its share instead of strict priority.

Deadlines are shed early: a request whose estimated wait plus service time overruns its deadline is
refused on arrival with `QueueRejected` (the servicer answers RESOURCE_EXHAUSTED), and one whose
deadline passes while it waits is refused at that moment rather than admitted too late. The queue
is bounded too: a request that finds `max_depth` others waiting is refused on arrival, and one
that has waited `max_wait_s` (with or without a deadline) is refused then, so a call without a
deadline never waits forever and a flood cannot grow the queue without end.

Single event loop, no locks: every state change happens between awaits.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType, TracebackType

from switchpoint.errors import SwitchpointError
from switchpoint.request import Priority

Clock = Callable[[], float]

# Lanes by priority, highest first; index = lane number. UNSPECIFIED is served as INTERACTIVE.
LANES = (Priority.REALTIME, Priority.INTERACTIVE, Priority.BATCH)
_LANE_OF_PRIORITY = (1, 0, 1, 2)  # indexed by Priority value
DEFAULT_WEIGHTS: Mapping[Priority, int] = MappingProxyType(
    {Priority.REALTIME: 8, Priority.INTERACTIVE: 4, Priority.BATCH: 1}
)
DEFAULT_WAIT_WINDOW = 1024
# Sweep a lane's cancelled/expired entries once they outnumber the live ones by this much, so a
# long queue under a cancellation storm neither leaks nor pays O(n) per cancellation.
_COMPACT_MIN_DEAD = 64


class QueueRejected(SwitchpointError):
    """The deployment's queue cannot admit the request before its deadline; retry after
    `retry_after_s` (the estimated time for the queue ahead of it to drain)."""

    def __init__(self, reason: str, retry_after_s: float) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after_s = retry_after_s


@dataclass(frozen=True, slots=True)
class QueueStats:
    """One deployment's queue at a moment. Wait percentiles cover the last `wait_samples` admitted
    requests (those admitted at once count as 0 s); `max_wait_s` is over the queue's lifetime."""

    name: str
    max_concurrency: int | None
    in_flight: int
    depth: int
    depth_by_priority: Mapping[Priority, int]
    admitted_by_priority: Mapping[Priority, int]
    admitted_total: int
    rejected_total: int
    cancelled_total: int
    wait_p50_s: float
    wait_p95_s: float
    wait_p99_s: float
    max_wait_s: float
    wait_samples: int


def _lane(priority: int) -> int:
    if not 0 <= priority < len(_LANE_OF_PRIORITY):
        raise ValueError(f"unknown priority {priority}")
    return _LANE_OF_PRIORITY[priority]


def _percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (0.0 when empty)."""
    if not ordered:
        return 0.0
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


class _Waiter:
    __slots__ = (
        "deadline",
        "enqueued_at",
        "expected_service_s",
        "future",
        "give_up_at",
        "lane",
        "live",
        "seq",
        "timer",
    )

    def __init__(
        self,
        lane: int,
        seq: int,
        enqueued_at: float,
        *,
        deadline: float | None,
        max_wait_s: float | None,
        expected_service_s: float,
        future: asyncio.Future[QueueRejected | None],
    ) -> None:
        self.lane = lane
        self.seq = seq
        self.enqueued_at = enqueued_at
        self.deadline = deadline
        # When the waiter is refused if still waiting: its deadline or its longest wait.
        self.give_up_at = deadline
        if max_wait_s is not None and (deadline is None or enqueued_at + max_wait_s < deadline):
            self.give_up_at = enqueued_at + max_wait_s
        self.expected_service_s = expected_service_s
        # Resolved with None when handed a slot, or with the rejection to raise. Never
        # set_exception: a waiter cancelled in the same tick would leave it unretrieved.
        self.future = future
        self.timer: asyncio.TimerHandle | None = None
        # False once the waiter has left the queue (granted, expired, cancelled); its lane entry
        # may linger until swept, which is why counts are kept separately.
        self.live = True


class QueueSlot:
    """The `async with` of one request: holds at most one slot and gives it back exactly once."""

    __slots__ = ("_deadline", "_expected_service_s", "_held", "_lane", "_queue")

    def __init__(
        self, queue: PriorityQueue, lane: int, deadline: float | None, expected_service_s: float
    ) -> None:
        self._queue = queue
        self._lane = lane
        self._deadline = deadline
        self._expected_service_s = expected_service_s
        self._held = False

    async def __aenter__(self) -> None:
        queue = self._queue
        # Fast path: a free slot and nobody ahead. No deadline check here: shedding is for
        # requests the queue would make wait; a call that starts now carries its own deadline.
        # The bookkeeping is inlined (as in __aexit__) because every request pays it.
        if queue._depth == 0 and (queue._capacity is None or queue._in_flight < queue._capacity):
            queue._in_flight += 1
            queue._admitted[self._lane] += 1
            queue._waits.append(0.0)
        else:
            await queue._wait(self._lane, self._deadline, self._expected_service_s)
        self._held = True

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._held:
            self._held = False
            queue = self._queue  # queue._release(), inlined
            queue._in_flight -= 1
            if queue._depth:
                queue._dispatch()


class PriorityQueue:
    """One deployment's queue: at most `max_concurrency` requests inside at once (None:
    unlimited, a call never waits but in-flight is still counted), at most `max_depth`
    waiting, none for longer than `max_wait_s` (None: no such limit)."""

    def __init__(
        self,
        name: str,
        max_concurrency: int | None,
        *,
        weights: Mapping[Priority, int] | None = None,
        max_age_s: float = 5.0,
        max_depth: int | None = None,
        max_wait_s: float | None = None,
        clock: Clock = time.monotonic,
        wait_window: int = DEFAULT_WAIT_WINDOW,
    ) -> None:
        _check_capacity(max_concurrency)
        if not max_age_s > 0:
            raise ValueError("max_age_s must be > 0")
        if wait_window < 1:
            raise ValueError("wait_window must be >= 1")
        self.name = name
        self._capacity = max_concurrency
        self._weights = lane_weights(weights)
        self._max_age_s = max_age_s
        self._depth_limit: int | None = None
        self._wait_limit_s: float | None = None
        self.set_bounds(max_depth, max_wait_s)
        self._clock = clock
        self._in_flight = 0
        self._depth = 0
        self._lanes: tuple[deque[_Waiter], ...] = (deque(), deque(), deque())
        self._lane_depth = [0, 0, 0]
        self._lane_dead = [0, 0, 0]
        self._credit = [0, 0, 0]  # smooth weighted round-robin state, per lane
        self._seq = 0
        self._admitted = [0, 0, 0]
        self._rejected_total = 0
        self._cancelled_total = 0
        self._waits: deque[float] = deque(maxlen=wait_window)
        self._max_wait_s = 0.0

    # -- public -----------------------------------------------------------------------------------

    def wait_turn(
        self, priority: int, deadline: float | None = None, expected_service_s: float = 0.0
    ) -> QueueSlot:
        """`async with queue.wait_turn(...)`: wait for a slot (or raise `QueueRejected`), hold it
        for the block. `deadline` is an absolute `clock()` time; `expected_service_s` is how long
        the call is expected to hold the slot, used only to estimate waits for shedding."""
        return QueueSlot(self, _lane(priority), deadline, expected_service_s)

    @property
    def max_concurrency(self) -> int | None:
        return self._capacity

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def depth(self) -> int:
        return self._depth

    def set_bounds(self, max_depth: int | None, max_wait_s: float | None) -> None:
        """The queue's limits (on config reload too): they apply to requests arriving from now;
        those already waiting keep the longest wait they arrived with."""
        if max_depth is not None and max_depth < 1:
            raise ValueError("max_depth must be >= 1 (or None for unbounded)")
        if max_wait_s is not None and not max_wait_s > 0:
            raise ValueError("max_wait_s must be > 0 (or None for no limit)")
        self._depth_limit = max_depth
        self._wait_limit_s = max_wait_s

    def set_max_concurrency(self, max_concurrency: int | None) -> None:
        """Resize on config reload. Raising it admits waiters now; lowering it lets the excess in
        flight finish and admits nobody until in-flight is under the new limit."""
        _check_capacity(max_concurrency)
        self._capacity = max_concurrency
        self._dispatch()

    def snapshot(self) -> QueueStats:
        ordered = sorted(self._waits)
        return QueueStats(
            name=self.name,
            max_concurrency=self._capacity,
            in_flight=self._in_flight,
            depth=self._depth,
            depth_by_priority=MappingProxyType(dict(zip(LANES, self._lane_depth, strict=True))),
            admitted_by_priority=MappingProxyType(dict(zip(LANES, self._admitted, strict=True))),
            admitted_total=sum(self._admitted),
            rejected_total=self._rejected_total,
            cancelled_total=self._cancelled_total,
            wait_p50_s=_percentile(ordered, 0.50),
            wait_p95_s=_percentile(ordered, 0.95),
            wait_p99_s=_percentile(ordered, 0.99),
            max_wait_s=self._max_wait_s,
            wait_samples=len(ordered),
        )

    # -- waiting ----------------------------------------------------------------------------------

    def _estimated_wait_s(self, lane: int, expected_service_s: float) -> float:
        # Slot releases needed before this request gets one: everyone in flight beyond what leaves
        # room for us (normally 1 when full; more after the limit was lowered) plus the waiters of
        # higher or equal priority, who will mostly be served first. Lower lanes are ignored: their
        # round-robin share and ageing make the estimate a little optimistic, which is the safe
        # side for shedding (the deadline timer still refuses at the deadline). Slots free at about
        # `capacity` per service time, each lasting `expected_service_s` (the same estimate is used
        # for calls already in flight, whose remaining time we do not know).
        capacity = self._capacity
        if capacity is None:
            return 0.0
        ahead = sum(self._lane_depth[: lane + 1])
        releases = max(0, self._in_flight + ahead + 1 - capacity)
        return releases * expected_service_s / capacity

    async def _wait(self, lane: int, deadline: float | None, expected_service_s: float) -> None:
        now = self._clock()
        estimate = self._estimated_wait_s(lane, expected_service_s)
        if self._depth_limit is not None and self._depth >= self._depth_limit:
            self._rejected_total += 1
            raise QueueRejected(
                f"deployment '{self.name}' already has {self._depth} calls waiting, the most "
                f"routing.queue_max_depth allows",
                retry_after_s=self._retry_after_s(lane, expected_service_s),
            )
        if deadline is not None and now + estimate + expected_service_s > deadline:
            self._rejected_total += 1
            raise QueueRejected(
                f"deployment '{self.name}' is at its concurrency limit: estimated wait "
                f"{estimate:.3g}s + service {expected_service_s:.3g}s exceeds the "
                f"{max(0.0, deadline - now):.3g}s left before the deadline",
                retry_after_s=self._retry_after_s(lane, expected_service_s),
            )
        loop = asyncio.get_running_loop()
        self._seq += 1
        waiter = _Waiter(
            lane,
            self._seq,
            now,
            deadline=deadline,
            max_wait_s=self._wait_limit_s,
            expected_service_s=expected_service_s,
            future=loop.create_future(),
        )
        if waiter.give_up_at is not None:
            waiter.timer = loop.call_later(max(0.0, waiter.give_up_at - now), self._expire, waiter)
        self._lanes[lane].append(waiter)
        self._lane_depth[lane] += 1
        self._depth += 1
        try:
            outcome = await waiter.future
        except BaseException:  # cancelled, or the coroutine closed: never leave a waiter behind
            self._abandon(waiter)
            raise
        if outcome is not None:
            raise outcome
        self._record_admitted(lane, self._clock() - now)

    def _retry_after_s(self, lane: int, expected_service_s: float) -> float:
        capacity = self._capacity or 1
        return max(self._estimated_wait_s(lane, expected_service_s), expected_service_s / capacity)

    def _expire(self, waiter: _Waiter) -> None:
        if not waiter.live or waiter.future.done():
            return  # granted, or cancelled and about to be abandoned by its own task
        assert waiter.give_up_at is not None
        remaining = waiter.give_up_at - self._clock()
        if remaining > 0:
            # The loop may fire a timer up to its clock resolution early; never refuse before
            # the moment itself.
            waiter.timer = asyncio.get_running_loop().call_later(remaining, self._expire, waiter)
            return
        self._forget(waiter)
        self._reject_late(waiter)

    def _reject_late(self, waiter: _Waiter) -> None:
        """Refuse a waiter (already forgotten) whose deadline or longest wait has passed."""
        self._rejected_total += 1
        waited = self._clock() - waiter.enqueued_at
        assert waiter.give_up_at is not None
        if waiter.give_up_at == waiter.deadline:
            why = f"deadline passed after {waited:.3g}s in the queue"
        else:
            limit = waiter.give_up_at - waiter.enqueued_at
            why = f"waited {waited:.3g}s in the queue, past routing.queue_max_wait_s ({limit:.3g}s)"
        waiter.future.set_result(
            QueueRejected(
                f"deployment '{self.name}': {why}",
                retry_after_s=self._retry_after_s(waiter.lane, waiter.expected_service_s),
            )
        )

    def _abandon(self, waiter: _Waiter) -> None:
        """The waiting task was cancelled (client gone, timeout). Leave the queue; if a slot was
        handed over in the same moment, pass it on instead of leaking it or freeing it twice."""
        future = waiter.future
        if future.done() and not future.cancelled():
            if future.result() is None:  # granted just before the cancel landed
                self._cancelled_total += 1
                self._release()
            return  # otherwise it was rejected and already counted
        future.cancel()
        if waiter.live:
            self._forget(waiter)
            self._cancelled_total += 1

    # -- handing slots over -----------------------------------------------------------------------

    def _release(self) -> None:
        self._in_flight -= 1
        if self._depth:
            self._dispatch()

    def _dispatch(self) -> None:
        """Hand free slots to waiters until either runs out."""
        while self._depth and (self._capacity is None or self._in_flight < self._capacity):
            waiter = self._choose()
            self._forget(waiter)
            if waiter.future.done():
                self._cancelled_total += 1  # cancelled; its task has not run yet to leave
            elif waiter.give_up_at is not None and self._clock() >= waiter.give_up_at:
                # Its timer has not run yet (same tick, or a clock the loop does not follow).
                self._reject_late(waiter)
            else:
                self._in_flight += 1
                waiter.future.set_result(None)

    def _choose(self) -> _Waiter:
        heads = [self._live_head(lane) for lane in range(len(LANES))]
        oldest: _Waiter | None = None
        for head in heads:
            if head is not None and (oldest is None or head.seq < oldest.seq):
                oldest = head
        assert oldest is not None  # _depth > 0
        if self._clock() - oldest.enqueued_at >= self._max_age_s:
            return oldest
        # Smooth weighted round-robin (as in nginx): every non-empty lane earns its weight, the
        # richest is served and pays the total. Over any run the lanes are served in proportion
        # to their weights, interleaved rather than in bursts.
        best = -1
        total = 0
        for lane, head in enumerate(heads):
            if head is None:
                continue
            self._credit[lane] += self._weights[lane]
            total += self._weights[lane]
            if best < 0 or self._credit[lane] > self._credit[best]:
                best = lane
        self._credit[best] -= total
        chosen = heads[best]
        assert chosen is not None
        return chosen

    def _live_head(self, lane: int) -> _Waiter | None:
        entries = self._lanes[lane]
        while entries:
            head = entries[0]
            if head.live:
                return head
            entries.popleft()
            self._lane_dead[lane] -= 1
        return None

    def _forget(self, waiter: _Waiter) -> None:
        """Take a live waiter out of the counts; its lane entry is dropped lazily."""
        waiter.live = False
        if waiter.timer is not None:
            waiter.timer.cancel()
            waiter.timer = None
        lane = waiter.lane
        self._depth -= 1
        self._lane_depth[lane] -= 1
        self._lane_dead[lane] += 1
        if self._lane_depth[lane] == 0:
            # An empty lane keeps no round-robin credit: it must not burst when it refills.
            self._credit[lane] = 0
            self._lanes[lane].clear()
            self._lane_dead[lane] = 0
        elif self._lane_dead[lane] > max(_COMPACT_MIN_DEAD, self._lane_depth[lane]):
            live = [w for w in self._lanes[lane] if w.live]
            self._lanes[lane].clear()
            self._lanes[lane].extend(live)
            self._lane_dead[lane] = 0

    def _record_admitted(self, lane: int, waited_s: float) -> None:
        self._admitted[lane] += 1
        self._waits.append(waited_s)
        self._max_wait_s = max(self._max_wait_s, waited_s)


def _check_capacity(max_concurrency: int | None) -> None:
    if max_concurrency is not None and max_concurrency < 1:
        raise ValueError("max_concurrency must be >= 1 (or None for unlimited)")


def lane_weights(weights: Mapping[Priority, int] | None) -> tuple[int, ...]:
    merged = dict(DEFAULT_WEIGHTS)
    for priority, weight in (weights or {}).items():
        if priority not in LANES:
            raise ValueError(f"weights: {Priority(priority).name} is not a lane (use INTERACTIVE)")
        if weight < 1:
            raise ValueError(f"weights: {Priority(priority).name} must be >= 1")
        merged[priority] = weight
    return tuple(merged[priority] for priority in LANES)
