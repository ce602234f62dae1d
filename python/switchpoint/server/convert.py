"""Translation between the switchpoint.v1 protobuf messages and the engine's own types.

No rules live here: validation and routing are the router's (`switchpoint.routing`).
"""

from __future__ import annotations

from switchpoint.cache.records import CacheControls
from switchpoint.engine.path import AttemptRecord, ChatResult, StreamDelta
from switchpoint.providers.base import ChatMessage
from switchpoint.request import (
    NO_CACHE_CONTROLS,
    NO_PARAMS,
    NO_ROUTING,
    ChatInput,
    GenerationParams,
    RoutingOptions,
    new_request_id,
)
from switchpoint.routing import Decision
from switchpoint.v1 import router_pb2 as pb


def _routing(options: pb.RoutingOptions) -> RoutingOptions:
    weights = options.weights
    return RoutingOptions(
        models=tuple(options.models),
        stage=options.stage,
        strategy=options.strategy,
        weights=(
            (weights.cost, weights.latency, weights.quality)
            if options.HasField("weights")
            else None
        ),
        tenant=options.tenant,
        priority=options.priority,
        capabilities=tuple(options.capabilities),
        max_cost_usd=options.max_cost_usd if options.HasField("max_cost_usd") else None,
        hedge=options.hedge,
        user=options.user,
    )


def _params(params: pb.GenerationParams) -> GenerationParams:
    return GenerationParams(
        max_tokens=params.max_tokens if params.HasField("max_tokens") else None,
        temperature=params.temperature if params.HasField("temperature") else None,
        top_p=params.top_p if params.HasField("top_p") else None,
        stop=tuple(params.stop),
    )


def _cache_controls(cache: pb.CacheControl) -> CacheControls:
    return CacheControls(
        bypass=cache.bypass,
        no_semantic=cache.no_semantic,
        threshold=cache.threshold if cache.HasField("threshold") else None,
    )


def chat_input(request: pb.ChatRequest | pb.RouteRequest) -> ChatInput:
    if isinstance(request, pb.ChatRequest):
        cache = _cache_controls(request.cache) if request.HasField("cache") else NO_CACHE_CONTROLS
    else:
        cache = NO_CACHE_CONTROLS
    request_id = request.request_id
    return ChatInput(
        cache=cache,
        messages=tuple([ChatMessage(m.role, m.content) for m in request.messages]),
        routing=_routing(request.routing) if request.HasField("routing") else NO_ROUTING,
        params=_params(request.params) if request.HasField("params") else NO_PARAMS,
        # Every call gets an id at the door, so logs, chunks and errors can all name it.
        request_id=request_id or new_request_id(),
    )


def decision_message(decision: Decision) -> pb.RouteDecision:
    return pb.RouteDecision.FromString(decision.encode())


def _attempt(record: AttemptRecord) -> pb.Attempt:
    return pb.Attempt(
        model=record.model,
        provider=record.provider,
        outcome="ok" if record.ok else "error",
        latency_ms=record.latency_ms,
        error_class=record.error_class,
        error_message=record.error_message,
        usage=pb.Usage(input_tokens=record.input_tokens, output_tokens=record.output_tokens),
        cost_usd=record.cost_usd,
    )


def chat_response(result: ChatResult) -> pb.ChatResponse:
    return pb.ChatResponse(
        request_id=result.request_id,
        content=result.content,
        model=result.model,
        provider=result.provider,
        usage=pb.Usage(input_tokens=result.input_tokens, output_tokens=result.output_tokens),
        cost_usd=result.cost_usd,
        latency_ms=result.latency_ms,
        finish_reason=result.finish_reason,
        attempts=[_attempt(a) for a in result.attempts],
        decision=decision_message(result.decision),
        cache=_cache_hit(result),
    )


def delta_chunk(delta: StreamDelta, request_id: str) -> pb.ChatChunk:
    return pb.ChatChunk(
        request_id=request_id,
        delta=delta.text,
        model=delta.model,
        provider=delta.provider,
        continued_from=delta.continued_from,
    )


def final_chunk(result: ChatResult) -> pb.ChatChunk:
    return pb.ChatChunk(
        request_id=result.request_id,
        model=result.model,
        provider=result.provider,
        done=True,
        usage=pb.Usage(input_tokens=result.input_tokens, output_tokens=result.output_tokens),
        cost_usd=result.cost_usd,
        latency_ms=result.latency_ms,
        ttft_ms=result.ttft_ms,
        finish_reason=result.finish_reason,
        attempts=[_attempt(a) for a in result.attempts],
        cache=_cache_hit(result),
    )


def _cache_hit(result: ChatResult) -> pb.CacheHit | None:
    hit = result.cache
    if hit is None:
        return None
    return pb.CacheHit(
        hit=True,
        kind=hit.kind,
        similarity=hit.similarity,
        age_s=hit.age_s,
        saved_cost_usd=hit.cost_saved_usd,
    )
