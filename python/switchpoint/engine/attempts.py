"""One model's turn in a call's chain: breaker permission, a gate reservation, a queue slot, the
provider call (whole or streamed), retries as the provider's policy says, and the book-keeping of
every attempt (usage, cost, latency, spans, metrics). `engine.path` decides which models take turns;
this module runs a turn."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Mapping
from contextlib import AbstractAsyncContextManager, aclosing
from dataclasses import dataclass

from opentelemetry import trace
from opentelemetry.trace import Span, Status, StatusCode, Tracer

from switchpoint._native import LatencyTracker
from switchpoint.config import Config, ModelConfig
from switchpoint.engine.billing import Billing, Exposure, usage_key
from switchpoint.engine.calls import (
    AttemptRecord,
    CallState,
    ChatResult,
    StreamAttempt,
    StreamDelta,
)
from switchpoint.engine.resilience import Action, Breakers, CircuitBreaker, action_for, backoff_s
from switchpoint.errors import ErrorClass, ProviderError, QuotaExceededError
from switchpoint.instruments import MetricsSink, attempt_attributes, trace_headers
from switchpoint.providers.base import (
    ChatMessage,
    Completion,
    ProviderAdapter,
    ProviderRequest,
    SentMark,
    TextDelta,
)
from switchpoint.quota.gate import TokenGate
from switchpoint.quota.queue import QueueRejected
from switchpoint.quota.scheduler import Scheduler
from switchpoint.quota.scopes import RequestScope, Reservation
from switchpoint.registry import Registry
from switchpoint.request import Priority
from switchpoint.stats import StatsBook
from switchpoint.telemetry import EVENT_BREAKER, EVENT_FALLBACK, SPAN_PROVIDER_CALL
from switchpoint.tokens import TokenCounter

log = logging.getLogger("switchpoint.engine")

# Sent after the partial answer when a stream continues on another model (or the same one).
CONTINUE_PROMPT = (
    "Your previous answer was cut off. Continue it exactly where it stopped, without repeating "
    "anything and without any preamble."
)


@dataclass(slots=True)
class Outcome:
    """How one model's turn ended: a result, or on to the next model."""

    result: ChatResult | None = None


