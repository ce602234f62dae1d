"""The request path, and nothing else:

    decide (validate and route in Rust, gate, breakers) -> for each model of the chain: a turn
    (reserve -> queue -> call with retries -> settle + record), hedged when asked (`engine.hedging`)

Route stops after decide; Chat and ChatStream run the whole path. What a failure means is decided in
`engine.resilience`, one model's turn runs in `engine.attempts`, wire formats live in
`switchpoint.server`.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterator, Mapping
from contextlib import aclosing

from opentelemetry import trace
from opentelemetry.trace import Tracer

from switchpoint._native import LatencyTracker, WorkStop
from switchpoint.cache.store import ResponseCache
from switchpoint.config import BreakerConfig, Config, ModelConfig
from switchpoint.engine.attempts import CONTINUE_PROMPT, Attempts, Outcome
from switchpoint.engine.caching import CacheFront
from switchpoint.engine.calls import SKIPPED, AttemptRecord, CallState, ChatResult, StreamDelta
from switchpoint.engine.hedging import Hedging
from switchpoint.engine.resilience import Breakers
from switchpoint.errors import AllAttemptsFailedError, QuotaExceededError, SwitchpointError
from switchpoint.instruments import MetricsSink, NullMetrics, records_spans
from switchpoint.offload import OFFLOAD_ABOVE_BYTES, Offload
from switchpoint.providers.base import ProviderAdapter
from switchpoint.quota.gate import TokenGate
from switchpoint.quota.scheduler import Scheduler
from switchpoint.quota.scopes import RequestScope
from switchpoint.registry import Registry
from switchpoint.request import ChatInput, new_request_id, prompt_size
from switchpoint.routing import Decision, build_router
from switchpoint.stats import StatsBook
from switchpoint.telemetry import SPAN_GATE, SPAN_ROUTE
from switchpoint.tokens import TokenCounter

__all__ = ["CONTINUE_PROMPT", "AttemptRecord", "ChatResult", "Engine", "StreamDelta"]


class Engine:
    """One config's worth of routing state and provider adapters; built by the server factory."""

    def __init__(
        self,
        config: Config,
        registry: Registry,
        adapters: Mapping[str, ProviderAdapter],
        latency: LatencyTracker,
        stats: StatsBook,
        *,
        gate: TokenGate | None = None,
        breakers: Breakers | None = None,
        scheduler: Scheduler | None = None,
        tracer: Tracer | None = None,
        metrics: MetricsSink | None = None,
        cache: ResponseCache | None = None,
    ) -> None:
        self.config = config
        self.registry = registry
        self.latency = latency
        self.stats = stats
        self.gate = gate or TokenGate(config)
        self.breakers = breakers or Breakers(self._breaker_policy)
        self.scheduler = scheduler or Scheduler(
            {m.name: m.max_concurrency for m in registry.models},
            max_age_s=config.routing.queue_max_age_s,
            max_depth=config.routing.queue_max_depth,
            max_wait_s=config.routing.queue_max_wait_s,
        )
        self.tracer = tracer or trace.NoOpTracer()
        # Spans the no-op tracer would hand out cost a few microseconds each and record nothing.
        self._records_spans = records_spans(self.tracer)
        # What of `routes_alone` a config load fixes; only the breakers change between calls.
        self._router_may_answer = not self._records_spans and self.gate.admits_in_rust
        self.metrics = metrics or NullMetrics()
        self.adapters = adapters
        self.cache = (
            CacheFront(cache, registry, self.tracer, self.metrics) if cache is not None else None
        )
        self.tokens = TokenCounter()
        self.router = build_router(config, registry, self.tokens)
        self._attempts = Attempts(
            config,
            registry,
            adapters,
            gate=self.gate,
            breakers=self.breakers,
            scheduler=self.scheduler,
            latency=latency,
            stats=stats,
            tracer=self.tracer,
            metrics=self.metrics,
            tokens=self.tokens,
        )
        self._hedging = Hedging(config, registry, latency, self._attempts)

    def _breaker_policy(self, model_name: str) -> BreakerConfig:
        index = self.registry.index_of(model_name)
        provider = self.registry.models[index].provider if index is not None else None
        if provider is None:
            return BreakerConfig()
        return self.config.providers[provider].breaker

    @property
    def shares_budgets(self) -> bool:
        return self.gate.shared is not None

    def shared_state_problem(self) -> str:
        """Why shared quota state is degraded; empty when healthy or not configured."""
        shared = self.gate.shared
        return shared.degraded_reason if shared is not None and shared.degraded else ""

    # -- decide -------------------------------------------------------------------------------

    def routes_alone(self) -> bool:
        """Whether the Rust router can answer a Route call from its bytes (`Router.route_wire`)
        with the decision `decide` would make: no open breaker, no span to record, and a gate it
        can check itself (`TokenGate.admits_in_rust`)."""
        return self._router_may_answer and self.breakers.all_closed()

    def decide(self, request: ChatInput, *, for_call: bool = False) -> Decision:
        """Validate, route, and drop the candidates the gate or an open breaker refuses now.

        Raises InvalidRequestError, NoEligibleModelError, PolicyDeniedError or QuotaExceededError.
        With `for_call` and a cache, a gate refusal is carried in the decision instead: a cached
        answer costs nothing, so the call may still be served from the cache.
        """
        scope = RequestScope(request.routing.tenant, request.routing.stage)
        pressure = self.gate.pressure if self.gate.shifts_strategies else None
        if not self._records_spans:
            return self._admit(self.router.decide(request, pressure), scope, for_call)
        with self.tracer.start_as_current_span(SPAN_ROUTE) as span:
            decision = self.router.decide(request, pressure)
            span.set_attribute("switchpoint.level", decision.level.name.lower())
            span.set_attribute("switchpoint.strategy", decision.strategy)
        return self._admit_in_span(decision, scope, for_call)

    async def decide_off_loop(
        self,
        request: ChatInput,
        offload: Offload,
        *,
        for_call: bool = False,
        timeout_s: float | None = None,
    ) -> Decision:
        """`decide`, with a large prompt routed on `offload`'s threads (see switchpoint.offload)
        and stopped at `timeout_s` or when this call is cancelled (DeadlineExceededError)."""
        if prompt_size(request) <= OFFLOAD_ABOVE_BYTES:
            return self.decide(request, for_call=for_call)
        # Validation is bounded by server.limits; it and budget pressure (which reads and makes
        # gate state) stay on the loop, so the thread only counts and scores.
        self.router.validate(request)
        routing = request.routing
        scope = RequestScope(routing.tenant, routing.stage)
        shift = self.gate.pressure(routing.tenant, routing.stage)
        router = self.router

        def route(stop: WorkStop) -> Decision:
            decision: Decision = router.decide(request, lambda _tenant, _stage: shift, stop)
            return decision

        if not self._records_spans:
            return self._admit(await offload.run(route, timeout_s), scope, for_call)
        with self.tracer.start_as_current_span(SPAN_ROUTE) as span:
            decision = await offload.run(route, timeout_s)
            span.set_attribute("switchpoint.level", decision.level.name.lower())
            span.set_attribute("switchpoint.strategy", decision.strategy)
        return self._admit_in_span(decision, scope, for_call)

    def _admit_in_span(self, decision: Decision, scope: RequestScope, for_call: bool) -> Decision:
        with self.tracer.start_as_current_span(SPAN_GATE) as span:
            decision = self._admit(decision, scope, for_call)
            if decision.refusal is None:
                span.set_attribute("switchpoint.model", decision.chosen.name)
                span.set_attribute("switchpoint.candidates", len(decision.candidates))
        return decision

    def _admit(self, decision: Decision, scope: RequestScope, for_call: bool) -> Decision:
        """The decision without the candidates the gate or an open breaker refuses now."""
        try:
            admitted = self.gate.admissible(decision, scope, self.registry)
        except QuotaExceededError as refusal:
            if not (for_call and self.cache is not None):
                raise
            return decision._replace(refusal=refusal)
        return admitted if self.breakers.all_closed() else self._without_open_breakers(admitted)

    def _without_open_breakers(self, decision: Decision) -> Decision:
        kept, reasons = [], []
        for candidate in decision.candidates:
            breaker = self.breakers.get(candidate.name)
            if breaker.allows():
                kept.append(candidate)
            else:
                reasons.append(
                    f"{candidate.name} excluded: circuit breaker open "
                    f"(retry in {breaker.retry_after_s():.1f}s)"
                )
        if not reasons:
            return decision
        # With every ranked candidate open the decision stands (the call skips them and tries
        # the fallback chain), but it says why the chosen model may not be the one that answers.
        return decision._replace(
            candidates=tuple(kept) or decision.candidates,
            reasons=(*decision.reasons, *reasons),
        )

    # -- call with fallback -------------------------------------------------------------------

    async def chat(
        self, request: ChatInput, decision: Decision, *, deadline: float | None = None
    ) -> ChatResult:
        """Serve the call on the decision's models in order, retrying each as its provider's policy
        says. `deadline` (time.monotonic()) bounds every attempt and backoff together."""
        async with aclosing(self._serve(request, decision, deadline, streamed=False)) as served:
            async for event in served:
                if isinstance(event, ChatResult):
                    return event
        # `_serve` ends with the result or raises: a whole call yields nothing before it.
        raise AssertionError("the request path ended without a result")

    def stream(
        self, request: ChatInput, decision: Decision, *, deadline: float | None = None
    ) -> AsyncGenerator[StreamDelta | ChatResult, None]:
        """Relay the provider's stream. Before the first token a failure is invisible to the client;
        after it, the answer continues on the next attempt (unless continuation is off)."""
        return self._serve(request, decision, deadline, streamed=True)

    async def _serve(
        self, request: ChatInput, decision: Decision, deadline: float | None, *, streamed: bool
    ) -> AsyncGenerator[StreamDelta | ChatResult, None]:
        """The one sequence of Chat and ChatStream: cache lookup, the gate's refusal, hedging, the
        chain of models, remember, finish. Streamed, the deltas come first; the result is last."""
        call = CallState(request, decision, request.request_id or new_request_id(), deadline)
        cache = self.cache
        hit = await cache.lookup(call) if cache is not None else None
        if hit is not None and cache is not None:
            # A hit costs nothing: no reservation, no provider, no budget. A stream replays it
            # like a provider's.
            cached = cache.result(call, hit)
            if streamed:
                for piece in cache.pieces(hit):
                    yield StreamDelta(piece, cached.model, cached.provider)
            yield self._finish(call, cached)
            return
        if decision.refusal is not None:
            raise decision.refusal
        models = self._chain(call)
        outcome = Outcome()
        if self._hedging.applies(request):
            hedged = self._hedging.run(call, models, outcome, streamed=streamed)
            async with aclosing(hedged) as deltas:
                async for delta in deltas:
                    yield delta
        for model in models if outcome.result is None else ():
            async with aclosing(
                self._attempts.turn(call, model, outcome, streamed=streamed)
            ) as deltas:
                async for delta in deltas:
                    yield delta
            if outcome.result is not None:
                break
        if outcome.result is None:
            raise self._exhausted(call)
        if cache is not None:
            await cache.remember(call, outcome.result)
        yield self._finish(call, outcome.result)

    def _finish(self, call: CallState, result: ChatResult) -> ChatResult:
        span = call.root_span
        span.set_attribute("switchpoint.model", result.model)
        span.set_attribute("switchpoint.attempts", len(result.attempts))
        span.set_attribute("gen_ai.usage.input_tokens", result.input_tokens)
        span.set_attribute("gen_ai.usage.output_tokens", result.output_tokens)
        span.set_attribute("switchpoint.cost_usd", result.cost_usd)
        return result

    # -- the chain ----------------------------------------------------------------------------

    def _chain(self, call: CallState) -> Iterator[ModelConfig]:
        """The decision's candidates, then its fallback chain; no model twice, none too small for
        a context window a provider already rejected."""
        decision = call.decision
        for name in [c.name for c in decision.candidates] + list(decision.fallback):
            index = self.registry.index_of(name)
            if name in call.tried or index is None:
                continue
            call.tried.add(name)
            model = self.registry.models[index]
            if model.context_window < call.min_context_window:
                call.skip(
                    model.name,
                    model.provider,
                    "context_window_too_small",
                    f"context window {model.context_window} < {call.min_context_window}",
                )
                continue
            yield model

    def _exhausted(self, call: CallState) -> SwitchpointError:
        tried = [a for a in call.attempts if a.error_class not in SKIPPED]
        if not tried and call.refusals:
            # No provider was even called: every model was over a limit. Say which clears first.
            return min(call.refusals, key=lambda r: r.retry_after_s)
        return AllAttemptsFailedError(call.last_provider_error, call.attempts)
