"""The request path, and nothing else:

    validate -> decide -> gate (reserve) -> admit -> call with retries and fallback
             -> settle + record

Route stops after decide; Chat and ChatStream run the whole path. What a failure means is decided in
`switchpoint.resilience`; wire formats live in `switchpoint.server`.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncGenerator, Iterator, Mapping
from contextlib import AbstractAsyncContextManager, aclosing
from dataclasses import dataclass, replace

from switchpoint._native import LatencyTracker
from switchpoint.calls import (
    SKIPPED,
    AttemptRecord,
    CallState,
    ChatResult,
    StreamAttempt,
    StreamDelta,
)
from switchpoint.config import BreakerConfig, Config, ModelConfig
from switchpoint.errors import (
    AllAttemptsFailedError,
    ErrorClass,
    ProviderError,
    QuotaExceededError,
    SwitchpointError,
)
from switchpoint.gate import RequestScope, Reservation, TokenGate
from switchpoint.providers.base import (
    ChatMessage,
    Completion,
    ProviderAdapter,
    ProviderRequest,
    TextDelta,
)
from switchpoint.registry import Registry
from switchpoint.request import ChatInput, Priority, validate
from switchpoint.resilience import Action, Breakers, CircuitBreaker, action_for, backoff_s
from switchpoint.routing import Decision, Router
from switchpoint.scheduler import AdmissionRejected, Scheduler
from switchpoint.stats import StatsBook, UsageKey
from switchpoint.tokens import TokenCounter

log = logging.getLogger("switchpoint.engine")

# Sent after the partial answer when a stream continues on another model (or the same one).
CONTINUE_PROMPT = (
    "Your previous answer was cut off. Continue it exactly where it stopped, without repeating "
    "anything and without any preamble."
)

__all__ = ["CONTINUE_PROMPT", "AttemptRecord", "ChatResult", "Engine", "StreamDelta"]


def _scope(request: ChatInput) -> RequestScope:
    return RequestScope(request.routing.tenant, request.routing.stage)


def _usage_key(call: CallState, model: ModelConfig) -> UsageKey:
    routing = call.request.routing
    return UsageKey(routing.tenant, routing.stage, model.name)


@dataclass(slots=True)
class _Outcome:
    """How one model's turn in the chain ended: a result, or on to the next model."""

    result: ChatResult | None = None


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
        )
        self._adapters = adapters
        self.tokens = TokenCounter()
        self._router = Router(config, registry, self.tokens)

    def _breaker_policy(self, model_name: str) -> BreakerConfig:
        model = self.registry.models[self.registry.index_of(model_name) or 0]
        return self.config.providers[model.provider].breaker

    @property
    def shares_budgets(self) -> bool:
        return self.gate.shared is not None

    def shared_state_problem(self) -> str:
        """Why shared quota state is degraded; empty when healthy or not configured."""
        shared = self.gate.shared
        return shared.degraded_reason if shared is not None and shared.degraded else ""

    # -- decide -------------------------------------------------------------------------------

    def decide(self, request: ChatInput) -> Decision:
        """Validate, route, and drop the candidates the gate or an open breaker refuses now.

        Raises InvalidRequestError, NoEligibleModelError, PolicyDeniedError or QuotaExceededError.
        """
        validate(request)
        scope = _scope(request)
        decision = self._router.decide(request, self.gate.pressure(scope))
        return self._without_open_breakers(self.gate.admissible(decision, scope, self.registry))

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
        return replace(
            decision,
            candidates=tuple(kept) or decision.candidates,
            reasons=(*decision.reasons, *reasons),
        )

    # -- call with fallback -------------------------------------------------------------------

    async def chat(
        self, request: ChatInput, decision: Decision, *, deadline: float | None = None
    ) -> ChatResult:
        """Serve the call on the decision's models in order, retrying each as its provider's policy
        says. `deadline` (time.monotonic()) bounds every attempt and backoff together."""
        call = CallState(request, decision, request.request_id or uuid.uuid4().hex, deadline)
        models = self._chain(call)
        if self._hedges(request):
            result = await self._hedged(call, models)
            if result is not None:
                return result
        for model in models:
            outcome = await self._complete_on(call, model)
            if outcome.result is not None:
                return outcome.result
        raise self._exhausted(call)

    def _hedges(self, request: ChatInput) -> bool:
        stage = self.config.routing.stages.get(request.routing.stage)
        return request.routing.hedge or (stage is not None and stage.hedge)

    async def _hedged(self, call: CallState, models: Iterator[ModelConfig]) -> ChatResult | None:
        """Race the first model against the second once the first is slower than its usual p95;
        the first answer wins and the other call is cancelled (releasing its quota)."""
        primary = next(models, None)
        if primary is None:
            return None
        racers = {asyncio.create_task(self._complete_on(call, primary)): primary}
        done, _ = await asyncio.wait(racers, timeout=self._hedge_delay_s(primary, call))
        if not done:
            second = next(models, None)
            if second is not None:
                racers[asyncio.create_task(self._complete_on(call, second))] = second
        winner: ChatResult | None = None
        try:
            while racers and winner is None:
                done, _ = await asyncio.wait(racers, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    del racers[task]
                    winner = winner or task.result().result
        finally:
            for task, model in racers.items():
                task.cancel()
                call.skip(
                    model.name, model.provider, "hedge_lost", "another attempt answered first"
                )
            await asyncio.gather(*racers, return_exceptions=True)
        # The loser is listed too: every attempt appears in the answer.
        return None if winner is None else replace(winner, attempts=tuple(call.attempts))

    def _hedge_delay_s(self, model: ModelConfig, call: CallState) -> float:
        """The model's observed p95 whole-call latency, or its prior before enough samples."""
        p95_ms, samples = self.latency.percentiles(self.latency.slot(model.name), "total")[1::2]
        if samples < self.config.routing.min_latency_samples:
            p95_ms = self._prior_ms(model, call)
        return p95_ms / 1000.0

    async def stream(
        self, request: ChatInput, decision: Decision, *, deadline: float | None = None
    ) -> AsyncGenerator[StreamDelta | ChatResult, None]:
        """Relay the provider's stream. Before the first token a failure is invisible to the client;
        after it, the answer continues on the next attempt (unless continuation is off)."""
        call = CallState(request, decision, request.request_id or uuid.uuid4().hex, deadline)
        for model in self._chain(call):
            outcome = _Outcome()
            async with aclosing(self._stream_on(call, model, outcome)) as deltas:
                async for delta in deltas:
                    yield delta
            if outcome.result is not None:
                yield outcome.result
                return
        raise self._exhausted(call)

    async def _open_attempt(
        self, call: CallState, model: ModelConfig
    ) -> tuple[CircuitBreaker, Reservation] | None:
        """Breaker permission and a gate reservation for one attempt; None (noted) if refused."""
        call.check_deadline()
        breaker = self.breakers.get(model.name)
        if not breaker.begin():
            call.skip(model.name, model.provider, "circuit_open", "circuit breaker is open")
            return None
        hold = await self._reserve(call, model)
        if hold is None:
            breaker.release()
            return None
        return breaker, hold

    async def _complete_on(self, call: CallState, model: ModelConfig) -> _Outcome:
        for retry in range(self.config.providers[model.provider].retry.max_retries + 1):
            opened = await self._open_attempt(call, model)
            if opened is None:
                break
            breaker, hold = opened
            started = time.perf_counter()
            try:
                with hold:
                    async with self._admitted(call, model):
                        completion = await self._adapter(model).complete(
                            self._provider_request(model, call),
                            timeout_s=self._timeout(call, model),
                        )
                    result = self._settle(call, model, completion, started, ttft_ms=0.0, hold=hold)
            except ProviderError as exc:
                breaker.record(exc.error_class)
                if await self._after_failure(call, model, exc, started, retry):
                    continue
                break
            except AdmissionRejected as exc:
                breaker.release()
                self._note_refusal(call, model, exc)
                break
            except BaseException:
                breaker.release()
                raise
            breaker.record(None)
            return _Outcome(result)
        return _Outcome()

    async def _stream_on(
        self, call: CallState, model: ModelConfig, outcome: _Outcome
    ) -> AsyncGenerator[StreamDelta, None]:
        for retry in range(self.config.providers[model.provider].retry.max_retries + 1):
            opened = await self._open_attempt(call, model)
            if opened is None:
                return
            breaker, hold = opened
            attempt = StreamAttempt(time.perf_counter())
            try:
                with hold:
                    async with self._admitted(call, model):
                        relay = self._relay(call, model, hold, attempt, outcome)
                        async with aclosing(relay) as deltas:
                            async for delta in deltas:
                                yield delta
            except ProviderError as exc:
                breaker.record(exc.error_class)
                if attempt.parts:
                    # The tokens already sent were produced and are charged (estimated: no usage
                    # arrived), whatever happens next.
                    self._charge_partial(call, model, len(attempt.parts), hold)
                    if not self.config.routing.stream_continuation:
                        self._record_failure(call, model, exc, attempt.started)
                        raise
                if await self._after_failure(call, model, exc, attempt.started, retry):
                    continue
                return
            except AdmissionRejected as exc:
                breaker.release()
                self._note_refusal(call, model, exc)
                return
            except BaseException:
                breaker.release()
                raise
            breaker.record(None)
            return

    async def _relay(
        self,
        call: CallState,
        model: ModelConfig,
        hold: Reservation,
        attempt: StreamAttempt,
        outcome: _Outcome,
    ) -> AsyncGenerator[StreamDelta, None]:
        """One provider stream, relayed; its end settles the call into `outcome`."""
        # The first delta after a switch names the model whose stream died.
        continued_from = call.attempts[-1].model if call.sent else ""
        events = self._adapter(model).stream(
            self._provider_request(model, call), timeout_s=self._timeout(call, model)
        )
        async with aclosing(events):
            async for event in events:
                if not isinstance(event, TextDelta):
                    completion = attempt.completion(event)
                    outcome.result = self._settle(
                        call, model, completion, attempt.started, ttft_ms=attempt.ttft_ms, hold=hold
                    )
                    return
                if not call.sent:
                    call.first_token_ms = call.elapsed_ms()
                attempt.add(event.text)
                call.sent.append(event.text)
                yield StreamDelta(event.text, model.name, model.provider, continued_from)
                continued_from = ""
        # A stream that ends without StreamEnd is an adapter bug, never a success.
        raise ProviderError(model.provider, ErrorClass.BAD_RESPONSE, "stream ended early")

    async def _after_failure(
        self, call: CallState, model: ModelConfig, exc: ProviderError, started: float, retry: int
    ) -> bool:
        """Record a failed attempt and act on it: True to retry the same model (after a backoff
        that fits the deadline), False to move on. Raises when the failure ends the call."""
        self._record_failure(call, model, exc, started)
        policy = self.config.providers[model.provider].retry
        action = action_for(exc.error_class, policy, retries_used=retry)
        if action is Action.FAIL:
            raise exc
        if action is Action.LARGER_CONTEXT:
            call.min_context_window = max(call.min_context_window, model.context_window + 1)
            return False
        if action is Action.NEXT_MODEL:
            return False
        delay = backoff_s(retry, policy, exc.retry_after_s)
        remaining = call.remaining_s()
        if remaining is not None and delay >= remaining:
            return False  # no time to wait here: the next model may still make it
        await asyncio.sleep(delay)
        return True

    # -- helpers ------------------------------------------------------------------------------

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

    def _adapter(self, model: ModelConfig) -> ProviderAdapter:
        return self._adapters[model.provider]

    def _timeout(self, call: CallState, model: ModelConfig) -> float:
        timeout = self.config.providers[model.provider].timeout_s
        remaining = call.remaining_s()
        return timeout if remaining is None else max(min(timeout, remaining), 0.001)

    def _provider_request(self, model: ModelConfig, call: CallState) -> ProviderRequest:
        request = call.request
        messages = list(request.messages)
        if model.system_prompt and not any(m.role == "system" for m in messages):
            messages.insert(0, ChatMessage("system", model.system_prompt))
        if call.sent:
            messages += [
                ChatMessage("assistant", "".join(call.sent)),
                ChatMessage("user", CONTINUE_PROMPT),
            ]
        params = request.params
        return ProviderRequest(
            upstream_model=model.wire_model,
            messages=messages,
            max_tokens=params.max_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            stop=tuple(params.stop),
            extra_body=dict(model.extra_body),
        )

    def _admitted(self, call: CallState, model: ModelConfig) -> AbstractAsyncContextManager[None]:
        slot = self.latency.slot(model.name)
        p50_ms = self.latency.percentiles(slot, "total")[0]
        expected_s = (p50_ms or self._prior_ms(model, call)) / 1000.0
        return self.scheduler.queue(model.name).admit(
            Priority(call.request.routing.priority), call.deadline, expected_s
        )

    @staticmethod
    def _prior_ms(model: ModelConfig, call: CallState) -> float:
        prior = model.latency_prior
        return prior.ttft_ms + call.decision.output_tokens * prior.tpot_ms

    async def _reserve(self, call: CallState, model: ModelConfig) -> Reservation | None:
        """Hold quota for an attempt on `model`; None (and the refusal noted) when refused."""
        decision = call.decision
        estimate = self.registry.cost_usd(model, decision.input_tokens, decision.output_tokens)
        try:
            return await self.gate.reserve(
                _scope(call.request),
                model,
                decision.input_tokens + decision.output_tokens,
                estimate,
            )
        except QuotaExceededError as exc:
            call.refusals.append(exc)
            call.skip(model.name, model.provider, "quota", str(exc))
            return None

    def _note_refusal(self, call: CallState, model: ModelConfig, exc: AdmissionRejected) -> None:
        refusal = QuotaExceededError("queue", model.name, exc.retry_after_s, exc.reason)
        call.refusals.append(refusal)
        call.skip(model.name, model.provider, "queue", str(refusal))

    def _charge_partial(
        self, call: CallState, model: ModelConfig, output_tokens: int, hold: Reservation
    ) -> None:
        input_tokens = call.decision.input_tokens
        cost = self.registry.cost_usd(model, input_tokens, output_tokens)
        hold.settle(input_tokens + output_tokens, cost)
        self.stats.record_tokens(_usage_key(call, model), input_tokens, output_tokens, cost)
        call.partial_usage = (input_tokens, output_tokens, cost)

    def _settle(
        self,
        call: CallState,
        model: ModelConfig,
        completion: Completion,
        attempt_started: float,
        *,
        ttft_ms: float,
        hold: Reservation,
    ) -> ChatResult:
        attempt_ms = (time.perf_counter() - attempt_started) * 1000.0
        cost = self.registry.cost_usd(model, completion.input_tokens, completion.output_tokens)
        hold.settle(completion.input_tokens + completion.output_tokens, cost)
        call.attempts.append(
            AttemptRecord(
                model.name,
                model.provider,
                attempt_ms,
                input_tokens=completion.input_tokens,
                output_tokens=completion.output_tokens,
                cost_usd=cost,
            )
        )
        self.latency.record(
            self.latency.slot(model.name),
            attempt_ms,
            ttft_ms if ttft_ms > 0 else None,
            completion.output_tokens,
        )
        self.stats.record_success(
            _usage_key(call, model), completion.input_tokens, completion.output_tokens, cost
        )
        input_tokens, output_tokens, total_cost = call.totals()
        return ChatResult(
            request_id=call.request_id,
            content="".join(call.sent) if call.sent else completion.content,
            model=model.name,
            provider=model.provider,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cost_usd=total_cost,
            latency_ms=call.elapsed_ms(),
            finish_reason=completion.finish_reason,
            attempts=tuple(call.attempts),
            decision=call.decision,
            ttft_ms=call.first_token_ms,
        )

    def _record_failure(
        self, call: CallState, model: ModelConfig, exc: ProviderError, attempt_started: float
    ) -> None:
        call.last_provider_error = exc
        attempt_ms = (time.perf_counter() - attempt_started) * 1000.0
        input_tokens, output_tokens, cost = call.partial_usage
        call.partial_usage = (0, 0, 0.0)
        call.attempts.append(
            AttemptRecord(
                model.name,
                model.provider,
                attempt_ms,
                exc.error_class.value,
                str(exc),
                input_tokens,
                output_tokens,
                cost,
            )
        )
        self.stats.record_error(_usage_key(call, model))
        log.warning(
            "attempt failed",
            extra={"request_id": call.request_id, "model": model.name, "error": str(exc)},
        )

    def _exhausted(self, call: CallState) -> SwitchpointError:
        tried = [a for a in call.attempts if a.error_class not in SKIPPED]
        if not tried and call.refusals:
            # No provider was even called: every model was over a limit. Say which clears first.
            return min(call.refusals, key=lambda r: r.retry_after_s)
        return AllAttemptsFailedError(call.last_provider_error, call.attempts)