class Attempts:
    """Runs turns. Holds references to the engine's shared state; no state of its own."""

    def __init__(
        self,
        config: Config,
        registry: Registry,
        adapters: Mapping[str, ProviderAdapter],
        *,
        gate: TokenGate,
        breakers: Breakers,
        scheduler: Scheduler,
        latency: LatencyTracker,
        stats: StatsBook,
        tracer: Tracer,
        metrics: MetricsSink,
        tokens: TokenCounter,
    ) -> None:
        self._config = config
        self._registry = registry
        self._adapters = adapters
        self._gate = gate
        self._breakers = breakers
        self._scheduler = scheduler
        self._latency = latency
        self._stats = stats
        self._tracer = tracer
        self._metrics = metrics
        self._billing = Billing(registry, stats, metrics, tokens, CONTINUE_PROMPT)

    # -- a turn -------------------------------------------------------------------------------

    async def complete_on(self, call: CallState, model: ModelConfig) -> Outcome:
        """A whole turn on its own (a hedged racer): how it ended."""
        outcome = Outcome()
        async with aclosing(self.turn(call, model, outcome, streamed=False)) as deltas:
            async for _ in deltas:  # a whole turn yields no delta
                pass
        return outcome

    async def turn(
        self, call: CallState, model: ModelConfig, outcome: Outcome, *, streamed: bool
    ) -> AsyncGenerator[StreamDelta, None]:
        """One model's turn, whole or streamed: attempts until one answers (into `outcome`), the
        provider's retry policy gives up, or the failure ends the call (raised). Streamed, the
        deltas are relayed as they come."""
        for retry in range(self._config.providers[model.provider].retry.max_retries + 1):
            opened = await self._open(call, model)
            if opened is None:
                return
            breaker, hold = opened
            span = self._start_span(call, model, retry)
            attempt = StreamAttempt(time.perf_counter())
            # Charged by engine.billing's rule if it ends without an answer.
            exposure = Exposure("".join(call.sent))
            try:
                with hold, self._billing.unanswered(call, model, hold, exposure):
                    async with self._queue_slot(call, model):
                        call.waited_s += time.perf_counter() - attempt.started  # the priority queue
                        attempt.started = time.perf_counter()
                        if not streamed:
                            outcome.result = await self._complete(
                                call,
                                model,
                                hold=hold,
                                attempt=attempt,
                                exposure=exposure,
                                span=span,
                            )
                        else:
                            relay = self._relay(
                                call,
                                model,
                                hold=hold,
                                attempt=attempt,
                                exposure=exposure,
                                outcome=outcome,
                                span=span,
                            )
                            async with aclosing(relay) as deltas:
                                async for delta in deltas:
                                    yield delta
            except ProviderError as exc:
                self._end_span(span, call, attempt.started, error=exc)
                self._record_outcome(call, breaker, model, exc.error_class)
                if exposure.streamed and not self._config.routing.stream_continuation:
                    self._record_failure(call, model, exc, attempt.started)
                    raise
                if await self._after_failure(call, model, exc, attempt.started, retry):
                    continue
                return
            except QueueRejected as exc:
                self._end_span(span, call, attempt.started, error=exc)
                breaker.release()
                self._note_refusal(call, model, exc)
                return
            except BaseException as exc:
                self._end_span(span, call, attempt.started, error=exc)
                breaker.release()
                raise
            self._end_span(span, call, attempt.started, result=outcome.result)
            self._record_outcome(call, breaker, model, None)
            return

    async def _complete(
        self,
        call: CallState,
        model: ModelConfig,
        *,
        hold: Reservation,
        attempt: StreamAttempt,
        exposure: Exposure,
        span: Span,
    ) -> ChatResult:
        """One provider call, whole, settled."""
        completion = await self._adapters[model.provider].complete(
            self._provider_request(model, call, span, exposure.sent),
            timeout_s=self._timeout(call, model),
        )
        return self._settle(
            call, model, completion, attempt.started, ttft_ms=0.0, hold=hold, exposure=exposure
        )

    async def _relay(
        self,
        call: CallState,
        model: ModelConfig,
        *,
        hold: Reservation,
        attempt: StreamAttempt,
        exposure: Exposure,
        outcome: Outcome,
        span: Span,
    ) -> AsyncGenerator[StreamDelta, None]:
        """One provider stream, relayed; its end settles the call into `outcome`."""
        # The first delta after a switch names the model whose stream died.
        continued_from = call.attempts[-1].model if call.sent else ""
        events = self._adapters[model.provider].stream(
            self._provider_request(model, call, span, exposure.sent),
            timeout_s=self._timeout(call, model),
        )
        streamed = exposure.streamed
        async with aclosing(events):
            async for event in events:
                if not isinstance(event, TextDelta):
                    completion = attempt.completion(streamed, event)
                    outcome.result = self._settle(
                        call,
                        model,
                        completion,
                        attempt.started,
                        ttft_ms=attempt.ttft_ms,
                        hold=hold,
                        exposure=exposure,
                    )
                    return
                if not streamed:
                    attempt.first_token()
                    self._metrics.ttft(
                        model=model.name, seconds=time.perf_counter() - attempt.started
                    )
                if not call.sent:
                    call.first_token_ms = call.elapsed_ms()
                streamed.append(event.text)
                call.sent.append(event.text)
                yield StreamDelta(event.text, model.name, model.provider, continued_from)
                continued_from = ""
        # A stream that ends without StreamEnd is an adapter bug, never a success.
        raise ProviderError(model.provider, ErrorClass.BAD_RESPONSE, "stream ended early")

    # -- between attempts ---------------------------------------------------------------------

    async def _open(
        self, call: CallState, model: ModelConfig
    ) -> tuple[CircuitBreaker, Reservation] | None:
        """Breaker permission and a gate reservation for one attempt; None (noted) if refused."""
        call.check_deadline()
        breaker = self._breakers.get(model.name)
        if not breaker.begin():
            call.skip(model.name, model.provider, "circuit_open", "circuit breaker is open")
            return None
        hold = await self._reserve(call, model)
        if hold is None:
            breaker.release()
            return None
        return breaker, hold

    async def _after_failure(
        self, call: CallState, model: ModelConfig, exc: ProviderError, started: float, retry: int
    ) -> bool:
        """Record a failed attempt and act on it: True to retry the same model (after a backoff
        that fits the deadline), False to move on. Raises when the failure ends the call."""
        self._record_failure(call, model, exc, started)
        policy = self._config.providers[model.provider].retry
        action = action_for(exc.error_class, policy, retries_used=retry)
        if action is Action.FAIL:
            raise exc
        if action is Action.RETRY_SAME:
            delay = backoff_s(retry, policy, exc.retry_after_s)
            remaining = call.remaining_s()
            if remaining is None or delay < remaining:
                await asyncio.sleep(delay)
                call.waited_s += delay
                return True
            # No time to wait here: the next model may still make it.
        if action is Action.LARGER_CONTEXT:
            call.min_context_window = max(call.min_context_window, model.context_window + 1)
        call.root_span.add_event(
            EVENT_FALLBACK,
            {"switchpoint.from_model": model.name, "error.type": exc.error_class.value},
        )
        return False

    def _record_outcome(
        self, call: CallState, breaker: CircuitBreaker, model: ModelConfig, error: ErrorClass | None
    ) -> None:
        before = breaker.state
        breaker.record(error)
        if breaker.state != before:
            call.root_span.add_event(
                EVENT_BREAKER,
                {"switchpoint.model": model.name, "from": before, "to": breaker.state},
            )

    # -- helpers ------------------------------------------------------------------------------

    def _start_span(self, call: CallState, model: ModelConfig, retry: int) -> Span:
        provider = self._config.providers[model.provider]
        attributes = attempt_attributes(model, provider, retry, call.request.params.max_tokens)
        return self._tracer.start_span(
            SPAN_PROVIDER_CALL,
            context=call.trace_context,
            kind=trace.SpanKind.CLIENT,
            attributes=attributes,
        )

    def _end_span(
        self,
        span: Span,
        call: CallState,
        started: float,
        *,
        result: ChatResult | None = None,
        error: BaseException | None = None,
    ) -> None:
        elapsed = time.perf_counter() - started
        call.provider_s += elapsed
        last = call.attempts[-1] if call.attempts else None
        if result is not None and last is not None:
            span.set_attribute("gen_ai.usage.input_tokens", last.input_tokens)
            span.set_attribute("gen_ai.usage.output_tokens", last.output_tokens)
            span.set_attribute("gen_ai.response.finish_reasons", [result.finish_reason])
        if error is not None:
            error_type = getattr(getattr(error, "error_class", None), "value", type(error).__name__)
            span.set_attribute("error.type", error_type)
            span.set_status(Status(StatusCode.ERROR, str(error)[:200]))
        span.end()

    def _timeout(self, call: CallState, model: ModelConfig) -> float:
        timeout = self._config.providers[model.provider].timeout_s
        remaining = call.remaining_s()
        return timeout if remaining is None else max(min(timeout, remaining), 0.001)

    def _provider_request(
        self, model: ModelConfig, call: CallState, span: Span, sent: SentMark
    ) -> ProviderRequest:
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
            headers=trace_headers(trace.set_span_in_context(span, call.trace_context)),
            sent=sent,
        )

    def _queue_slot(self, call: CallState, model: ModelConfig) -> AbstractAsyncContextManager[None]:
        p50_ms = self._latency.percentiles(self._latency.slot(model.name), "total").p50_ms
        expected_s = (
            p50_ms or self._registry.prior_latency_ms(model, call.decision.output_tokens)
        ) / 1000.0
        return self._scheduler.queue(model.name).wait_turn(
            Priority(call.request.routing.priority), call.deadline, expected_s
        )

    async def _reserve(self, call: CallState, model: ModelConfig) -> Reservation | None:
        """Hold quota for an attempt on `model`; None (and the refusal noted) when refused."""
        decision = call.decision
        estimate = self._registry.cost_usd(model, decision.input_tokens, decision.output_tokens)
        routing = call.request.routing
        try:
            return await self._gate.reserve(
                RequestScope(routing.tenant, routing.stage),
                model,
                decision.input_tokens + decision.output_tokens,
                estimate,
            )
        except QuotaExceededError as exc:
            call.refusals.append(exc)
            call.skip(model.name, model.provider, "quota", str(exc))
            return None

    def _note_refusal(self, call: CallState, model: ModelConfig, exc: QueueRejected) -> None:
        refusal = QuotaExceededError("queue", model.name, exc.retry_after_s, exc.reason)
        call.refusals.append(refusal)
        call.skip(model.name, model.provider, "queue", str(refusal))

    def _settle(
        self,
        call: CallState,
        model: ModelConfig,
        completion: Completion,
        attempt_started: float,
        *,
        ttft_ms: float,
        hold: Reservation,
        exposure: Exposure,
    ) -> ChatResult:
        attempt_s = time.perf_counter() - attempt_started
        attempt_ms = attempt_s * 1000.0
        cost = self._billing.charge_answer(call, model, hold, exposure, completion)
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
        self._latency.record(
            self._latency.slot(model.name),
            attempt_ms,
            ttft_ms if ttft_ms > 0 else None,
            completion.output_tokens,
        )
        self._metrics.provider_latency(
            model=model.name, provider=model.provider, seconds=attempt_s, outcome="ok"
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
            # This attempt's own time is not in provider_s yet: its span ends after settling.
            waited_s=call.provider_s + call.waited_s + attempt_s,
        )

    def _record_failure(
        self, call: CallState, model: ModelConfig, exc: ProviderError, attempt_started: float
    ) -> None:
        call.last_provider_error = exc
        attempt_s = time.perf_counter() - attempt_started
        input_tokens, output_tokens, cost = call.unlisted_usage.pop(model.name, (0, 0, 0.0))
        call.attempts.append(
            AttemptRecord(
                model.name,
                model.provider,
                attempt_s * 1000.0,
                exc.error_class.value,
                str(exc),
                input_tokens,
                output_tokens,
                cost,
            )
        )
        self._stats.record_error(usage_key(call, model))
        self._metrics.provider_latency(
            model=model.name, provider=model.provider, seconds=attempt_s, outcome="error"
        )
        log.warning(
            "attempt failed",
            extra={"request_id": call.request_id, "model": model.name, "error": str(exc)},
        )
