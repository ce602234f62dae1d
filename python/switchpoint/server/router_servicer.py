"""The switchpoint.v1.Router gRPC servicer: wire in, engine call, wire out, errors mapped once."""

from __future__ import annotations

import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import aclosing
from functools import partial
from typing import Any, NoReturn

import grpc
from google.protobuf.message import DecodeError

from switchpoint._native import Decision
from switchpoint.engine.path import ChatResult, Engine
from switchpoint.errors import FeatureOffError, InvalidRequestError, RequestTooLargeError
from switchpoint.offload import Offload
from switchpoint.reload import LiveEngine
from switchpoint.request import ChatInput, new_request_id
from switchpoint.security.access import (
    AccessDenied,
    authenticate,
    bind_feedback,
    bind_routing,
    bind_stats,
)
from switchpoint.server import convert
from switchpoint.server.observe import Observation, RequestObserver
from switchpoint.server.status import failure_for
from switchpoint.splits.assign import Assignment
from switchpoint.splits.book import arm_stats
from switchpoint.v1 import router_pb2 as pb

ServicerContext = grpc.aio.ServicerContext[object, object]
SERVICE = pb.DESCRIPTOR.services_by_name["Router"].full_name


def add_router_to_server(servicer: RouterServicer, server: grpc.aio.Server) -> None:
    """Register switchpoint.v1.Router as the generated `add_RouterServicer_to_server` does, except
    that Route takes and returns bytes: its request is decoded, and its answer encoded, by the
    Rust router, and building protobuf messages in Python would cost a Route call more than the
    decision itself."""
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
        "Route": grpc.unary_unary_rpc_method_handler(servicer.Route),
        "Chat": grpc.unary_unary_rpc_method_handler(
            servicer.Chat,
            request_deserializer=pb.ChatRequest.FromString,
            response_serializer=pb.ChatResponse.SerializeToString,
        ),
        "ChatStream": grpc.unary_stream_rpc_method_handler(
            servicer.ChatStream,
            request_deserializer=pb.ChatRequest.FromString,
            response_serializer=pb.ChatChunk.SerializeToString,
        ),
        "GetStats": grpc.unary_unary_rpc_method_handler(
            servicer.GetStats,
            request_deserializer=pb.StatsRequest.FromString,
            response_serializer=pb.Stats.SerializeToString,
        ),
        "Feedback": grpc.unary_unary_rpc_method_handler(
            servicer.Feedback,
            request_deserializer=pb.FeedbackRequest.FromString,
            response_serializer=pb.FeedbackReply.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_registered_method_handlers(SERVICE, handlers)


class RouterServicer:
    """Holds the live engine rather than an engine so a config reload can swap engines between
    calls while each call keeps the engine it started with; calls that reach providers hold it
    (`hold`), so what a reload retires is closed only after they end."""

    def __init__(
        self, engine: LiveEngine, observer: RequestObserver, offload: Offload | None = None
    ) -> None:
        self._engine = engine
        self._observer = observer
        # Where a large request is routed (switchpoint.offload); tests may leave it out.
        self._offload = offload or Offload()

    async def Route(self, request: bytes, context: ServicerContext) -> bytes:
        """Served from the request's bytes (see `add_router_to_server`): when nothing but sizes is
        observed, one call into Rust decodes, decides (the same entry point as every request) and
        encodes; a request that needs a long count is decided on a worker thread
        (switchpoint.offload). When spans or prompts are recorded, the request is decoded here so
        they can be, and decided by the same entry point. A refusal is observed with the request
        it refuses.

        With tenant API keys the request is decoded here first, checked, bound to the key's tenant
        and re-encoded; without keys nothing is added."""
        build = self._engine.build
        if build.tenant_keys.enabled:
            request = await self._bound_route_request(request, context)
        engine = build.engine
        observer = self._observer
        if not observer.light or engine.reads_prompts:
            return await self._route(engine, request, context)
        split = None
        if engine.splits.active:
            request, split = await self._split_route_request(engine, request, context)
        gate, router = engine.gate, engine.router
        started = time.perf_counter()
        route = partial(
            router.route_wire,
            request,
            request_id=new_request_id(),
            explore_draw=random.random() if engine.explores else 1.0,
            open_breakers=engine.breakers.refusing(),
            tally=observer.route_tally,
        )
        try:
            routed = await self._offload.run_where_cheap(
                lambda stop: route(now=gate.now(), stop=stop),
                size=len(request),
                timeout_s=context.time_remaining(),
                asking=gate.asking,
                asking_async=gate.asking_async,
            )
        except Exception as exc:
            return await self._route_refused(engine, request, exc, context, split)
        if observer.logs_requests or split is not None:
            observer.routed(routed, time.perf_counter() - started, split=split)
        return routed.decision if split is None else split.annotate(routed.decision)

    async def _split_route_request(
        self, engine: Engine, request: bytes, context: ServicerContext
    ) -> tuple[bytes, Assignment | None]:
        """The request as its split's arm routes it, re-encoded when the arm changed it, and its
        place in the split (switchpoint.splits)."""
        try:
            message = pb.RouteRequest.FromString(request)
        except DecodeError:
            await self._refuse_undecodable(context)
        split = engine.splits.assign_message(message)
        if split is not None and split.applied:
            request = message.SerializeToString()
        return request, split

    async def _route_refused(
        self,
        engine: Engine,
        request: bytes,
        failure: Exception,
        context: ServicerContext,
        split: Assignment | None = None,
    ) -> NoReturn:
        """A Route the router refused, observed (request line, metrics) with its tenant and
        stage, and answered with the refusal's status."""
        try:
            decoded = pb.RouteRequest.FromString(request)
        except DecodeError:
            await self._refuse_undecodable(context)
        try:
            self._engine().router.check_message_count(len(decoded.messages))
        except RequestTooLargeError:
            await self._refuse_unread("Route", failure, context)
        chat_input = convert.chat_input(decoded)
        with self._observer.observe("Route", context, chat_input, calls_providers=False) as seen:
            seen.split = split
            await _abort(context, failure, chat_input.request_id, seen)

    async def _bound_route_request(self, request: bytes, context: ServicerContext) -> bytes:
        build = self._engine.build
        try:
            key = authenticate(build.tenant_keys, context.invocation_metadata())
            try:
                message = pb.RouteRequest.FromString(request)
            except DecodeError:
                await self._refuse_undecodable(context)
            bind_routing(key, message.routing, build.engine.config.routing.stages)
        except AccessDenied as denied:
            await self._refuse_unread("Route", denied, context)
        # Always re-encoded, even when binding changed nothing: the Rust decoder then reads the
        # canonical bytes of the message that was checked, never a field (a repeated tenant, an
        # odd tag encoding) that the two decoders might read differently.
        return message.SerializeToString()

    async def _route(self, engine: Engine, request: bytes, context: ServicerContext) -> bytes:
        try:
            decoded = pb.RouteRequest.FromString(request)
        except DecodeError:
            await self._refuse_undecodable(context)
        chat_input = await self._chat_input("Route", decoded, context)
        with self._observer.observe("Route", context, chat_input, calls_providers=False) as seen:
            chat_input, seen.split = engine.splits.assign(chat_input)
            try:
                seen.decision = await engine.decide_off_loop(
                    chat_input, self._offload, timeout_s=context.time_remaining()
                )
            except Exception as exc:
                await _abort(context, exc, chat_input.request_id, seen)
            answer = seen.decision.encode()
            return seen.split.annotate(answer) if seen.split is not None else answer

    async def _refuse_undecodable(self, context: ServicerContext) -> NoReturn:
        failure = InvalidRequestError("request", "is not a valid switchpoint.v1.RouteRequest")
        await self._refuse_unread("Route", failure, context)

    async def _refuse_unread(
        self, rpc: str, failure: Exception, context: ServicerContext
    ) -> NoReturn:
        unread = ChatInput(messages=(), request_id=new_request_id())
        with self._observer.observe(rpc, context, unread, calls_providers=False) as seen:
            await _abort(context, failure, unread.request_id, seen)

    async def _bind_chat(self, rpc: str, request: pb.ChatRequest, context: ServicerContext) -> None:
        build = self._engine.build
        try:
            key = authenticate(build.tenant_keys, context.invocation_metadata())
            bind_routing(key, request.routing, build.engine.config.routing.stages)
        except AccessDenied as denied:
            # Observed like any refusal: a request line, the metrics and a span say who was
            # turned away and why.
            await self._refuse_unread(rpc, denied, context)

    async def _chat_input(
        self, rpc: str, request: pb.ChatRequest | pb.RouteRequest, context: ServicerContext
    ) -> ChatInput:
        """The request as the engine reads it. The message count is checked first: a megabyte
        holds hundreds of thousands of empty messages, which would take the loop most of a second
        to convert only to be refused."""
        try:
            self._engine().router.check_message_count(len(request.messages))
        except RequestTooLargeError as exc:
            await self._refuse_unread(rpc, exc, context)
        return convert.chat_input(request)

    async def Chat(self, request: pb.ChatRequest, context: ServicerContext) -> pb.ChatResponse:
        if self._engine.build.tenant_keys.enabled:
            await self._bind_chat("Chat", request, context)
        chat_input = await self._chat_input("Chat", request, context)
        with (
            self._engine.hold() as engine,
            self._observer.observe("Chat", context, chat_input) as seen,
        ):
            chat_input, seen.split = engine.splits.assign(chat_input)
            try:
                seen.decision = await engine.route_off_loop(
                    chat_input, self._offload, timeout_s=context.time_remaining()
                )
                seen.result = await engine.chat(
                    chat_input, seen.decision, deadline=_deadline(context)
                )
            except Exception as exc:
                await _abort(context, exc, chat_input.request_id, seen)
            response = convert.chat_response(seen.result)
            if seen.split is not None:
                seen.split.annotate_message(response.decision)
            return response

    async def ChatStream(
        self, request: pb.ChatRequest, context: ServicerContext
    ) -> AsyncIterator[pb.ChatChunk]:
        if self._engine.build.tenant_keys.enabled:
            await self._bind_chat("ChatStream", request, context)
        chat_input = await self._chat_input("ChatStream", request, context)
        with (
            self._engine.hold() as engine,
            self._observer.observe("ChatStream", context, chat_input) as seen,
        ):
            chat_input, seen.split = engine.splits.assign(chat_input)
            async with aclosing(self._stream(engine, chat_input, context, seen)) as chunks:
                async for chunk in chunks:
                    yield chunk

    async def _stream(
        self, engine: Engine, chat_input: ChatInput, context: ServicerContext, seen: Observation
    ) -> AsyncGenerator[pb.ChatChunk, None]:
        request_id = chat_input.request_id
        try:
            routed = seen.decision = await engine.route_off_loop(
                chat_input, self._offload, timeout_s=context.time_remaining()
            )
            decision = routed
            first = True
            # aclosing: a cancelled client call closes the engine's stream at once, which releases
            # its gate reservation and the upstream response.
            stream_deltas = engine.stream(chat_input, routed, deadline=_deadline(context))
            async with aclosing(stream_deltas) as stream:
                async for item in stream:
                    if isinstance(item, Decision):
                        # The decision that serves the call, admitted; on the first chunk.
                        decision = seen.decision = item
                        continue
                    if isinstance(item, ChatResult):
                        seen.result = item
                        chunk = convert.final_chunk(item)
                    else:
                        chunk = convert.delta_chunk(item, request_id)
                    if first:
                        chunk.decision.CopyFrom(convert.decision_message(decision))
                        if seen.split is not None:
                            seen.split.annotate_message(chunk.decision)
                        first = False
                    yield chunk
        except Exception as exc:
            await _abort(context, exc, request_id, seen)

    async def Feedback(
        self, request: pb.FeedbackRequest, context: ServicerContext
    ) -> pb.FeedbackReply:
        """A score for the answer of an earlier call of the same tenant (see QualityPredictor.
        feedback); the predictor learns it at once."""
        keys = self._engine.build.tenant_keys
        if keys.enabled:
            try:
                bind_feedback(authenticate(keys, context.invocation_metadata()), request)
            except AccessDenied as denied:
                await context.abort(denied.code, denied.message)
        engine = self._engine()
        predictor = engine.predictor
        if predictor is None:
            off = failure_for(
                FeatureOffError(
                    "routing.predictor.enabled is false: this sidecar learns from no feedback"
                ),
                request.request_id,
            )
            await context.abort(off.code, off.message)
        try:
            model = await predictor.feedback(
                request.request_id,
                request.tenant,
                request.model,
                request.score,
                {m.name for m in engine.registry.models},
            )
        except Exception as exc:
            failure = failure_for(exc, request.request_id)
            await context.abort(failure.code, failure.message)
        return pb.FeedbackReply(model=model, outcomes=predictor.outcomes)

    async def GetStats(self, request: pb.StatsRequest, context: ServicerContext) -> pb.Stats:
        keys = self._engine.build.tenant_keys
        if keys.enabled:
            try:
                bind_stats(authenticate(keys, context.invocation_metadata()), request)
            except AccessDenied as denied:
                await context.abort(denied.code, denied.message)
        try:
            return stats_message(
                self._engine,
                self._observer,
                request.models,
                request.tenant if request.HasField("tenant") else None,
                request.stage if request.HasField("stage") else None,
            )
        except InvalidRequestError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))


