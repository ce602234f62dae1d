"""Running hooks within their budgets: a hook that is slow, raises, hangs or answers nonsense
costs a call at most its `timeout_ms`, is logged and counted, and is otherwise ignored.

Each hook at a hook point runs at the same time as the others, so a point costs the longest budget
among its hooks, not their sum. A plain (sync) hook runs on a daemon thread of its own: a thread
cannot be stopped, so one that hangs is left to finish and never blocks the process's exit; a
coroutine hook past its budget is cancelled. Either way a run past its budget still counts against
the hook's `max_pending` until it really ends, which bounds what a hook that always hangs holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from switchpoint.evaluation.hooks import HOOK_POINTS, Verdict
from switchpoint.evaluation.loading import LoadedHook, implemented_points

log = logging.getLogger("switchpoint.evaluation")

# How a hook run failed, as counted in `HookRunner.failures`.
FAILURE_KINDS = ("error", "timeout", "busy", "bad_verdict")


@dataclass(frozen=True, slots=True)
class HookVerdict:
    hook: str
    verdict: Verdict


class HookRunner:
    """The hooks of one config, by hook point, and how often each has failed."""

    def __init__(self, hooks: Sequence[LoadedHook]) -> None:
        self._by_point: dict[str, list[_BoundHook]] = {point: [] for point in HOOK_POINTS}
        for hook in hooks:
            pending = threading.BoundedSemaphore(hook.config.max_pending)
            for point in implemented_points(hook.instance):
                method = getattr(hook.instance, point)
                self._by_point[point].append(
                    _BoundHook(
                        hook.name,
                        method,
                        inspect.iscoroutinefunction(method),
                        hook.config.timeout_ms,
                        pending,
                    )
                )
        # (hook name, hook point, failure kind) -> runs that failed so.
        self.failures: Counter[tuple[str, str, str]] = Counter()

    def runs(self, point: str) -> bool:
        return bool(self._by_point[point])

    async def run(self, point: str, event: object, request_id: str) -> list[HookVerdict]:
        """Every hook of `point` on `event`, concurrently, each within its budget: the verdicts
        of those that returned one in time (failures are logged and counted, never raised)."""
        hooks = self._by_point[point]
        if not hooks:
            return []
        ends = await asyncio.gather(*(hook.run(event) for hook in hooks))
        verdicts: list[HookVerdict] = []
        for hook, (value, failed, why) in zip(hooks, ends, strict=True):
            failure, detail = (failed, why) if failed else _verdict_problem(value)
            if failure:
                self._failed(hook.name, point, failure, detail, request_id)
            elif isinstance(value, Verdict):
                verdicts.append(HookVerdict(hook.name, value))
        return verdicts

    def _failed(self, hook: str, point: str, kind: str, detail: str, request_id: str) -> None:
        self.failures[(hook, point, kind)] += 1
        log.warning(
            "evaluation hook failed",
            extra={
                "request_id": request_id,
                "hook": hook,
                "hook_point": point,
                "failure": kind,
                "error": detail,
            },
        )


def _verdict_problem(value: object) -> tuple[str, str]:
    """("bad_verdict", why) when a hook returned something other than None or a usable Verdict."""
    if value is None:
        return "", ""
    if not isinstance(value, Verdict):
        return "bad_verdict", f"returned {type(value).__name__}, not Verdict"
    problem = value.problem()
    return ("bad_verdict", problem) if problem else ("", "")


# A run's end: (what the hook returned, failure kind or "", what went wrong).
_End = tuple[object, str, str]


@dataclass(frozen=True, slots=True)
class _BoundHook:
    name: str
    method: Callable[[object], object]
    is_async: bool
    timeout_ms: int
    pending: threading.BoundedSemaphore

    async def run(self, event: object) -> _End:
        if not self.pending.acquire(blocking=False):
            return None, "busy", "earlier runs are still going (max_pending)"
        future = self._start_async(event) if self.is_async else self._start_thread(event)
        try:
            done, _ = await asyncio.wait({future}, timeout=self.timeout_ms / 1000.0)
        except asyncio.CancelledError:
            future.cancel()
            raise
        if not done:
            future.cancel()
            return None, "timeout", f"no answer within {self.timeout_ms} ms"
        if future.cancelled():
            return None, "error", "the hook cancelled itself"
        error = future.exception()
        if error is not None:
            return None, "error", f"{type(error).__name__}: {error}"
        return future.result(), "", ""

    def _start_async(self, event: object) -> asyncio.Future[object]:
        async def call() -> object:
            result = self.method(event)
            return await result if inspect.isawaitable(result) else result

        task = asyncio.ensure_future(call())

        def ended(done: asyncio.Future[object]) -> None:
            self.pending.release()
            if not done.cancelled():
                done.exception()  # retrieved: a failure was already counted, not "never retrieved"

        task.add_done_callback(ended)
        return task

    def _start_thread(self, event: object) -> asyncio.Future[object]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[object] = loop.create_future()

        def settle(value: object, error: BaseException | None) -> None:
            if future.done():
                return  # the call stopped waiting
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(value)

        def work() -> None:
            value: object = None
            error: BaseException | None = None
            try:
                value = self.method(event)
            except BaseException as exc:  # the hook's failure is the call's to count, not ours
                error = exc
            finally:
                self.pending.release()
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is waiting
                loop.call_soon_threadsafe(settle, value, error)

        threading.Thread(target=work, name=f"hook {self.name}", daemon=True).start()
        return future
