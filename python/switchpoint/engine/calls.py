"""The book-keeping of one Chat or ChatStream call across its attempts, and what it returns."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from opentelemetry import context as otel_context
from opentelemetry import trace

from switchpoint.cache.records import CacheHit
from switchpoint.errors import DeadlineExceededError, ProviderError, QuotaExceededError
from switchpoint.providers.base import Completion, StreamEnd
from switchpoint.request import ChatInput
from switchpoint.routing import Decision

# Attempt outcomes that are not a provider failure: the model was skipped, or lost a hedge.
SKIPPED = frozenset({"quota", "circuit_open", "queue", "context_window_too_small", "hedge_lost"})
# An answer a check or an evaluation hook rejected (switchpoint.evaluation): paid for, not served.
REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    model: str
    provider: str
    latency_ms: float
    error_class: str = ""
    error_message: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.error_class


@dataclass(frozen=True, slots=True)
class ChatResult:
    """The answer. Usage and cost add up every attempt that consumed tokens, so a stream continued
    on a second model reports what both cost."""

    request_id: str
    content: str
    model: str
    provider: str
    input_tokens: int
    output_tokens: int
    cost_usd: float
    latency_ms: float
    finish_reason: str
    attempts: tuple[AttemptRecord, ...]
    decision: Decision
    ttft_ms: float = 0.0
    # Time spent waiting on providers, backoffs and queues, for the overhead metric.
    waited_s: float = 0.0
    # Set when the answer came from the response cache (no provider was called).
    cache: CacheHit | None = None


@dataclass(frozen=True, slots=True)
class StreamDelta:
    text: str
    model: str
    provider: str
    # Set on the first delta after a mid-stream switch: the model whose stream died.
    continued_from: str = ""


@dataclass(slots=True)
class CallState:
    request: ChatInput
    decision: Decision
    request_id: str
    # Absolute time.monotonic() by which the whole call must be done; None: no deadline.
    deadline: float | None = None
    started: float = field(default_factory=time.perf_counter)
    attempts: list[AttemptRecord] = field(default_factory=list)
    refusals: list[QuotaExceededError] = field(default_factory=list)
    last_provider_error: ProviderError | None = None
    tried: set[str] = field(default_factory=set)
    # After a context-window error only models with a window of at least this are tried.
    min_context_window: int = 0
    # Text the client already has (streaming): a continuation must carry on from it.
    sent: list[str] = field(default_factory=list)
    first_token_ms: float = 0.0
    # (input tokens, output tokens, USD) charged to attempts that ended without an answer (see
    # switchpoint.engine.billing), by model, until the attempt record that lists them takes them.
    unlisted_usage: dict[str, tuple[int, int, float]] = field(default_factory=dict)
    # Time spent waiting on providers, backoffs and the priority queue: what is not overhead.
    provider_s: float = 0.0
    waited_s: float = 0.0
    # The caller's span (switchpoint.request) and context: attempts are its children.
    trace_context: otel_context.Context = field(default_factory=otel_context.get_current)
    root_span: trace.Span = field(default_factory=trace.get_current_span)

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000.0

    def remaining_s(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()

    def check_deadline(self) -> None:
        remaining = self.remaining_s()
        if remaining is not None and remaining <= 0:
            raise DeadlineExceededError(
                f"the call's deadline passed after {len(self.attempts)} attempt(s)"
            )

    def skip(self, model: str, provider: str, reason: str, message: str) -> None:
        self.attempts.append(AttemptRecord(model, provider, 0.0, reason, message))

    def totals(self) -> tuple[int, int, float]:
        return (
            sum(a.input_tokens for a in self.attempts),
            sum(a.output_tokens for a in self.attempts),
            sum(a.cost_usd for a in self.attempts),
        )


@dataclass(slots=True)
class StreamAttempt:
    """The timing of one streaming attempt (what it streamed is its `billing.Exposure`)."""

    started: float
    ttft_ms: float = 0.0

    def first_token(self) -> None:
        self.ttft_ms = (time.perf_counter() - self.started) * 1000.0

    def completion(self, parts: list[str], end: StreamEnd) -> Completion:
        return Completion("".join(parts), end.finish_reason, end.input_tokens, end.output_tokens)
