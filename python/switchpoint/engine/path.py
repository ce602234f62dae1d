"""The request path, and nothing else:

    route (Rust: validate, pressure, levels, score) -> cache -> admit (Rust: the gate's check,
    open breakers) -> for each model of the chain: a turn (reserve -> queue -> call with retries
    -> settle + record), hedged when asked (`engine.hedging`)

Route is `decide` (route and admit in one call into Rust) and stops there; Chat and ChatStream run
the whole path, the cache asked between the halves, so a cached answer needs no quota. What a
failure means is decided in `engine.resilience`, one model's turn runs in `engine.attempts`, wire
formats live in `switchpoint.server`.
"""

from __future__ import annotations

import random
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import aclosing

from opentelemetry import trace
from opentelemetry.trace import Span, Tracer

from switchpoint._native import LatencyTracker, WorkStop
from switchpoint.cache.store import ResponseCache
from switchpoint.config import BreakerConfig, Config, ModelConfig
from switchpoint.engine.attempts import CONTINUE_PROMPT, Attempts, Outcome
from switchpoint.engine.caching import CacheFront
from switchpoint.engine.calls import SKIPPED, AttemptRecord, CallState, ChatResult, StreamDelta
from switchpoint.engine.classifying import build_classifier
from switchpoint.engine.evaluating import CallJudge, Evaluation
from switchpoint.engine.hedging import Hedging
from switchpoint.engine.resilience import Breakers
from switchpoint.errors import AllAttemptsFailedError, SwitchpointError
from switchpoint.evaluation.hooks import OutcomeSink
from switchpoint.evaluation.loading import LoadedHook
from switchpoint.instruments import MetricsSink, NullMetrics, current_span, records_spans
from switchpoint.offload import Offload
from switchpoint.providers.base import ProviderAdapter
from switchpoint.quota.gate import TokenGate
from switchpoint.quota.scheduler import Scheduler
from switchpoint.registry import Registry
from switchpoint.request import ChatInput, new_request_id, prompt_size
from switchpoint.routing import Decision, ScoredModel, build_router
from switchpoint.routing.predictor.service import QualityPredictor
from switchpoint.splits.assign import Splits
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
        predictor: QualityPredictor | None = None,
        hooks: Sequence[LoadedHook] = (),
        tokens: TokenCounter | None = None,
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
        self.metrics = metrics or NullMetrics()
        self.adapters = adapters
        self.cache = (
            CacheFront(cache, registry, self.tracer, self.metrics) if cache is not None else None
        )
        # A reload hands over the running engine's: its encodings take ~0.5 s to read, on the loop.
        self.tokens = tokens or TokenCounter()
        self.router = build_router(config, registry, self.tokens, self.gate.book)
        self.splits = Splits(config.routing.splits, self.gate.labels)
        # Where outcomes go (Feedback, hooks' scores); None when routing.predictor is off.
        self.predictor = predictor
        self.outcomes: OutcomeSink | None = predictor
        self._priors = {m.name: m.quality for m in registry.models}
        # Whether requests draw for exploration (routing.exploration; the core decides with it).
        self.explores = config.routing.exploration.rate > 0
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
        self.evaluation = Evaluation(config, hooks)
        # Asked when the rules are unsure of an auto decision (engine.classifying); None: never.
        self.classifier = build_classifier(
            config.routing.auto.classifier_model,
            registry,
            router=self.router,
            attempts=self._attempts,
            gate=self.gate,
        )
        # The predictor embeds the prompt and a classifier model may be asked about it: a Route
        # then takes this path rather than one call into Rust from its bytes.
        self.reads_prompts = self.predictor is not None or self.classifier is not None

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

    def decide(self, request: ChatInput) -> Decision:
        """The one decision of a request: validated, routed and admitted by the gate and the
        breakers, in one call into Rust. Raises InvalidRequestError, RequestTooLargeError,
        NoEligibleModelError, PolicyDeniedError or QuotaExceededError."""
        gate = self.gate

        def decide() -> Decision:
            return self.router.decide(
                request, now=gate.now(), open_breakers=self.breakers.refusing()
            )

        if not self._records_spans:
            return gate.asking(decide)
        with self.tracer.start_as_current_span(SPAN_ROUTE) as span:
            decision = gate.asking(decide)
            self._describe(span, decision)
        return decision

    async def decide_off_loop(
        self, request: ChatInput, offload: Offload, *, timeout_s: float | None = None
    ) -> Decision:
        """`decide`, with a large prompt decided on `offload`'s threads (see switchpoint.offload)
        and stopped at `timeout_s` or when this call is cancelled (DeadlineExceededError)."""
        if self.explores:
            request = request._replace(explore_draw=random.random())
        if self.predictor is not None:
            return await self._predicted(self._decide_off_loop, request, offload, timeout_s)
        return await self._decide_off_loop(request, offload, timeout_s)

    async def _decide_off_loop(
        self, request: ChatInput, offload: Offload, timeout_s: float | None
    ) -> Decision:
        if self.classifier is not None:
            # The classifier model may be asked between the halves.
            return self.admit(await self._route_off_loop(request, offload, timeout_s), request)
        router, gate, open_breakers = self.router, self.gate, self.breakers.refusing()

        def decide(stop: WorkStop) -> Decision:
            return router.decide(request, now=gate.now(), open_breakers=open_breakers, stop=stop)

        def where() -> Awaitable[Decision]:
            return offload.run_where_cheap(
                decide,
                size=prompt_size(request),
                timeout_s=timeout_s,
                asking=gate.asking,
                asking_async=gate.asking_async,
            )

        if not self._records_spans:
            return await where()
        with self.tracer.start_as_current_span(SPAN_ROUTE) as span:
            decision = await where()
            self._describe(span, decision)
        return decision

    async def route_off_loop(
        self, request: ChatInput, offload: Offload, *, timeout_s: float | None = None
    ) -> Decision:
        """The first half of `decide` (no quota asked yet), for a call the cache may answer; the
        call admits it (`admit`) once the cache has missed. Large prompts go to `offload`. When
        the rules are unsure of an auto decision, the classifier model is asked and the request
        routed again (engine.classifying)."""
        if self.explores:
            request = request._replace(explore_draw=random.random())
        if self.predictor is not None:
            return await self._predicted(self._route_off_loop, request, offload, timeout_s)
        return await self._route_off_loop(request, offload, timeout_s)

    async def _route_off_loop(
        self, request: ChatInput, offload: Offload, timeout_s: float | None
    ) -> Decision:
        router, gate = self.router, self.gate

        def route(
            classified: tuple[str, float] | None = None, note: str = ""
        ) -> Awaitable[Decision]:
            return offload.run_where_cheap(
                lambda stop: router.route(
                    request, now=gate.now(), stop=stop, classified=classified, note=note
                ),
                size=prompt_size(request),
                timeout_s=timeout_s,
                asking=gate.asking,
                asking_async=gate.asking_async,
            )

        with current_span(self.tracer, SPAN_ROUTE) as span:
            routed = await route()
            if self.classifier is not None:
                routed = await self.classifier.reconsider(request, routed, route, timeout_s)
            if self._records_spans:
                span.set_attribute("switchpoint.level", routed.level.name.lower())
                span.set_attribute("switchpoint.strategy", routed.strategy)
        return routed

    async def _predicted(
        self,
        route: Callable[[ChatInput, Offload, float | None], Awaitable[Decision]],
        request: ChatInput,
        offload: Offload,
        timeout_s: float | None,
    ) -> Decision:
        """`route` of `request` with each model's predicted quality, within the same
        `timeout_s`; the request is remembered for a later Feedback call."""
        predictor = self.predictor
        assert predictor is not None
        started = time.monotonic()
        prompt, predicted = await predictor.predict(request, self._priors, timeout_s)
        if timeout_s is not None:
            timeout_s = max(timeout_s - (time.monotonic() - started), 0.0)
        decision = await route(request._replace(predicted=predicted), offload, timeout_s)
        predictor.remember(request.request_id, request.routing.tenant, prompt, decision.chosen.name)
        return decision

    def admit(self, routed: Decision, request: ChatInput) -> Decision:
        """The second half of `decide`: `routed` without the candidates the gate or an open
        breaker refuses now; raises QuotaExceededError when the gate refuses them all."""
        gate, routing = self.gate, request.routing

        def admit() -> Decision:
            return self.router.admit(
                routed,
                tenant=routing.tenant,
                stage=routing.stage,
                now=gate.now(),
                open_breakers=self.breakers.refusing(),
            )

        with current_span(self.tracer, SPAN_GATE) as span:
            decision = gate.asking(admit)
            if self._records_spans:
                span.set_attribute("switchpoint.model", decision.chosen.name)
                span.set_attribute("switchpoint.candidates", len(decision.candidates))
        return decision

    @staticmethod
    def _describe(span: Span, decision: Decision) -> None:
        span.set_attribute("switchpoint.level", decision.level.name.lower())
        span.set_attribute("switchpoint.strategy", decision.strategy)
        span.set_attribute("switchpoint.model", decision.chosen.name)
        span.set_attribute("switchpoint.candidates", len(decision.candidates))

    # -- call with fallback -------------------------------------------------------------------

    async def chat(
        self, request: ChatInput, routed: Decision, *, deadline: float | None = None
    ) -> ChatResult:
        """Serve the call routed by `route_off_loop`: from the cache, or admitted and sent to the
        decision's models in order, each retried as its provider's policy says. `deadline`
        (time.monotonic()) bounds every attempt and backoff together."""
        async with aclosing(self._serve(request, routed, deadline, streamed=False)) as served:
            async for event in served:
                if isinstance(event, ChatResult):
                    return event
        # `_serve` ends with the result or raises: a whole call yields nothing before it.
        raise AssertionError("the request path ended without a result")

    def stream(
        self, request: ChatInput, routed: Decision, *, deadline: float | None = None
    ) -> AsyncGenerator[Decision | StreamDelta | ChatResult, None]:
        """Relay the provider's stream, after the decision that serves it. Before the first token
        a failure is invisible to the client; after it, the answer continues on the next attempt
        (unless continuation is off)."""
        return self._serve(request, routed, deadline, streamed=True)

    async def _serve(
        self, request: ChatInput, routed: Decision, deadline: float | None, *, streamed: bool
    ) -> AsyncGenerator[Decision | StreamDelta | ChatResult, None]:
        """The one sequence of Chat and ChatStream: cache lookup, admission, hedging, the chain of
        models, remember, finish. Streamed, the decision comes first, then the deltas; the result
        is last."""
        call = CallState(request, routed, request.request_id or new_request_id(), deadline)
        cache = self.cache
        hit = await cache.lookup(call) if cache is not None else None
        if hit is not None and cache is not None:
            # A hit costs nothing: no quota asked, no provider, no budget. A stream replays it
            # like a provider's.
            cached = cache.result(call, hit)
            if streamed:
                yield routed
                for piece in cache.pieces(hit):
                    yield StreamDelta(piece, cached.model, cached.provider)
            yield self._finish(call, cached)
            return
        call.decision = self.admit(routed, request)
        if streamed:
            yield call.decision
        judge = self.evaluation.judge(call, streamed=streamed, outcomes=self.outcomes)
        outcome = Outcome()
        async with aclosing(self._walk(call, judge, outcome, streamed=streamed)) as deltas:
            async for delta in deltas:
                yield delta
        result = outcome.result or judge.rejected_answer()
        if result is None:
            raise self._exhausted(call)
        if cache is not None and outcome.result is not None:
            await cache.remember(call, result)
        await judge.responded(result, rejected=outcome.result is None)
        yield self._finish(call, result)

    async def _walk(
        self, call: CallState, judge: CallJudge, outcome: Outcome, *, streamed: bool
    ) -> AsyncGenerator[StreamDelta, None]:
        """The chain's walk: each model takes its turn until one gives an answer `judge` keeps
        (into `outcome`). A failed turn and a rejected answer both move on to the next model."""
        models = self._chain(call, judge.candidates())
        await judge.routed()
        # A cascade tries one model at a time, cheapest first: racing two defeats it.
        if self._hedging.applies(call.request) and not judge.cascades:
            hedged = self._hedging.run(call, models, outcome, streamed=streamed)
            async with aclosing(hedged) as deltas:
                async for delta in deltas:
                    yield delta
            if outcome.result is not None and not await judge.accepts(outcome.result):
                outcome.result = None
        for model in models if outcome.result is None else ():
            try:
                async with aclosing(
                    self._attempts.turn(call, model, outcome, streamed=streamed)
                ) as deltas:
                    async for delta in deltas:
                        yield delta
            except SwitchpointError:
                if not judge.rejected:
                    raise
                return  # the escalation failed: the answer it rejected is served after all
            if outcome.result is not None:
                if await judge.accepts(outcome.result):
                    return
                outcome.result = None  # rejected: escalate to the next model

    def _finish(self, call: CallState, result: ChatResult) -> ChatResult:
        span = call.root_span
        span.set_attribute("switchpoint.model", result.model)
        span.set_attribute("switchpoint.attempts", len(result.attempts))
        span.set_attribute("gen_ai.usage.input_tokens", result.input_tokens)
        span.set_attribute("gen_ai.usage.output_tokens", result.output_tokens)
        span.set_attribute("switchpoint.cost_usd", result.cost_usd)
        if self.predictor is not None:
            self.predictor.served(call.request_id, result.model)
        return result

    # -- the chain ----------------------------------------------------------------------------

    def _chain(self, call: CallState, candidates: Sequence[ScoredModel]) -> Iterator[ModelConfig]:
        """The decision's `candidates` (in the order given), then its fallback chain; no model
        twice, none too small for a context window a provider already rejected."""
        decision = call.decision
        for name in [c.name for c in candidates] + list(decision.fallback):
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
