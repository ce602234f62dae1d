"""Evaluation hooks for the tests, loaded by the sidecar from their dotted paths
(`tests.support.evaluation_hooks:NAME`), and a recording outcome sink.

Each hook keeps its latest instance on its class (`last`), so a test can look at what the
sidecar's own instance saw.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from switchpoint.evaluation.hooks import Answered, Hook, Responded, Routed, Verdict
from switchpoint.providers.base import ChatMessage

PATH = "tests.support.evaluation_hooks"


@dataclass(frozen=True, slots=True)
class RecordedOutcome:
    messages: tuple[ChatMessage, ...]
    model: str
    score: float
    tenant: str


class RecordingOutcomes:
    """An outcome sink that keeps what it is given, in order."""

    def __init__(self) -> None:
        self.outcomes: list[RecordedOutcome] = []

    def record(
        self, *, messages: Sequence[ChatMessage], model: str, score: float, tenant: str
    ) -> None:
        self.outcomes.append(RecordedOutcome(tuple(messages), model, score, tenant))


class _Remembered(Hook):
    last: ClassVar[Any] = None

    def __init__(self, options: Mapping[str, Any]) -> None:
        self.options = dict(options)
        type(self).last = self

    @classmethod
    def latest(cls) -> Self:
        assert isinstance(cls.last, cls), f"no {cls.__name__} was loaded"
        return cls.last


class Scorer(_Remembered):
    """Async: scores every answer `options["score"]` after each attempt and the response
    `options["final"]`, and notes every event it saw."""

    def __init__(self, options: Mapping[str, Any]) -> None:
        super().__init__(options)
        self.routed: list[Routed] = []
        self.answered: list[Answered] = []
        self.responded: list[Responded] = []

    async def after_routing(self, event: Routed) -> None:
        self.routed.append(event)

    async def after_attempt(self, event: Answered) -> Verdict | None:
        self.answered.append(event)
        return Verdict(score=float(self.options["score"]))

    async def after_response(self, event: Responded) -> Verdict | None:
        self.responded.append(event)
        return Verdict(score=float(self.options["final"]))


class Veto(_Remembered):
    """Sync (runs on a thread): vetoes every answer of `options["model"]`."""

    def after_attempt(self, event: Answered) -> Verdict | None:
        if event.model == self.options["model"]:
            return Verdict(score=0.0, veto=True, reason=str(self.options["reason"]))
        return None


class Raises(_Remembered):
    """Raises at every hook point it implements."""

    def after_attempt(self, event: Answered) -> Verdict | None:
        raise RuntimeError("grader crashed")


class BadScore(_Remembered):
    """Returns a score outside 0..1 with a veto: neither may be used."""

    def after_attempt(self, event: Answered) -> Verdict | None:
        return Verdict(score=7.0, veto=True, reason="nonsense")


class HangsInThread(_Remembered):
    """Sync: blocks until the test releases it, then would veto (too late to count)."""

    def __init__(self, options: Mapping[str, Any]) -> None:
        super().__init__(options)
        self.entered = threading.Event()
        self.release = threading.Event()
        self.finished = threading.Event()

    def after_attempt(self, event: Answered) -> Verdict | None:
        self.entered.set()
        self.release.wait(timeout=30.0)  # bounded: a failed test must not leave it forever
        self.finished.set()
        return Verdict(veto=True, reason="too late")


class HangsOnLoop(_Remembered):
    """Async: never answers until cancelled; notes the cancellation."""

    def __init__(self, options: Mapping[str, Any]) -> None:
        super().__init__(options)
        self.entered = False
        self.cancelled = False

    async def after_attempt(self, event: Answered) -> Verdict | None:
        self.entered = True
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        return Verdict(veto=True, reason="never")


def refuses_options(options: Mapping[str, Any]) -> Hook:
    """A factory that refuses options it does not know."""
    raise ValueError(f"unknown options: {sorted(options)}")


class NoPoints:
    """Implements no hook point at all."""

    def __init__(self, options: Mapping[str, Any]) -> None:
        self.options = options


class Rendezvous(_Remembered):
    """Async: arrives, then waits for `options["peer"]` to arrive. Two of them only both answer
    when they run at the same time."""

    arrived: ClassVar[dict[str, asyncio.Event]] = {}

    def __init__(self, options: Mapping[str, Any]) -> None:
        super().__init__(options)
        self.met = False

    async def after_attempt(self, event: Answered) -> Verdict | None:
        mine = Rendezvous.arrived.setdefault(str(self.options["me"]), asyncio.Event())
        peer = Rendezvous.arrived.setdefault(str(self.options["peer"]), asyncio.Event())
        mine.set()
        await peer.wait()
        self.met = True
        return Verdict(score=1.0)
