"""What the library hands back: plain frozen dataclasses with the fields of the gRPC API's
messages (switchpoint.v1 RouteDecision, ChatResponse, ChatChunk), built from the engine's own
results so the two fronts cannot disagree."""

from __future__ import annotations

from dataclasses import dataclass

from switchpoint.engine.calls import AttemptRecord, StreamDelta
from switchpoint.engine.calls import ChatResult as EngineResult
from switchpoint.routing import Decision as EngineDecision
from switchpoint.server import convert
from switchpoint.splits.assign import Assignment
from switchpoint.v1 import router_pb2 as pb


@dataclass(frozen=True, slots=True)
class Candidate:
    """One eligible model of a decision, best first (RouteDecision.candidates)."""

    model: str
    provider: str
    # Weighted score in [0, 1]; higher is better.
    score: float
    # Min-max normalised over the eligible set: 0 is the cheapest / fastest.
    norm_cost: float
    norm_latency: float
    quality: float
    estimated_cost_usd: float
    estimated_latency_ms: float
    latency_observed: bool
    # "prior" (the model's configured quality) or "predicted" (routing.predictor).
    quality_source: str
    quality_evidence: float
    quality_similar: int


@dataclass(frozen=True, slots=True)
class Weights:
    cost: float
    latency: float
    quality: float


@dataclass(frozen=True, slots=True)
class Decision:
    """Which model serves a request and why (RouteDecision): `model` is candidates[0].model."""

    model: str
    candidates: tuple[Candidate, ...]
    # What decided the model set: "override", "stage", "auto" or "fallback".
    level: str
    reasons: tuple[str, ...]
    strategy: str
    weights: Weights
    estimated_cost_usd: float
    estimated_latency_ms: float
    estimated_input_tokens: int
    estimated_output_tokens: int
    task_class: str
    complexity: float
    request_id: str
    choice_probability: float


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int
    output_tokens: int


@dataclass(frozen=True, slots=True)
class Attempt:
    """One provider call (or skipped model) of a chat, in order."""

    model: str
    provider: str
    # "ok" or "error".
    outcome: str
    latency_ms: float
    error_class: str
    error_message: str
    usage: Usage
    cost_usd: float


@dataclass(frozen=True, slots=True)
class CacheHit:
    """Set on a result the response cache answered: no provider was called, nothing spent."""

    kind: str
    similarity: float
    age_s: float
    saved_cost_usd: float


@dataclass(frozen=True, slots=True)
class ChatResult:
    """The answer of `Router.chat` (ChatResponse)."""

    request_id: str
    content: str
    model: str
    provider: str
    usage: Usage
    cost_usd: float
    latency_ms: float
    finish_reason: str
    attempts: tuple[Attempt, ...]
    decision: Decision
    cache: CacheHit | None = None


@dataclass(frozen=True, slots=True)
class StreamChunk:
    """One piece of `Router.stream` (ChatChunk). The first carries the decision that serves the
    call; the last has `done` set and carries `result` (usage, cost, attempts) instead of text."""

    request_id: str
    delta: str
    model: str
    provider: str
    # Set on the first delta after a mid-stream switch: the model whose stream died.
    continued_from: str = ""
    decision: Decision | None = None
    done: bool = False
    result: ChatResult | None = None


_LEVEL_PREFIX = "DECISION_LEVEL_"
_QUALITY_PREFIX = "QUALITY_SOURCE_"


def _enum_name(name: str, prefix: str) -> str:
    return name.removeprefix(prefix).lower()


def decision_of(decision: EngineDecision, split: Assignment | None = None) -> Decision:
    """The engine's decision as the gRPC API shows it: decoded from the same encoding Route
    answers with, then annotated by the request's split the same way."""
    message = convert.decision_message(decision)
    if split is not None:
        split.annotate_message(message)
    return decision_from_message(message)


def decision_from_message(message: pb.RouteDecision) -> Decision:
    """A RouteDecision message as the library returns it."""
    weights = message.weights
    return Decision(
        model=message.model,
        candidates=tuple(
            Candidate(
                model=c.model,
                provider=c.provider,
                score=c.score,
                norm_cost=c.norm_cost,
                norm_latency=c.norm_latency,
                quality=c.quality,
                estimated_cost_usd=c.estimated_cost_usd,
                estimated_latency_ms=c.estimated_latency_ms,
                latency_observed=c.latency_observed,
                quality_source=_enum_name(pb.QualitySource.Name(c.quality_source), _QUALITY_PREFIX),
                quality_evidence=c.quality_evidence,
                quality_similar=c.quality_similar,
            )
            for c in message.candidates
        ),
        level=_enum_name(pb.DecisionLevel.Name(message.level), _LEVEL_PREFIX),
        reasons=tuple(message.reasons),
        strategy=message.strategy,
        weights=Weights(weights.cost, weights.latency, weights.quality),
        estimated_cost_usd=message.estimated_cost_usd,
        estimated_latency_ms=message.estimated_latency_ms,
        estimated_input_tokens=message.estimated_input_tokens,
        estimated_output_tokens=message.estimated_output_tokens,
        task_class=message.task_class,
        complexity=message.complexity,
        request_id=message.request_id,
        choice_probability=message.choice_probability,
    )


def _attempt(record: AttemptRecord) -> Attempt:
    return Attempt(
        model=record.model,
        provider=record.provider,
        outcome="ok" if record.ok else "error",
        latency_ms=record.latency_ms,
        error_class=record.error_class,
        error_message=record.error_message,
        usage=Usage(record.input_tokens, record.output_tokens),
        cost_usd=record.cost_usd,
    )


def chat_result_of(result: EngineResult, split: Assignment | None = None) -> ChatResult:
    hit = result.cache
    return ChatResult(
        request_id=result.request_id,
        content=result.content,
        model=result.model,
        provider=result.provider,
        usage=Usage(result.input_tokens, result.output_tokens),
        cost_usd=result.cost_usd,
        latency_ms=result.latency_ms,
        finish_reason=result.finish_reason,
        attempts=tuple(_attempt(a) for a in result.attempts),
        decision=decision_of(result.decision, split),
        cache=(
            None
            if hit is None
            else CacheHit(hit.kind, hit.similarity, hit.age_s, hit.cost_saved_usd)
        ),
    )


def delta_chunk(delta: StreamDelta, request_id: str) -> StreamChunk:
    return StreamChunk(
        request_id=request_id,
        delta=delta.text,
        model=delta.model,
        provider=delta.provider,
        continued_from=delta.continued_from,
    )


def final_chunk(result: ChatResult) -> StreamChunk:
    return StreamChunk(
        request_id=result.request_id,
        delta="",
        model=result.model,
        provider=result.provider,
        done=True,
        result=result,
    )
