"""The request path, and nothing else:

    validate -> decide -> call with fallback -> settle + record

(gate, cache and admission slot in between decide and call as they are built.) Route stops after
decide; Chat and ChatStream run the whole path. Wire formats live in `switchpoint.server`.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncGenerator, Iterator, Mapping
from contextlib import aclosing
from dataclasses import dataclass, field

from switchpoint._native import LatencyTracker
from switchpoint.config import Config, ModelConfig
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
    StreamEnd,
    TextDelta,
)
from switchpoint.registry import Registry
from switchpoint.request import ChatInput, validate
from switchpoint.routing import Decision, Router
from switchpoint.stats import StatsBook
from switchpoint.tokens import TokenCounter

log = logging.getLogger("switchpoint.engine")


def _scope(request: ChatInput) -> RequestScope:
    return RequestScope(request.routing.tenant, request.routing.stage)


# Errors that are the caller's own fault: another model would refuse the request just the same.
_NOT_WORTH_ANOTHER_MODEL = frozenset({ErrorClass.INVALID_REQUEST})


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


@dataclass(frozen=True, slots=True)
class StreamDelta:
    text: str
    model: str
    provider: str


@dataclass(slots=True)
class _Call:
    """Book-keeping for one Chat or ChatStream call across its attempts."""

    request: ChatInput
    decision: Decision
    request_id: str
    started: float = field(default_factory=time.perf_counter)
    attempts: list[AttemptRecord] = field(default_factory=list)
    refusals: list[QuotaExceededError] = field(default_factory=list)
    last_provider_error: ProviderError | None = None

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000.0


@dataclass(slots=True)
class _StreamAttempt:
    """What one streaming attempt has produced so far."""

    started: float
    parts: list[str] = field(default_factory=list)
    ttft_ms: float = 0.0

    def add(self, text: str) -> None:
        if not self.parts:
            self.ttft_ms = (time.perf_counter() - self.started) * 1000.0
        self.parts.append(text)

    def completion(self, end: StreamEnd) -> Completion:
        return Completion(
            "".join(self.parts), end.finish_reason, end.input_tokens, end.output_tokens
        )


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
    ) -> None:
        self.config = config
        self.registry = registry
        self.latency = latency
        self.stats = stats
        self.gate = gate or TokenGate(config)
        self._adapters = adapters
        self.tokens = TokenCounter()
        self._router = Router(config, registry, self.tokens)

    @property
    def shares_budgets(self) -> bool:
        return self.gate.shared is not None

    def shared_state_problem(self) -> str:
        """Why shared quota state is degraded; empty when healthy or not configured."""
        shared = self.gate.shared
        return shared.degraded_reason if shared is not None and shared.degraded else ""

    # -- decide -------------------------------------------------------------------------------

    def decide(self, request: ChatInput) -> Decision:
        """Validate, route, and drop the candidates the gate refuses right now.

        Raises InvalidRequestError, NoEligibleModelError, PolicyDeniedError or QuotaExceededError.
        """
        validate(request)
        scope = _scope(request)
        decision = self._router.decide(request, self.gate.pressure(scope))
        return self.gate.admissible(decision, scope, self.registry)

    # -- call with fallback -------------------------------------------------------------------

    async def chat(self, request: ChatInput, decision: Decision) -> ChatResult:
        call = _Call(request, decision, request.request_id or uuid.uuid4().hex)
        for model in self._chain(decision):
            hold = await self._reserve(call, model)
            if hold is None:
                continue
            with hold:
                attempt_started = time.perf_counter()
                try:
                    completion = await self._adapter(model).complete(
                        self._provider_request(model, request), timeout_s=None
                    )
                except ProviderError as exc:
                    self._record_failure(call, model, exc, attempt_started)
                    if exc.error_class in _NOT_WORTH_ANOTHER_MODEL:
                        raise
                    continue
                return self._settle(
                    call, model, completion, attempt_started, ttft_ms=0.0, hold=hold
                )
        raise self._exhausted(call)

    async def stream(
        self, request: ChatInput, decision: Decision
    ) -> AsyncGenerator[StreamDelta | ChatResult, None]:
        """Relay the provider's stream; fails over to the next model while nothing was sent yet."""
        call = _Call(request, decision, request.request_id or uuid.uuid4().hex)
        for model in self._chain(decision):
            hold = await self._reserve(call, model)
            if hold is None:
                continue
            with hold:
                attempt = _StreamAttempt(time.perf_counter())
                events = self._adapter(model).stream(
                    self._provider_request(model, request), timeout_s=None
                )
                try:
                    # aclosing: a client that goes away mid-stream closes the upstream response
                    # now, not whenever the generator happens to be collected.
                    async with aclosing(events):
                        async for event in events:
                            if isinstance(event, TextDelta):
                                attempt.add(event.text)
                                yield StreamDelta(event.text, model.name, model.provider)
                            else:
                                completion = attempt.completion(event)
                                yield self._settle(
                                    call,
                                    model,
                                    completion,
                                    attempt.started,
                                    ttft_ms=attempt.ttft_ms,
                                    hold=hold,
                                )
                                return
                except ProviderError as exc:
                    self._record_failure(call, model, exc, attempt.started)
                    if attempt.parts:
                        # The provider produced tokens before dying: they are spent, so they are
                        # charged (estimated, since no usage arrived), and switching models
                        # silently would splice two answers together.
                        self._charge_partial(call, model, len(attempt.parts), hold)
                        raise
                    if exc.error_class in _NOT_WORTH_ANOTHER_MODEL:
                        raise
                    continue
            # A stream that ends without StreamEnd is an adapter bug, never a success.
            raise ProviderError(model.provider, ErrorClass.BAD_RESPONSE, "stream ended early")
        raise self._exhausted(call)

    # -- helpers ------------------------------------------------------------------------------

    def _chain(self, decision: Decision) -> Iterator[ModelConfig]:
        seen: set[str] = set()
        names = [c.name for c in decision.candidates] + list(decision.fallback)
        for name in names:
            index = self.registry.index_of(name)
            if name in seen or index is None:
                continue
            seen.add(name)
            yield self.registry.models[index]

    def _adapter(self, model: ModelConfig) -> ProviderAdapter:
        return self._adapters[model.provider]

    def _provider_request(self, model: ModelConfig, request: ChatInput) -> ProviderRequest:
        messages = list(request.messages)
        if model.system_prompt and not any(m.role == "system" for m in messages):
            messages.insert(0, ChatMessage("system", model.system_prompt))
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

    async def _reserve(self, call: _Call, model: ModelConfig) -> Reservation | None:
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
            call.attempts.append(AttemptRecord(model.name, model.provider, 0.0, "quota", str(exc)))
            return None

    def _charge_partial(
        self, call: _Call, model: ModelConfig, output_tokens: int, hold: Reservation
    ) -> None:
        input_tokens = call.decision.input_tokens
        cost = self.registry.cost_usd(model, input_tokens, output_tokens)
        hold.settle(input_tokens + output_tokens, cost)
        self.stats.record_tokens(model.name, input_tokens, output_tokens, cost)

    def _settle(
        self,
        call: _Call,
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
            model.name, completion.input_tokens, completion.output_tokens, cost
        )
        return ChatResult(
            request_id=call.request_id,
            content=completion.content,
            model=model.name,
            provider=model.provider,
            input_tokens=completion.input_tokens,
            output_tokens=completion.output_tokens,
            cost_usd=cost,
            latency_ms=call.elapsed_ms(),
            finish_reason=completion.finish_reason,
            attempts=tuple(call.attempts),
            decision=call.decision,
            ttft_ms=ttft_ms,
        )

    def _record_failure(
        self, call: _Call, model: ModelConfig, exc: ProviderError, attempt_started: float
    ) -> None:
        call.last_provider_error = exc
        attempt_ms = (time.perf_counter() - attempt_started) * 1000.0
        call.attempts.append(
            AttemptRecord(model.name, model.provider, attempt_ms, exc.error_class.value, str(exc))
        )
        self.stats.record_error(model.name)
        log.warning(
            "attempt failed",
            extra={"request_id": call.request_id, "model": model.name, "error": str(exc)},
        )

    def _exhausted(self, call: _Call) -> SwitchpointError:
        provider_errors = [a for a in call.attempts if a.error_class not in ("", "quota")]
        if not provider_errors and call.refusals:
            # Nothing was even tried: every model was over a limit. Say which clears first.
            return min(call.refusals, key=lambda r: r.retry_after_s)
        last = call.last_provider_error or ProviderError(
            "(none)", ErrorClass.NOT_FOUND, "no model left to try"
        )
        return AllAttemptsFailedError(last, call.attempts)
