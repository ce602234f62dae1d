"""Priority queues (quota.scheduler): limits, ordering, ageing, shedding, cancellation.

Time is a fake clock wherever ordering depends on it; the only real sleeps are a short deadline
and a few yields to let tasks reach the queue. Nothing asserts how fast anything ran.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from switchpoint.errors import SwitchpointError
from switchpoint.quota.queue import PriorityQueue, QueueRejected, QueueSlot
from switchpoint.quota.scheduler import Scheduler
from switchpoint.request import Priority

REALTIME, INTERACTIVE, BATCH = Priority.REALTIME, Priority.INTERACTIVE, Priority.BATCH


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


async def until(condition: Callable[[], bool], rounds: int = 10_000) -> None:
    """Yield to the loop until `condition` holds (tasks reaching the queue take a few steps)."""
    for _ in range(rounds):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never became true")


async def hold_slot(queue: PriorityQueue, priority: Priority = REALTIME) -> QueueSlot:
    """Take a slot from the test itself, so the test decides exactly when it is released."""
    admission = queue.admit(priority)
    await admission.__aenter__()
    return admission


async def release(admission: QueueSlot) -> None:
    await admission.__aexit__(None, None, None)


async def enter(
    queue: PriorityQueue,
    priority: Priority,
    order: list[str] | None = None,
    label: str = "",
    *,
    deadline: float | None = None,
    service: float = 0.0,
) -> None:
    async with queue.admit(priority, deadline, service):
        if order is not None:
            order.append(label)


def admitted_total_is(queue: PriorityQueue, count: int) -> Callable[[], bool]:
    return lambda: queue.snapshot().admitted_total == count


def spawn(tasks: list[asyncio.Task[None]], coro: Coroutine[Any, Any, None]) -> None:
    tasks.append(asyncio.create_task(coro))


async def test_free_slot_enters_at_once_and_counts() -> None:
    queue = PriorityQueue("d", 2)
    async with queue.admit(INTERACTIVE):
        assert queue.in_flight == 1
        async with queue.admit(BATCH, deadline=None, expected_service_s=1.0):
            assert queue.in_flight == 2
    stats = queue.snapshot()
    assert (stats.in_flight, stats.depth, stats.admitted_total) == (0, 0, 2)
    assert stats.admitted_by_priority[INTERACTIVE] == 1
    assert stats.admitted_by_priority[BATCH] == 1
    assert stats.wait_p99_s == 0.0


async def test_free_slot_is_not_shed_even_with_a_tight_deadline() -> None:
    # Shedding is for requests the queue would make wait; with a slot free the call itself
    # carries its deadline.
    clock = FakeClock()
    queue = PriorityQueue("d", 1, clock=clock)
    async with queue.admit(REALTIME, deadline=clock.now + 0.1, expected_service_s=10.0):
        assert queue.in_flight == 1
    assert queue.snapshot().rejected_total == 0


async def test_concurrency_is_never_exceeded_under_churn_and_cancellation() -> None:
    rng = random.Random(7)
    limit = 3
    queue = PriorityQueue("d", limit)
    inside = 0
    peak = 0
    entered = 0

    async def worker() -> None:
        nonlocal inside, peak, entered
        async with queue.admit(rng.choice(list(Priority))):
            entered += 1
            inside += 1
            peak = max(peak, inside)
            assert queue.in_flight <= limit
            try:
                for _ in range(rng.randrange(4)):
                    await asyncio.sleep(0)
            finally:  # cancellation can land inside the block too
                inside -= 1

    tasks = [asyncio.create_task(worker()) for _ in range(400)]
    cancelled = 0
    for task in tasks:
        if rng.random() < 0.2:
            await asyncio.sleep(0)
            cancelled += task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)

    assert peak == limit
    assert all(r is None or isinstance(r, asyncio.CancelledError) for r in results)
    stats = queue.snapshot()
    assert (stats.in_flight, stats.depth) == (0, 0)
    assert stats.admitted_total + stats.cancelled_total == len(tasks)
    # A task cancelled inside the block was admitted; one cancelled while waiting was not.
    finished = sum(r is None for r in results)
    cancelled_inside = entered - finished
    assert stats.admitted_total == entered
    assert stats.cancelled_total == len(tasks) - finished - cancelled_inside


async def test_fifo_within_a_class() -> None:
    queue = PriorityQueue("d", 1, clock=FakeClock())
    holder = await hold_slot(queue)
    order: list[str] = []
    tasks: list[asyncio.Task[None]] = []
    for i in range(30):
        spawn(tasks, enter(queue, INTERACTIVE, order, str(i)))
        await until(lambda: queue.depth == len(tasks))
    await release(holder)
    await asyncio.gather(*tasks)
    assert order == [str(i) for i in range(30)]


async def test_unspecified_shares_the_interactive_lane() -> None:
    queue = PriorityQueue("d", 1, clock=FakeClock())
    holder = await hold_slot(queue)
    order: list[str] = []
    tasks: list[asyncio.Task[None]] = []
    for i, priority in enumerate([Priority.UNSPECIFIED, INTERACTIVE] * 3):
        spawn(tasks, enter(queue, priority, order, str(i)))
        await until(lambda: queue.depth == len(tasks))
    stats = queue.snapshot()
    assert stats.depth_by_priority == {REALTIME: 0, INTERACTIVE: 6, BATCH: 0}
    await release(holder)
    await asyncio.gather(*tasks)
    assert order == [str(i) for i in range(6)]


async def test_weighted_fairness_matches_8_4_1_when_all_classes_are_backlogged() -> None:
    # The fake clock never moves, so ageing never applies and the order is pure round-robin.
    queue = PriorityQueue("d", 1, clock=FakeClock())
    holder = await hold_slot(queue)
    order: list[str] = []
    tasks: list[asyncio.Task[None]] = []
    for _ in range(200):
        for priority in (BATCH, INTERACTIVE, REALTIME):
            spawn(tasks, enter(queue, priority, order, priority.name))
    await until(lambda: queue.depth == len(tasks))
    await release(holder)
    await asyncio.gather(*tasks)

    served = Counter(order[:260])  # 20 rounds of 8 + 4 + 1, all lanes still backlogged
    assert abs(served["REALTIME"] - 160) <= 2
    assert abs(served["INTERACTIVE"] - 80) <= 2
    assert abs(served["BATCH"] - 20) <= 2
    # Interleaved, not in bursts: every 13 consecutive admissions include each class.
    for start in range(0, 260 - 13, 13):
        assert set(order[start : start + 13]) == {"REALTIME", "INTERACTIVE", "BATCH"}


async def _batch_wait_under_realtime_flood(max_age_s: float) -> float:
    """A batch waiter queued ahead of a realtime flood that refills as it drains; each realtime
    call holds the only slot for 1 s of fake time. Returns how long the batch request waited."""
    clock = FakeClock()
    start = clock.now
    queue = PriorityQueue("d", 1, max_age_s=max_age_s, clock=clock)
    holder = await hold_slot(queue)
    batch_admitted_at: float | None = None
    tasks: list[asyncio.Task[None]] = []

    async def batch() -> None:
        nonlocal batch_admitted_at
        async with queue.admit(BATCH):
            batch_admitted_at = clock.now

    async def realtime() -> None:
        async with queue.admit(REALTIME):
            clock.advance(1.0)
            if batch_admitted_at is None:
                spawn(tasks, realtime())

    spawn(tasks, batch())
    await until(lambda: queue.depth == 1)
    for _ in range(5):
        spawn(tasks, realtime())
    await until(lambda: queue.depth == 6)
    await release(holder)
    while not all(task.done() for task in tasks):
        await asyncio.gather(*tasks)
    assert batch_admitted_at is not None
    assert queue.snapshot().in_flight == 0
    return batch_admitted_at - start


async def test_ageing_admits_a_batch_waiter_despite_a_realtime_flood() -> None:
    max_age_s, service_s = 2.5, 1.0
    waited = await _batch_wait_under_realtime_flood(max_age_s)
    # Served at the first release after it aged: at most one service time late.
    assert waited <= max_age_s + service_s
    # Without ageing (in effect), round-robin alone leaves it waiting its 1-in-9 turn.
    assert await _batch_wait_under_realtime_flood(1000.0) > max_age_s + service_s


async def test_ageing_serves_the_oldest_aged_waiter_first() -> None:
    clock = FakeClock()
    queue = PriorityQueue("d", 1, max_age_s=1.0, clock=clock)
    holder = await hold_slot(queue)
    order: list[str] = []
    tasks: list[asyncio.Task[None]] = []
    for label, priority in (("batch-old", BATCH), ("interactive", INTERACTIVE)):
        spawn(tasks, enter(queue, priority, order, label))
        await until(lambda: queue.depth == len(tasks))
        clock.advance(0.5)
    spawn(tasks, enter(queue, REALTIME, order, "realtime-new"))
    await until(lambda: queue.depth == 3)
    clock.advance(1.0)  # batch is 2.0 s old, interactive 1.5 s, realtime 1.0 s: all aged
    await release(holder)
    await asyncio.gather(*tasks)
    assert order == ["batch-old", "interactive", "realtime-new"]


async def test_shed_on_arrival_when_the_estimate_overruns_the_deadline() -> None:
    clock = FakeClock()
    queue = PriorityQueue("d", 1, clock=clock)
    holder = await hold_slot(queue)
    tasks: list[asyncio.Task[None]] = []
    for _ in range(2):
        spawn(tasks, enter(queue, REALTIME, service=1.0))
    await until(lambda: queue.depth == 2)
    before = queue.snapshot()

    # Three releases needed (the holder's, then two realtime waiters) at 1 s each, plus 1 s of
    # service: 4 s. A 2.5 s deadline cannot be met, so the first step raises, without waiting.
    coro = queue.admit(REALTIME, deadline=clock.now + 2.5, expected_service_s=1.0).__aenter__()
    with pytest.raises(QueueRejected) as info:
        coro.send(None)
    assert isinstance(info.value, SwitchpointError)
    assert info.value.retry_after_s == pytest.approx(3.0)
    assert "deadline" in info.value.reason
    after = queue.snapshot()
    assert (after.depth, after.in_flight) == (before.depth, before.in_flight)
    assert after.depth_by_priority == before.depth_by_priority
    assert after.rejected_total == before.rejected_total + 1

    # Exactly meeting the deadline is enough to queue.
    spawn(tasks, enter(queue, REALTIME, deadline=clock.now + 4.0, service=1.0))
    await until(lambda: queue.depth == 3)
    await release(holder)
    await asyncio.gather(*tasks)
    assert queue.snapshot().admitted_total == 4


async def test_shedding_estimate_ignores_lower_priority_waiters() -> None:
    clock = FakeClock()
    queue = PriorityQueue("d", 2, clock=clock)
    holders = [await hold_slot(queue), await hold_slot(queue)]
    tasks: list[asyncio.Task[None]] = []
    for _ in range(4):
        spawn(tasks, enter(queue, BATCH, service=1.0))
    await until(lambda: queue.depth == 4)

    # Realtime: one release at 2 slots per second -> 0.5 s wait + 1 s service fits 1.5 s.
    spawn(tasks, enter(queue, REALTIME, deadline=clock.now + 1.5, service=1.0))
    await until(lambda: queue.depth == 5)
    # Batch: behind 1 realtime + 4 batch -> 6 releases -> 3 s wait: shed.
    with pytest.raises(QueueRejected):
        await enter(queue, BATCH, deadline=clock.now + 3.5, service=1.0)
    for holder in holders:
        await release(holder)
    await asyncio.gather(*tasks)
    stats = queue.snapshot()
    assert (stats.admitted_total, stats.rejected_total, stats.in_flight) == (7, 1, 0)


async def test_deadline_passing_while_waiting_rejects_at_the_deadline() -> None:
    queue = PriorityQueue("d", 1)
    holder = await hold_slot(queue)
    deadline = time.monotonic() + 0.2
    late = asyncio.create_task(enter(queue, INTERACTIVE, deadline=deadline))
    patient = asyncio.create_task(enter(queue, BATCH))
    await until(lambda: queue.depth == 2)

    with pytest.raises(QueueRejected) as info:
        await late
    assert time.monotonic() >= deadline
    assert info.value.retry_after_s >= 0.0
    stats = queue.snapshot()
    # Still held by the holder: the rejected waiter freed nothing.
    assert (stats.in_flight, stats.depth, stats.rejected_total) == (1, 1, 1)

    await release(holder)
    await patient
    stats = queue.snapshot()
    assert (stats.in_flight, stats.depth, stats.admitted_total) == (0, 0, 2)


async def test_a_waiter_past_its_deadline_is_refused_at_hand_off() -> None:
    clock = FakeClock()
    queue = PriorityQueue("d", 1, clock=clock)
    holder = await hold_slot(queue)
    order: list[str] = []
    late = asyncio.create_task(enter(queue, REALTIME, order, "late", deadline=clock.now + 1.0))
    await until(lambda: queue.depth == 1)
    patient = asyncio.create_task(enter(queue, REALTIME, order, "patient"))
    await until(lambda: queue.depth == 2)
    clock.advance(2.0)  # past the deadline before the loop's timer would fire
    await release(holder)
    with pytest.raises(QueueRejected):
        await late
    await patient
    assert order == ["patient"]
    stats = queue.snapshot()
    assert (stats.in_flight, stats.rejected_total, stats.admitted_total) == (0, 1, 2)


async def test_cancelled_waiter_leaves_and_the_next_gets_the_slot() -> None:
    queue = PriorityQueue("d", 1, clock=FakeClock())
    holder = await hold_slot(queue)
    order: list[str] = []
    first = asyncio.create_task(enter(queue, REALTIME, order, "first"))
    await until(lambda: queue.depth == 1)
    second = asyncio.create_task(enter(queue, REALTIME, order, "second"))
    await until(lambda: queue.depth == 2)

    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    stats = queue.snapshot()
    assert (stats.depth, stats.in_flight, stats.cancelled_total) == (1, 1, 1)
    assert stats.depth_by_priority[REALTIME] == 1

    await release(holder)
    await second
    assert order == ["second"]
    stats = queue.snapshot()
    assert (stats.depth, stats.in_flight, stats.admitted_total) == (0, 0, 2)


async def test_cancel_at_the_hand_off_moment_passes_the_slot_on() -> None:
    queue = PriorityQueue("d", 1, clock=FakeClock())
    holder = await hold_slot(queue)
    order: list[str] = []
    first = asyncio.create_task(enter(queue, REALTIME, order, "first"))
    await until(lambda: queue.depth == 1)
    second = asyncio.create_task(enter(queue, REALTIME, order, "second"))
    await until(lambda: queue.depth == 2)

    await release(holder)  # hands the slot to `first`, which has not run yet
    assert (queue.in_flight, queue.depth) == (1, 1)
    first.cancel()  # lands before `first` resumes
    with pytest.raises(asyncio.CancelledError):
        await first
    await second
    assert order == ["second"]
    stats = queue.snapshot()
    assert (stats.in_flight, stats.depth) == (0, 0)
    assert (stats.admitted_total, stats.cancelled_total) == (2, 1)


async def test_mass_cancellation_keeps_fifo_and_counts() -> None:
    queue = PriorityQueue("d", 1, clock=FakeClock())
    holder = await hold_slot(queue)
    order: list[str] = []
    tasks: list[asyncio.Task[None]] = []
    for i in range(300):
        spawn(tasks, enter(queue, BATCH, order, str(i)))
    await until(lambda: queue.depth == 300)
    survivors = [str(i) for i in range(300) if i % 10 == 0]
    for i, task in enumerate(tasks):
        if i % 10:
            task.cancel()
    await until(lambda: queue.depth == len(survivors))
    await release(holder)
    await asyncio.gather(*tasks, return_exceptions=True)
    assert order == survivors
    stats = queue.snapshot()
    assert (stats.in_flight, stats.depth, stats.cancelled_total) == (0, 0, 270)


async def test_stats_report_depth_in_flight_and_rejections() -> None:
    clock = FakeClock()
    queue = PriorityQueue("d", 1, clock=clock)
    holder = await hold_slot(queue)
    tasks: list[asyncio.Task[None]] = []
    for _ in range(100):
        spawn(tasks, enter(queue, INTERACTIVE))
    spawn(tasks, enter(queue, BATCH))
    await until(lambda: queue.depth == 101)
    with pytest.raises(QueueRejected):
        await enter(queue, REALTIME, deadline=clock.now + 0.5, service=1.0)

    stats = queue.snapshot()
    assert (stats.name, stats.max_concurrency) == ("d", 1)
    assert (stats.depth, stats.in_flight) == (101, 1)
    assert stats.depth_by_priority == {REALTIME: 0, INTERACTIVE: 100, BATCH: 1}
    assert (stats.admitted_total, stats.rejected_total, stats.cancelled_total) == (1, 1, 0)

    clock.advance(3.0)
    await release(holder)
    await asyncio.gather(*tasks)
    stats = queue.snapshot()
    assert (stats.depth, stats.in_flight) == (0, 0)
    assert stats.admitted_by_priority == {REALTIME: 1, INTERACTIVE: 100, BATCH: 1}
    assert stats.max_wait_s == 3.0
    assert stats.wait_p99_s == 3.0


async def test_wait_percentiles_over_known_waits() -> None:
    clock = FakeClock()
    queue = PriorityQueue("d", 1, clock=clock)
    holder = await hold_slot(queue)  # a 0 s wait
    gates = [asyncio.Event() for _ in range(100)]
    tasks: list[asyncio.Task[None]] = []

    async def held(gate: asyncio.Event) -> None:
        async with queue.admit(INTERACTIVE):
            await gate.wait()

    for gate in gates:
        spawn(tasks, held(gate))
    await until(lambda: queue.depth == 100)
    clock.advance(1.0)
    await release(holder)  # first waiter admitted after 1 s
    for admitted, gate in enumerate(gates, start=2):
        await until(admitted_total_is(queue, admitted))
        clock.advance(1.0)
        gate.set()  # next waiter admitted after i + 2 s
    await asyncio.gather(*tasks)

    stats = queue.snapshot()
    # Waits 0, 1, ..., 100 s; nearest-rank percentiles over 101 samples.
    assert stats.wait_samples == 101
    assert stats.wait_p50_s == 50.0
    assert stats.wait_p95_s == 95.0
    assert stats.wait_p99_s == 99.0
    assert stats.max_wait_s == 100.0


async def test_wait_window_is_bounded() -> None:
    queue = PriorityQueue("d", 4, wait_window=10)
    for _ in range(50):
        async with queue.admit(BATCH):
            pass
    stats = queue.snapshot()
    assert (stats.wait_samples, stats.admitted_total) == (10, 50)


async def test_raising_the_limit_admits_waiters_now() -> None:
    queue = PriorityQueue("d", 1, clock=FakeClock())
    holder = await hold_slot(queue)
    gate = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []

    async def held() -> None:
        async with queue.admit(BATCH):
            await gate.wait()

    for _ in range(3):
        spawn(tasks, held())
    await until(lambda: queue.depth == 3)
    queue.set_max_concurrency(3)
    assert (queue.in_flight, queue.depth) == (3, 1)
    queue.set_max_concurrency(1)  # the excess finishes; nobody new enters until under 1
    gate.set()
    await release(holder)
    await asyncio.gather(*tasks)
    assert (queue.in_flight, queue.depth, queue.snapshot().admitted_total) == (0, 0, 4)


async def test_scheduler_keeps_one_queue_per_deployment() -> None:
    scheduler = Scheduler({"limited": 1, "open": None})
    assert scheduler.queue("limited").max_concurrency == 1
    assert scheduler.queue("open").max_concurrency is None
    assert scheduler.queue("unlisted").max_concurrency is None
    assert scheduler.queue("limited") is scheduler.queue("limited")

    async with scheduler.queue("open").admit(BATCH), scheduler.queue("open").admit(REALTIME):
        assert scheduler.snapshot()["open"].in_flight == 2
    async with scheduler.queue("limited").admit(INTERACTIVE):
        assert scheduler.snapshot()["limited"].in_flight == 1

    snapshot = scheduler.snapshot()
    assert set(snapshot) == {"limited", "open", "unlisted"}
    assert snapshot["open"].admitted_total == 2
    assert snapshot["open"].in_flight == 0

    scheduler.update({"open": 4, "new": 2})
    assert scheduler.queue("open").max_concurrency == 4
    assert scheduler.queue("new").max_concurrency == 2
    assert scheduler.queue("limited").max_concurrency is None


def test_invalid_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="max_concurrency"):
        PriorityQueue("d", 0)
    with pytest.raises(ValueError, match="max_age_s"):
        PriorityQueue("d", 1, max_age_s=0.0)
    with pytest.raises(ValueError, match="BATCH"):
        PriorityQueue("d", 1, weights={BATCH: 0})
    with pytest.raises(ValueError, match="UNSPECIFIED"):
        Scheduler({}, weights={Priority.UNSPECIFIED: 3})
    with pytest.raises(ValueError, match="priority"):
        PriorityQueue("d", 1).admit(9)
