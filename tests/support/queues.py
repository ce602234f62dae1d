"""Helpers of the priority queue tests: a fake clock, waiting for tasks to reach the queue, and
slots held by the test itself."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from switchpoint.quota.queue import PriorityQueue, QueueSlot
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
    slot = queue.wait_turn(priority)
    await slot.__aenter__()
    return slot


async def release(slot: QueueSlot) -> None:
    await slot.__aexit__(None, None, None)


async def enter(
    queue: PriorityQueue,
    priority: Priority,
    order: list[str] | None = None,
    label: str = "",
    *,
    deadline: float | None = None,
    service: float = 0.0,
) -> None:
    async with queue.wait_turn(priority, deadline, service):
        if order is not None:
            order.append(label)


def admitted_total_is(queue: PriorityQueue, count: int) -> Callable[[], bool]:
    return lambda: queue.snapshot().admitted_total == count


def spawn(tasks: list[asyncio.Task[None]], coro: Coroutine[Any, Any, None]) -> None:
    tasks.append(asyncio.create_task(coro))
