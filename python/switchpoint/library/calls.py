"""The library's calls in flight, for a shutdown that lets them finish: `Router.close` waits for
them within its grace, then cuts the rest, which end with DeadlineExceededError in their callers
(their engine work is cancelled on the way out, so every reservation is released)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from switchpoint.errors import DeadlineExceededError

CUT_MESSAGE = (
    "the router closed before this call finished (within server.graceful_stop_s, or the grace "
    "given to Router.close)"
)


class Call:
    """One call in flight. Its awaits run inside `cuttable()` scopes, which `cut` ends at once."""

    __slots__ = ("_scope", "cut_off")

    def __init__(self) -> None:
        self._scope: asyncio.Timeout | None = None
        self.cut_off = False

    @asynccontextmanager
    async def cuttable(self) -> AsyncIterator[None]:
        """A scope `cut` may end; the caller then gets DeadlineExceededError."""
        if self.cut_off:
            raise DeadlineExceededError(CUT_MESSAGE)
        try:
            async with asyncio.timeout(None) as scope:
                self._scope = scope
                yield
        except TimeoutError:
            if self.cut_off:
                raise DeadlineExceededError(CUT_MESSAGE) from None
            raise
        finally:
            self._scope = None

    def cut(self) -> bool:
        """End the call's running scope; False when none runs (a stream waiting for its consumer
        to ask for the next chunk), which then ends at its next scope."""
        self.cut_off = True
        if self._scope is None:
            return False
        # The scope's own task is cancelled at once; the timeout turns it into TimeoutError.
        self._scope.reschedule(asyncio.get_running_loop().time())
        return True


class InFlight:
    """The calls in flight, and a way to wait until there are none."""

    def __init__(self) -> None:
        self._calls: set[Call] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    def __len__(self) -> int:
        return len(self._calls)

    def add(self) -> Call:
        call = Call()
        self._calls.add(call)
        self._idle.clear()
        return call

    def remove(self, call: Call) -> None:
        self._calls.discard(call)
        if not self._calls:
            self._idle.set()

    async def drained(self, timeout_s: float | None) -> bool:
        """Whether every call ended within `timeout_s` (None: wait as long as it takes)."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    def cut(self) -> None:
        for call in list(self._calls):
            if not call.cut():
                # Nothing of it runs: a stream its consumer stopped reading (or abandoned) must
                # not hold the close up. It ends with DeadlineExceededError if read again.
                self.remove(call)
