"""CPU work that grows with a request, off the event loop.

Routing a request may count its prompt's tokens exactly, which takes time in proportion to its
length. On the event loop that would hold every other call back, and releasing the GIL does not
help: the loop's own thread is the one counting. Most requests need no long count (the router
counts exactly only when the count could change the decision: docs/routing.md), and for them a
thread hop costs more than the work. So `run_where_cheap` asks on the loop first, allowing an
exact count of `COUNT_ON_LOOP_BYTES` and `COUNT_ON_LOOP_S` at most: a request that needs a longer
one raises `LongWork` (before counting, or once its time is spent) and is asked again on one of a
few worker threads, as is every request above `OFFLOAD_ABOVE_BYTES`, whose reading alone
(decoding, one pass over the bytes) is long enough.

Work nobody waits for stops: each job gets a `WorkStop` that the Rust counting loop reads every
few thousand bytes. It is due at the caller's deadline, and set when the awaiting call is
cancelled (the client went away, or a stopping server cancelled it) or the server stops. The
threads are daemons, so a job can never keep a stopping process alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from switchpoint._native import LongWork, WorkStop
from switchpoint.errors import DeadlineExceededError

# Prompt bytes above which routing leaves the loop whatever it needs, and how much the loop may
# count exactly: bytes, and time, since a text's shape sets the speed (docs/benchmarks.md,
# "Thresholds the code switches at").
OFFLOAD_ABOVE_BYTES = 128 * 1024
COUNT_ON_LOOP_BYTES = 32 * 1024
COUNT_ON_LOOP_S = 0.0003
# Worker threads per server: routing work is pure CPU, and a sidecar shares its cores with the
# application it serves.
WORKERS = 2

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class _Job(Generic[T]):
    work: Callable[[WorkStop], T]
    stop: WorkStop
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[T]


class Offload:
    """A bounded pool of daemon threads for request-sized CPU work; one per server."""

    def __init__(self, workers: int = WORKERS) -> None:
        self._workers = workers
        self._jobs: queue.SimpleQueue[_Job[Any] | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._stops: set[WorkStop] = set()
        self._closed = False
        # Jobs started, running now, and ended by their stop rather than finishing.
        self._counts_lock = threading.Lock()
        self.started = 0
        self.running = 0
        self.ended_by_stop = 0

    @property
    def in_flight(self) -> int:
        """Jobs whose callers are still waiting: queued or running."""
        return len(self._stops)

    async def run(self, work: Callable[[WorkStop], T], timeout_s: float | None = None) -> T:
        """`work(stop)` on a worker thread. `timeout_s` (the caller's time remaining) makes the
        stop due then; leaving this call early, by cancellation or otherwise, sets it."""
        if self._closed:
            raise DeadlineExceededError("the server is stopping")
        self._start_threads()
        stop = WorkStop(timeout_s)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._stops.add(stop)
        self._jobs.put(_Job(work, stop, loop, future))
        try:
            return await future
        finally:
            stop.stop()
            self._stops.discard(stop)

    async def run_where_cheap(
        self,
        work: Callable[[WorkStop], T],
        *,
        size: int,
        timeout_s: float | None,
        asking: Callable[[Callable[[], T]], T],
        asking_async: Callable[[Callable[[], Awaitable[T]]], Awaitable[T]],
    ) -> T:
        """`work` for a prompt of `size` bytes: on the loop (`WorkStop.on_loop`) unless it is
        larger than `OFFLOAD_ABOVE_BYTES` or raises `LongWork` there, else on a worker thread.
        `asking` and `asking_async` wrap each try (the gate's, which makes room for rule
        instances)."""
        if size <= OFFLOAD_ABOVE_BYTES:
            try:
                return asking(lambda: work(WorkStop.on_loop(COUNT_ON_LOOP_BYTES, COUNT_ON_LOOP_S)))
            except LongWork:
                pass
        return await asking_async(lambda: self.run(work, timeout_s))

    def close(self) -> None:
        """Stop every job and let the threads end; later `run` calls are refused."""
        self._closed = True
        for stop in list(self._stops):
            stop.stop()
        for _ in self._threads:
            self._jobs.put(None)

    def _start_threads(self) -> None:
        # Started on first use: most servers never see a request this large.
        while len(self._threads) < self._workers:
            thread = threading.Thread(
                target=self._serve, name=f"switchpoint-work-{len(self._threads)}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            result: Any = None
            error: BaseException | None = None
            if job.stop.stopped:
                # Cancelled or past its deadline while queued: nothing to start.
                error = DeadlineExceededError("the caller's deadline passed before routing")
            else:
                self._count(running=1)
                try:
                    result = job.work(job.stop)
                except BaseException as exc:  # delivered to the awaiting call, raised there
                    error = exc
                self._count(running=-1, stopped=isinstance(error, DeadlineExceededError))
            # RuntimeError: the loop has closed, nobody is waiting.
            with contextlib.suppress(RuntimeError):
                job.loop.call_soon_threadsafe(_deliver, job.future, result, error)

    def _count(self, *, running: int, stopped: bool = False) -> None:
        with self._counts_lock:
            self.started += running > 0
            self.running += running
            self.ended_by_stop += stopped


def _deliver(future: asyncio.Future[Any], result: object, error: BaseException | None) -> None:
    if future.done():  # the awaiting call was cancelled
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