def stats_message(
    live: LiveEngine,
    observer: RequestObserver,
    models: Sequence[str] = (),
    tenant: str | None = None,
    stage: str | None = None,
) -> pb.Stats:
    """GetStats' answer, for every front: `models` (all when empty), counters of `tenant` and
    `stage` only when given. Raises InvalidRequestError naming a model the config lacks."""
    engine = live()
    names = [m.name for m in engine.registry.models]
    for i, name in enumerate(models):
        if name not in names:
            raise InvalidRequestError(f"models[{i}]", f"unknown model '{name}'")
    wanted = set(models) or set(names)
    return pb.Stats(
        models=[_model_stats(engine, model, tenant, stage) for model in names if model in wanted],
        uptime_s=engine.stats.uptime_s(),
        shared_state=_shared_state(engine),
        config_error=live.error,
        config_version=live.version,
        cache=_cache_stats(engine),
        budgets=_budgets_left(engine, tenant),
        splits=arm_stats(engine.splits, observer.splits, tenant),
    )


def _budgets_left(engine: Engine, tenant: str | None) -> list[pb.BudgetLeft]:
    gate = engine.gate
    now = gate.now()
    out = []
    for instance in gate.budget_instances():
        scope: dict[str, str] = dict(instance.scope)
        if tenant is not None and scope.get("tenant", tenant) != tenant:
            continue
        state = gate.gate.budget_state(instance.gate_id, now)
        out.append(
            pb.BudgetLeft(
                name=instance.rule.name,
                scope=scope,
                window=instance.rule.window,
                limit_usd=state.limit_usd,
                remaining_usd=state.remaining_usd,
            )
        )
    return out


