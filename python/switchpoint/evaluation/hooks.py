"""What an evaluation hook is: the protocol a hook implements, the events it is given at each hook
point, and the verdict it may return.

A hook is any object with one or more of the three methods below, each either a plain function
(run on a thread of its own, so it cannot stall the event loop) or a coroutine function (run on the
loop). Subclass `Hook` to implement only the points you need; `EvaluationHook` is the full shape
for type checkers.

    after_routing(Routed)     once the call is admitted, before its first attempt: observe only
    after_attempt(Answered)   after each answer a model gives: a Verdict may score it (the score
                              becomes an outcome) or veto it (the call escalates to its next model)
    after_response(Responded) once the call's answer is final, before it is returned: a Verdict
                              may score it; a veto here is too late and is ignored
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Protocol

from switchpoint.providers.base import ChatMessage

HOOK_POINTS = ("after_routing", "after_attempt", "after_response")


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a hook thinks of an answer. `score` (0..1) is recorded as a labelled outcome for the
    answering model; `veto` rejects the answer, `reason` says why (listed with the attempt)."""

    score: float | None = None
    veto: bool = False
    reason: str = ""

    def problem(self) -> str:
        """Why this verdict cannot be used; empty when it can."""
        if self.score is not None and not (
            isinstance(self.score, float | int) and math.isfinite(self.score)
        ):
            return f"score {self.score!r} is not a number"
        if self.score is not None and not 0.0 <= self.score <= 1.0:
            return f"score {self.score} is outside 0..1"
        return ""


@dataclass(frozen=True, slots=True)
class Routed:
    request_id: str
    tenant: str
    stage: str
    messages: Sequence[ChatMessage]
    strategy: str
    # The models the call will try, in order (a cascade's cheapest first); the fallback follows.
    candidates: tuple[str, ...]
    cascade: bool
    streamed: bool


@dataclass(frozen=True, slots=True)
class Answered:
    request_id: str
    tenant: str
    stage: str
    messages: Sequence[ChatMessage]
    model: str
    provider: str
    content: str
    finish_reason: str
    # 1 for the call's first answer, 2 after one escalation, and so on.
    tier: int
    cascade: bool
    streamed: bool
    # Set when a built-in check already rejected the answer (the hook may still score it).
    rejected_by_check: str = ""


@dataclass(frozen=True, slots=True)
class Attempt:
    """One attempt of the call, as its response lists it."""

    model: str
    # Empty when it answered; "rejected" for an answer a check or a hook rejected; otherwise why
    # the provider call failed or the model was skipped ("timeout", "quota", ...).
    error_class: str
    error_message: str
    cost_usd: float


@dataclass(frozen=True, slots=True)
class Responded:
    request_id: str
    tenant: str
    stage: str
    messages: Sequence[ChatMessage]
    model: str
    content: str
    finish_reason: str
    attempts: tuple[Attempt, ...]
    cost_usd: float
    streamed: bool
    # Every model's answer was rejected and this, the last, is served anyway.
    rejected: bool


VerdictResult = Verdict | None | Awaitable[Verdict | None]


class EvaluationHook(Protocol):
    """The full shape of a hook; an object needs only the methods it uses (see `Hook`)."""

    def after_routing(self, event: Routed) -> Awaitable[None] | None: ...

    def after_attempt(self, event: Answered) -> VerdictResult: ...

    def after_response(self, event: Responded) -> VerdictResult: ...


class Hook:
    """A base whose methods do nothing: override the points you need, plain or `async def`.
    Points left as they are here are never called."""

    def after_routing(self, event: Routed) -> Awaitable[None] | None:
        return None

    def after_attempt(self, event: Answered) -> VerdictResult:
        return None

    def after_response(self, event: Responded) -> VerdictResult:
        return None


class OutcomeSink(Protocol):
    """Where scores go as labelled outcomes (the quality predictor's store). `record` never
    blocks: it queues the work."""

    def record(
        self, *, messages: Sequence[ChatMessage], model: str, score: float, tenant: str
    ) -> None: ...
