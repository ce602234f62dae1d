"""Priority queues (quota.queue, quota.scheduler): shedding, deadlines, cancellation, stats,
limits.

Time is a fake clock wherever ordering depends on it; the only real sleeps are a short deadline
and a few yields to let tasks reach the queue. Nothing asserts how fast anything ran.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from switchpoint.errors import SwitchpointError
from switchpoint.quota.queue import PriorityQueue, QueueRejected
from switchpoint.quota.scheduler import Scheduler
from switchpoint.request import Priority
from tests.support.queues import (
    BATCH,
    INTERACTIVE,
    REALTIME,
    FakeClock,
    admitted_total_is,
    enter,
    hold_slot,
    release,
    spawn,
    until,
)


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
    coro = queue.wait_turn(REALTIME, deadline=clock.now + 2.5, expected_service_s=1.0).__aenter__()
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
        async with queue.wait_turn(INTERACTIVE):
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
        async with queue.wait_turn(BATCH):
            pass
    stats = queue.snapshot()
    assert (stats.wait_samples, stats.admitted_total) == (10, 50)


async def test_raising_the_limit_admits_waiters_now() -> None:
    queue = PriorityQueue("d", 1, clock=FakeClock())
    holder = await hold_slot(queue)
    gate = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []

    async def held() -> None:
        async with queue.wait_turn(BATCH):
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

    async with (
        scheduler.queue("open").wait_turn(BATCH),
        scheduler.queue("open").wait_turn(REALTIME),
    ):
        assert scheduler.snapshot()["open"].in_flight == 2
    async with scheduler.queue("limited").wait_turn(INTERACTIVE):
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
        PriorityQueue("d", 1).wait_turn(9)