def _cache_stats(engine: Engine) -> pb.CacheStats:
    if engine.cache is None:
        return pb.CacheStats(enabled=False)
    stats = engine.cache.cache.stats()
    lookups = stats.hits + stats.misses
    return pb.CacheStats(
        enabled=True,
        entries=stats.entries,
        hits=stats.hits,
        misses=stats.misses,
        exact_hits=stats.hits_by_kind.get("exact", 0),
        semantic_hits=stats.hits_by_kind.get("semantic", 0),
        hit_rate=stats.hits / lookups if lookups else 0.0,
        guard_rejections=stats.guard_rejections,
        ambiguous_rejections=stats.ambiguous_rejections,
        evictions=stats.evictions,
        expired=stats.expired,
        last_snapshot_error=stats.last_snapshot_error or "",
    )


def _deadline(context: ServicerContext) -> float | None:
    """The client's gRPC deadline as a time.monotonic() instant; None when it set none."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


def _shared_state(engine: Engine) -> str:
    if not engine.shares_budgets:
        return ""
    problem = engine.shared_state_problem()
    return f"degraded: {problem}" if problem else "ok"


def _model_stats(
    engine: Engine, model: str, tenant: str | None, stage: str | None
) -> pb.ModelStats:
    counters = engine.stats.total(model, tenant=tenant, stage=stage)
    slot = engine.latency.slot(model)
    index = engine.registry.index_of(model)
    provider = engine.registry.models[index].provider if index is not None else ""

    def summary(kind: str) -> pb.LatencySummary:
        p = engine.latency.percentiles(slot, kind)  # type: ignore[arg-type]
        return pb.LatencySummary(
            p50_ms=p.p50_ms, p95_ms=p.p95_ms, p99_ms=p.p99_ms, samples=p.samples
        )

    breaker = engine.breakers.get(model)
    queue = engine.scheduler.queue(model).snapshot()
    return pb.ModelStats(
        model=model,
        provider=provider,
        requests=counters.requests,
        errors=counters.errors,
        input_tokens=counters.input_tokens,
        output_tokens=counters.output_tokens,
        cost_usd=counters.cost_usd,
        latency=summary("total"),
        ttft=summary("ttft"),
        tpot=summary("tpot"),
        breaker_state=breaker.state,
        breaker_opens=breaker.opens,
        queue_depth=queue.depth,
        in_flight=queue.in_flight,
        queue_wait=pb.LatencySummary(
            p50_ms=queue.wait_p50_s * 1000.0,
            p95_ms=queue.wait_p95_s * 1000.0,
            p99_ms=queue.wait_p99_s * 1000.0,
            samples=queue.wait_samples,
        ),
        queue_rejected=queue.rejected_total,
    )


async def _abort(
    context: ServicerContext, exc: Exception, request_id: str, seen: Observation
) -> NoReturn:
    failure = failure_for(exc, request_id)
    seen.failed(failure.code, failure.message)
    await context.abort(failure.code, failure.message, failure.trailing_metadata)
