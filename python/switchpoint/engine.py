"""The request path, and nothing else:

    decide (validate and route in Rust, gate, breakers) -> for each model of the chain: a turn
    (reserve -> admit -> call with retries -> settle + record), hedged when asked

Route stops after decide; Chat and ChatStream run the whole path. What a failure means is decided in
`switchpoint.resilience`, one model's turn runs in `switchpoint.attempts`, wire formats live in
`switchpoint.server`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Iterator, Mapping
from contextlib import aclosing
from dataclasses import replace
from typing import Literal

from opentelemetry import trace
from opentelemetry.trace import Tracer

from switchpoint._native import LatencyTracker, WorkStop
from switchpoint.attempts import CONTINUE_PROMPT, Attempts, Outcome
from switchpoint.cache.serving import CacheFront
from switchpoint.cache.store import ResponseCache
from switchpoint.calls import SKIPPED, AttemptRecord, CallState, ChatResult, StreamDelta
from switchpoint.config import BreakerConfig, Config, ModelConfig
from switchpoint.errors import AllAttemptsFailedError, QuotaExceededError, SwitchpointError
from switchpoint.gate import RequestScope, TokenGate
from switchpoint.instruments import MetricsSink, NullMetrics, records_spans
from switchpoint.offload import OFFLOAD_ABOVE_BYTES, Offload
from switchpoint.providers.base import ProviderAdapter
from switchpoint.registry import Registry
from switchpoint.request import ChatInput, new_request_id, prompt_size
from switchpoint.resilience import Breakers
from switchpoint.routing import Decision, build_router
from switchpoint.scheduler import Scheduler
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
        call = CallState(request, decision, request.request_id or new_request_id(), deadline)
        if self.cache is not None:
            hit = await self.cache.lookup(call)
            if hit is not None:
                # A hit costs nothing: no reservation, no provider, no budget.
                return self._finish(call, self.cache.result(call, hit))
        if decision.refusal is not None:
            raise decision.refusal
        models = self._chain(call)
        result: ChatResult | None = None
        if self._hedges(request):
            result = await self._hedged(call, models)
        for model in models if result is None else ():
            result = (await self._attempts.complete_on(call, model)).result
            if result is not None:
                break
        if result is None:
            raise self._exhausted(call)
        if self.cache is not None:
            await self.cache.remember(call, result)
        return self._finish(call, result)

    async def stream(
        self, request: ChatInput, decision: Decision, *, deadline: float | None = None
    ) -> AsyncGenerator[StreamDelta | ChatResult, None]:
        """Relay the provider's stream. Before the first token a failure is invisible to the client;
        after it, the answer continues on the next attempt (unless continuation is off)."""
        call = CallState(request, decision, request.request_id or new_request_id(), deadline)
        hit = await self.cache.lookup(call) if self.cache is not None else None
        if hit is not None and self.cache is not None:
            # Replayed like a provider's stream, at no cost.
            cached = self.cache.result(call, hit)
            for piece in self.cache.pieces(hit):
                yield StreamDelta(piece, cached.model, cached.provider)
            yield self._finish(call, cached)
            return
        if decision.refusal is not None:
            raise decision.refusal
        models = self._chain(call)
        outcome = Outcome()
        if self._hedges(request):
            async with aclosing(self._hedged_stream(call, models, outcome)) as deltas:
                async for delta in deltas:
                    yield delta
        for model in models if outcome.result is None else ():
            async with aclosing(self._attempts.stream_on(call, model, outcome)) as deltas:
                async for delta in deltas:
                    yield delta
            if outcome.result is not None:
                break
        if outcome.result is None:
            raise self._exhausted(call)
        if self.cache is not None:
            await self.cache.remember(call, outcome.result)
        yield self._finish(call, outcome.result)

    def _finish(self, call: CallState, result: ChatResult) -> ChatResult:
        span = call.root_span
        span.set_attribute("switchpoint.model", result.model)
        span.set_attribute("switchpoint.attempts", len(result.attempts))
        span.set_attribute("gen_ai.usage.input_tokens", result.input_tokens)
        span.set_attribute("gen_ai.usage.output_tokens", result.output_tokens)
        span.set_attribute("switchpoint.cost_usd", result.cost_usd)
        return result

    # -- hedging ------------------------------------------------------------------------------

    def _hedges(self, request: ChatInput) -> bool:
        stage = self.config.routing.stages.get(request.routing.stage)
        return request.routing.hedge or (stage is not None and stage.hedge)

    async def _hedged(self, call: CallState, models: Iterator[ModelConfig]) -> ChatResult | None:
        """Race the first model against the second once the first is slower than its usual p95;
        the first answer wins and the other call is cancelled, charged what reached its provider
        (`switchpoint.billing`) and listed with the answer's attempts and usage."""
        primary = next(models, None)
        if primary is None:
            return None
        racers = {asyncio.create_task(self._attempts.complete_on(call, primary)): primary}
        done, _ = await asyncio.wait(racers, timeout=self._hedge_delay_s(primary, call))
        if not done:
            second = next(models, None)
            if second is not None:
                racers[asyncio.create_task(self._attempts.complete_on(call, second))] = second
        winner: ChatResult | None = None
        try:
            while racers and winner is None:
                done, _ = await asyncio.wait(racers, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    del racers[task]
                    winner = winner or task.result().result
        finally:
            for task in racers:
                task.cancel()
            await asyncio.gather(*racers, return_exceptions=True)
            for model in racers.values():
                _list_hedge_loser(call, model, "another attempt answered first")
        if winner is None:
            return None
        # The loser is listed and counted too: every attempt and what it cost is in the answer.
        input_tokens, output_tokens, cost = call.totals()
        return replace(
            winner,
            attempts=tuple(call.attempts),
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cost_usd=cost,
        )

    async def _hedged_stream(
        self, call: CallState, models: Iterator[ModelConfig], outcome: Outcome
    ) -> AsyncGenerator[StreamDelta, None]:
        """Streams race to their first token (see `_first_token_race`); the other stream is
        cancelled (charged what reached its provider, and listed) and the rest of the answer
        comes from the winner. If no racer gives a token, nothing is yielded and the caller goes
        on down the chain."""
        racers: list[_StreamRacer] = []
        sent_before = list(call.sent)
        try:
            winner, first = await self._first_token_race(call, models, racers)
            if winner is None:
                return
            # Whatever a losing stream relayed in the same loop turn is not what the client got.
            call.sent[:] = [*sent_before, first.text] if first is not None else sent_before
            for racer in racers:
                if racer is not winner:
                    await racer.cancel()
                    why = "another stream gave its first token first"
                    _list_hedge_loser(call, racer.model, why)
            if first is not None:
                yield first
                async for delta in winner.stream:
                    yield delta
            outcome.result = winner.outcome.result
        finally:
            for racer in racers:
                await racer.cancel()

    async def _first_token_race(
        self, call: CallState, models: Iterator[ModelConfig], racers: list[_StreamRacer]
    ) -> tuple[_StreamRacer | None, StreamDelta | None]:
        """The first model's stream alone until it is slower than its usual p95 time to first
        token, then the second model's too; the winner is the first to give a token (or a whole,
        empty answer), with that token. A racer that fails before its first token drops out.
        Every racer started is appended to `racers`, for the caller to stop."""
        primary = next(models, None)
        if primary is None:
            return None, None
        racers.append(_StreamRacer(self._attempts, call, primary))
        pending = {racers[0].next_delta(): racers[0]}
        hedge_after: float | None = self._hedge_delay_s(primary, call, kind="ttft")
        while pending:
            done, _ = await asyncio.wait(
                pending, timeout=hedge_after, return_when=asyncio.FIRST_COMPLETED
            )
            hedge_after = None
            if not done:
                second = next(models, None) if len(racers) == 1 else None
                if second is not None:
                    racers.append(_StreamRacer(self._attempts, call, second))
                    pending[racers[-1].next_delta()] = racers[-1]
                continue
            # In chain order, so two first tokens in one loop turn go to the earlier model.
            for task in sorted(done, key=lambda t: racers.index(pending[t])):
                racer = pending.pop(task)
                delta = task.result()  # None: the stream ended without a token
                if delta is not None or racer.outcome.result is not None:
                    return racer, delta
        return None, None

    def _hedge_delay_s(
        self, model: ModelConfig, call: CallState, *, kind: Literal["total", "ttft"] = "total"
    ) -> float:
        """The model's observed p95 whole-call latency (or time to first token), or its prior
        before enough samples."""
        p95_ms, samples = self.latency.percentiles(self.latency.slot(model.name), kind)[1::2]
        if samples < self.config.routing.min_latency_samples:
            p95_ms = (
                self.registry.prior_latency_ms(model, call.decision.output_tokens)
                if kind == "total"
                else model.latency_prior.ttft_ms
            )
        return p95_ms / 1000.0

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


def _list_hedge_loser(call: CallState, model: ModelConfig, why: str) -> None:
    """The attempt record of a racer stopped because another won, with what it was charged."""
    input_tokens, output_tokens, cost = call.unlisted_usage.pop(model.name, (0, 0, 0.0))
    call.attempts.append(
        AttemptRecord(
            model.name, model.provider, 0.0, "hedge_lost", why, input_tokens, output_tokens, cost
        )
    )


class _StreamRacer:
    """One model's stream in a hedged race, advanced a delta at a time in a task of its own."""

    def __init__(self, attempts: Attempts, call: CallState, model: ModelConfig) -> None:
        self.model = model
        self.outcome = Outcome()
        self.stream = attempts.stream_on(call, model, self.outcome)
        self._task: asyncio.Task[StreamDelta | None] | None = None

    def next_delta(self) -> asyncio.Task[StreamDelta | None]:
        self._task = asyncio.create_task(self._next())
        return self._task

    async def _next(self) -> StreamDelta | None:
        return await anext(self.stream, None)

    async def cancel(self) -> None:
        """Stop the stream wherever it is; its attempt releases its reservation as it unwinds."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()  # a no-op once done; gathering also collects what it raised
            await asyncio.gather(task, return_exceptions=True)
        await self.stream.aclose()
