"""`switchpoint.SyncRouter`: the async `Router` for plain, synchronous code (scripts, batch jobs,
threads of a WSGI app). The router runs on an event loop of its own, on a thread of its own;
each call blocks its caller until the loop has answered it, so calls from several threads run
concurrently on that loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Coroutine, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from contextlib import aclosing
from typing import Any, TypeVar, Unpack

from switchpoint.library.requests import MessageLike
from switchpoint.library.results import ChatResult, Decision, StreamChunk
from switchpoint.library.router import CallKeywords, ConfigSource, Router
from switchpoint.library.stats import Stats

T = TypeVar("T")


class SyncRouter:
    """Use it as `with SyncRouter.from_config(path) as router:`; the same calls as `Router`,
    blocking. Not for async code: there, use `Router` on the application's loop."""

    def __init__(self, router: Router) -> None:
        self._router = router
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._closed = False

    @classmethod
    def from_config(
        cls, source: ConfigSource = None, *, environ: Mapping[str, str] | None = None
    ) -> SyncRouter:
        """As `Router.from_config`: a path, a mapping, a Config, or None for the embedded one."""
        return cls(Router.from_config(source, environ=environ))

    @property
    def router(self) -> Router:
        return self._router

    def __enter__(self) -> SyncRouter:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def start(self) -> None:
        if self._loop is not None or self._closed:
            raise RuntimeError(
                "switchpoint.SyncRouter starts once: build a new one with "
                "SyncRouter.from_config(...)"
            )
        _refuse_inside_a_loop("start")
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="switchpoint-router", daemon=True)
        thread.start()
        self._loop, self._thread = loop, thread
        try:
            self._wait(self._router.start())
        except BaseException:
            self._stop_loop()
            raise

    def close(self, grace_s: float | None = None) -> None:
        """As `Router.close`, then the router's loop and thread end. Idempotent."""
        if self._loop is None or self._closed:
            self._closed = True
            return
        _refuse_inside_a_loop("close")
        try:
            self._wait(self._router.close(grace_s))
        finally:
            self._closed = True
            self._stop_loop()

    def route(
        self,
        messages: Iterable[MessageLike],
        *,
        timeout_s: float | None = None,
        **options: Unpack[CallKeywords],
    ) -> Decision:
        return self._call(self._router.route(messages, timeout_s=timeout_s, **options))

    def chat(
        self,
        messages: Iterable[MessageLike],
        *,
        timeout_s: float | None = None,
        **options: Unpack[CallKeywords],
    ) -> ChatResult:
        return self._call(self._router.chat(messages, timeout_s=timeout_s, **options))

    def stream(
        self,
        messages: Iterable[MessageLike],
        *,
        timeout_s: float | None = None,
        **options: Unpack[CallKeywords],
    ) -> Iterator[StreamChunk]:
        """The chunks as they come; leaving the loop early closes the stream on the router's
        loop (its reservation and the provider's response are released)."""
        loop = self._usable("stream")
        chunks = self._router.stream(messages, timeout_s=timeout_s, **options)
        # One task on the router's loop runs the whole stream: its trace context is entered and
        # left in the same task, as with an async caller.
        pump = self._wait(_start_pump(chunks))
        try:
            while True:
                loop.call_soon_threadsafe(pump.wanted.put_nowait, None)
                chunk = self._call(pump.next())
                if chunk is None:
                    return
                yield chunk
        finally:
            if not loop.is_closed():
                self._wait(pump.close())

    def stats(
        self, *, models: Sequence[str] = (), tenant: str | None = None, stage: str | None = None
    ) -> Stats:
        self._usable("stats")
        return self._router.stats(models=models, tenant=tenant, stage=stage)

    # -- the loop thread ----------------------------------------------------------------------

    def _usable(self, what: str) -> asyncio.AbstractEventLoop:
        if self._loop is None or self._closed:
            state = "closed" if self._closed else "not started"
            raise RuntimeError(
                f"switchpoint.SyncRouter.{what}(): the router is {state}: call it inside "
                "`with SyncRouter.from_config(...) as router:`"
            )
        _refuse_inside_a_loop(what)
        return self._loop

    def _call(self, call: Coroutine[Any, Any, T]) -> T:
        try:
            self._usable("call")
        except RuntimeError:
            call.close()  # never awaited: closed so it leaves no warning behind
            raise
        return self._wait(call)

    def _wait(self, call: Coroutine[Any, Any, T]) -> T:
        assert self._loop is not None
        future: Future[T] = asyncio.run_coroutine_threadsafe(call, self._loop)
        return future.result()

    def _stop_loop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()


def _refuse_inside_a_loop(what: str) -> None:
    """Blocking inside an event loop would stall it (and deadlock on the router's own loop)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise RuntimeError(
        f"switchpoint.SyncRouter.{what}() was called inside a running event loop, which it would "
        "block: in async code use switchpoint.Router (`async with Router.from_config(...)`)"
    )


class _Pump:
    """Runs a stream in one task, a chunk each time one is wanted."""

    def __init__(self, chunks: AsyncIterator[StreamChunk]) -> None:
        self.wanted: asyncio.Queue[None] = asyncio.Queue()
        self._given: asyncio.Queue[StreamChunk | BaseException | None] = asyncio.Queue()
        self._task = asyncio.create_task(self._run(chunks))

    async def _run(self, chunks: AsyncIterator[StreamChunk]) -> None:
        async with aclosing(chunks):  # type: ignore[type-var]
            while True:
                await self.wanted.get()
                try:
                    chunk = await anext(chunks, None)
                except Exception as exc:
                    self._given.put_nowait(exc)
                    return
                self._given.put_nowait(chunk)
                if chunk is None:
                    return

    async def next(self) -> StreamChunk | None:
        given = await self._given.get()
        if isinstance(given, BaseException):
            raise given
        return given

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


async def _start_pump(chunks: AsyncIterator[StreamChunk]) -> _Pump:
    return _Pump(chunks)
