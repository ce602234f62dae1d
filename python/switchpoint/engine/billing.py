"""What an attempt is charged: the one place that decides it.

A provider bills what it was sent and what it produced, so switchpoint charges the same, to the
attempt's gate reservation (budgets and TPM), to GetStats and to the usage and cost metrics:

- an answer (whole, or a stream that reached its end): the provider's reported usage;
- an attempt that ends without an answer after its request went out (`SentMark`): the prompt, plus
  the tokens it streamed. That covers a client that cancels (mid-stream or while waiting for the
  answer), a deadline or timeout that cuts the call, and the losing side of a hedge. Streamed
  tokens are counted from the streamed text with the model's tokenizer (no usage arrives before a
  stream's end); the prompt is the routing estimate (`Decision.input_tokens`, counted before the
  call) plus, for a stream continued from a partial answer, that answer and the request to go on;
- an attempt the provider refused or that failed before any token (an error status, a reset
  connection, garbage): nothing, as providers do not bill those; a stream that failed after
  tokens is charged its prompt and those tokens;
- an attempt that never went out (refused by the gate or the priority queue, cancelled while
  queued, connecting or waiting for a pooled connection): nothing; its reservation is released.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import TracebackType

from switchpoint.config import ModelConfig
from switchpoint.engine.calls import CallState
from switchpoint.errors import ErrorClass, ProviderError
from switchpoint.instruments import MetricsSink
from switchpoint.providers.base import ChatMessage, Completion, SentMark
from switchpoint.quota.scopes import Reservation
from switchpoint.registry import Registry
from switchpoint.stats import StatsBook, UsageKey
from switchpoint.tokens import TokenCounter


@dataclass(slots=True)
class Exposure:
    """What one attempt has put to its provider so far: whether its request went out, the text
    it streamed, and the partial answer it was asked to continue ("" for a first attempt)."""

    continues: str = ""
    sent: SentMark = field(default_factory=SentMark)
    streamed: list[str] = field(default_factory=list)
    # The reservation was settled with an answer's usage: nothing is left to charge.
    answered: bool = False


def usage_key(call: CallState, model: ModelConfig) -> UsageKey:
    routing = call.request.routing
    return UsageKey(routing.tenant, routing.stage, model.name)


class Billing:
    """Charges attempts (see the module's rule); no state of its own."""

    def __init__(
        self,
        registry: Registry,
        stats: StatsBook,
        metrics: MetricsSink,
        tokens: TokenCounter,
        continue_prompt: str,
    ) -> None:
        self._registry = registry
        self._stats = stats
        self._metrics = metrics
        self._tokens = tokens
        self._continue_prompt = continue_prompt

    def charge_answer(
        self,
        call: CallState,
        model: ModelConfig,
        hold: Reservation,
        exposure: Exposure,
        completion: Completion,
    ) -> float:
        """Settle an answered attempt with its reported usage; its cost."""
        cost = self._registry.cost_usd(model, completion.input_tokens, completion.output_tokens)
        exposure.answered = True
        hold.settle(completion.input_tokens + completion.output_tokens, cost)
        self._stats.record_success(
            usage_key(call, model), completion.input_tokens, completion.output_tokens, cost
        )
        self._count(call, model, completion.input_tokens, completion.output_tokens, cost)
        return cost

    def unanswered(
        self, call: CallState, model: ModelConfig, hold: Reservation, exposure: Exposure
    ) -> _ChargedIfUnanswered:
        """`with billing.unanswered(...)` around an attempt, inside its reservation's `with`:
        an attempt that leaves the block by an exception is charged by the rule, and its usage
        kept in `call.unlisted_usage` for the attempt record that lists it."""
        return _ChargedIfUnanswered(self, call, model, hold, exposure)

    def charge_unanswered(
        self,
        call: CallState,
        model: ModelConfig,
        hold: Reservation,
        exposure: Exposure,
        cause: BaseException,
    ) -> None:
        if exposure.answered:
            return
        streamed = "".join(exposure.streamed)
        if not streamed and not (exposure.sent.sent and _cut_by_switchpoint(cause)):
            return  # released as the reservation's block ends
        output_tokens = self._tokens.count_text(streamed, model.tokenizer) if streamed else 0
        input_tokens = self._prompt_tokens(call, model, exposure)
        cost = self._registry.cost_usd(model, input_tokens, output_tokens)
        hold.settle(input_tokens + output_tokens, cost)
        self._stats.record_tokens(usage_key(call, model), input_tokens, output_tokens, cost)
        self._count(call, model, input_tokens, output_tokens, cost)
        call.unlisted_usage[model.name] = (input_tokens, output_tokens, cost)

    def _prompt_tokens(self, call: CallState, model: ModelConfig, exposure: Exposure) -> int:
        # The routing count is reused rather than the prompt counted again: counting is work that
        # grows with the prompt, and a cancel must not be a way to make the sidecar do it twice.
        tokens = call.decision.input_tokens
        if exposure.continues:
            carried = (
                ChatMessage("assistant", exposure.continues),
                ChatMessage("user", self._continue_prompt),
            )
            tokens += self._tokens.count_messages(carried, model.tokenizer)
        return tokens

    def _count(
        self,
        call: CallState,
        model: ModelConfig,
        input_tokens: int,
        output_tokens: int,
        cost: float,
    ) -> None:
        routing = call.request.routing
        labels = {"model": model.name, "tenant": routing.tenant, "stage": routing.stage}
        self._metrics.tokens(input_tokens=input_tokens, output_tokens=output_tokens, **labels)
        self._metrics.cost(usd=cost, **labels)


def _cut_by_switchpoint(cause: BaseException) -> bool:
    """Whether the attempt was given up on this side (cancelled, or out of time waiting for the
    answer) rather than refused or failed by the provider, which does not bill that."""
    if isinstance(cause, ProviderError):
        return cause.error_class is ErrorClass.TIMEOUT and cause.status is None
    return True


class _ChargedIfUnanswered:
    __slots__ = ("_billing", "_call", "_exposure", "_hold", "_model")

    def __init__(
        self,
        billing: Billing,
        call: CallState,
        model: ModelConfig,
        hold: Reservation,
        exposure: Exposure,
    ) -> None:
        self._billing = billing
        self._call = call
        self._model = model
        self._hold = hold
        self._exposure = exposure

    def __enter__(self) -> Exposure:
        return self._exposure

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None:
            self._billing.charge_unanswered(
                self._call, self._model, self._hold, self._exposure, exc
            )
