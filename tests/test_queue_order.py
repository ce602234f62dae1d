"""Priority queues (quota.queue): slots, ordering within and across lanes, fairness, ageing.

Time is a fake clock wherever ordering depends on it; nothing asserts how fast anything ran.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter

from switchpoint.quota.queue import PriorityQueue
from switchpoint.request import Priority
from tests.support.queues import (
    BATCH,
    INTERACTIVE,
    REALTIME,
    FakeClock,
    enter,
    hold_slot,
    release,
    spawn,
    until,
)


async def test_free_slot_enters_at_once_and_counts() -> None:
    queue = PriorityQueue("d", 2)
    async with queue.wait_turn(INTERACTIVE):
        assert queue.in_flight == 1
        async with queue.wait_turn(BATCH, deadline=None, expected_service_s=1.0):
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
    async with queue.wait_turn(REALTIME, deadline=clock.now + 0.1, expected_service_s=10.0):
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
        async with queue.wait_turn(rng.choice(list(Priority))):
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
        async with queue.wait_turn(BATCH):
            batch_admitted_at = clock.now

    async def realtime() -> None:
        async with queue.wait_turn(REALTIME):
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
