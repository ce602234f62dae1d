"""Asking the classifier model: when, how, for how long, and what the decision says about it.

Only a decision the auto level made can change with the answer, so the request is routed first
(the Rust core reports the rules' confidence with the decision) and the model is asked only when
that decision is `auto` and the confidence is below `below_confidence`. The request is then routed
again with the model's reading given in place of the rules'; on a timeout, a failure or a
malformed answer it is routed again with the rules' reading and a reason saying why.

The call is one attempt on the classifier model through the engine's own turn
(`engine.attempts`): breaker, a gate reservation, the priority queue, the provider adapter, and
its usage charged to the caller's tenant like any attempt (budgets, rate limits, the model's
stats). It is not part of the answer's attempts or cost. Its deadline is `timeout_ms`, or half of
what the caller's deadline leaves if that is less.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from switchpoint._native import Router
from switchpoint.classifier.answers import (
    ANSWER_MAX_TOKENS,
    AnswerCache,
    MalformedAnswer,
    ModelReading,
    answer_key,
    question,
    read_answer,
)
from switchpoint.classifier.config import ClassifierModelConfig
from switchpoint.config import ModelConfig
from switchpoint.engine.attempts import Attempts
from switchpoint.engine.calls import SKIPPED, CallState
from switchpoint.errors import (
    DeadlineExceededError,
    ErrorClass,
    ProviderError,
    SwitchpointError,
)
from switchpoint.quota.gate import TokenGate
from switchpoint.registry import Registry
from switchpoint.request import ChatInput, GenerationParams, RoutingOptions
from switchpoint.routing import Decision, Level

log = logging.getLogger("switchpoint.classifier")

# Routes the request again: with a (task class, complexity) in place of the rules' reading, or
# None to keep it, and the reason that follows the reading.
Reroute = Callable[[tuple[str, float] | None, str], Awaitable[Decision]]


# How long past its deadline the classifier's call may take to end by itself (see `_ask`).
DEADLINE_GRACE_S = 0.05


class NotAnswered(Exception):
    """Why the classifier model gave no reading; the message is the decision's reason."""


def _timed_out(waited_ms: int) -> NotAnswered:
    return NotAnswered(f"classifier model timed out after {waited_ms} ms")


def _unanswered(error_class: str, message: str, waited_ms: int) -> NotAnswered:
    """Why a call that ended in `error_class` gave no reading."""
    if error_class == ErrorClass.TIMEOUT.value:
        return _timed_out(waited_ms)
    if error_class in SKIPPED:
        # A rate limit, budget, open breaker or full queue turned the call away.
        return NotAnswered(f"classifier model not called: {message}")
    return NotAnswered(f"classifier model failed: {message}")


class ClassifierModel:
    """The configured classifier model of one config load, and the answers it gave."""

    def __init__(
        self,
        config: ClassifierModelConfig,
        model: ModelConfig,
        *,
        router: Router,
        attempts: Attempts,
        gate: TokenGate,
    ) -> None:
        self._config = config
        self._model = model
        self._router = router
        self._attempts = attempts
        self._gate = gate
        self.answers = AnswerCache(config.cache_size)

    @property
    def name(self) -> str:
        return self._model.name

    def unsure(self, routed: Decision) -> bool:
        """Whether asking could change `routed`: the auto level decided, and the rules' confidence
        is below the configured bar."""
        return routed.level is Level.AUTO and routed.confidence < self._config.below_confidence

    async def reconsider(
        self, request: ChatInput, routed: Decision, reroute: Reroute, timeout_s: float | None
    ) -> Decision:
        """`routed`, or when the rules were unsure, the decision routed again after asking the
        model (or its cached answer); `timeout_s` is what the caller's deadline leaves."""
        if not self.unsure(routed):
            return routed
        last_user = next((m.content for m in reversed(request.messages) if m.role == "user"), "")
        if not last_user.strip():
            return routed
        rules = f"rules unsure: {routed.confidence:.2f}"
        key = answer_key(request.routing.tenant, last_user)
        cached = self.answers.get(key)
        if cached is not None:
            note = f"classified by model '{self.name}' (cached answer; {rules})"
            return await reroute((cached.task_class, cached.difficulty), note)
        try:
            reading = await self._ask(request, last_user, self._budget_s(timeout_s))
        except NotAnswered as why:
            return await reroute(None, f"{why}; rules used")
        self.answers.put(key, reading)
        note = f"classified by model '{self.name}' ({rules})"
        return await reroute((reading.task_class, reading.difficulty), note)

    def _budget_s(self, timeout_s: float | None) -> float:
        budget_s = self._config.timeout_ms / 1000.0
        return budget_s if timeout_s is None else min(budget_s, timeout_s / 2.0)

    async def _ask(self, request: ChatInput, last_user: str, budget_s: float) -> ModelReading:
        waited_ms = round(budget_s * 1000.0)
        if budget_s <= 0.001:
            raise NotAnswered(f"classifier model not asked: the deadline leaves {waited_ms} ms")
        routing = request.routing
        ask = ChatInput(
            messages=question(last_user),
            routing=RoutingOptions(
                models=(self.name,), tenant=routing.tenant, priority=routing.priority
            ),
            params=GenerationParams(max_tokens=ANSWER_MAX_TOKENS, temperature=0.0),
            request_id=request.request_id,
        )
        router, gate = self._router, self._gate
        try:
            decision = gate.asking(lambda: router.route(ask, now=gate.now()))
        except SwitchpointError as exc:
            raise NotAnswered(f"classifier model cannot be asked: {exc}") from None
        call = CallState(ask, decision, request.request_id, time.monotonic() + budget_s)
        try:
            # The call's own deadline normally ends it first, as a failed attempt the model's
            # breaker counts (a classifier that keeps timing out is then skipped at once); this
            # guard only bounds what the deadline does not cover.
            async with asyncio.timeout(budget_s + DEADLINE_GRACE_S):
                outcome = await self._attempts.complete_on(call, self._model)
        except (TimeoutError, DeadlineExceededError):
            raise _timed_out(waited_ms) from None
        except ProviderError as exc:
            raise _unanswered(exc.error_class.value, str(exc), waited_ms) from None
        if outcome.result is None:
            if not call.attempts:  # a turn always records how it ended
                raise NotAnswered("classifier model failed: no attempt was made")
            last = call.attempts[-1]
            raise _unanswered(last.error_class, last.error_message, waited_ms)
        try:
            return read_answer(outcome.result.content)
        except MalformedAnswer as why:
            raise NotAnswered(f"classifier model answered malformed JSON ({why})") from None


def build_classifier(
    config: ClassifierModelConfig | None,
    registry: Registry,
    *,
    router: Router,
    attempts: Attempts,
    gate: TokenGate,
) -> ClassifierModel | None:
    """The classifier model of a config load; None when none is configured or it is not enabled
    (its provider disabled): the rules then decide alone."""
    if config is None:
        return None
    index = registry.index_of(config.model)
    if index is None:
        why = registry.disabled.get(config.model, "not enabled")
        log.warning(
            "classifier model '%s' is disabled (%s): the rules decide alone", config.model, why
        )
        return None
    model = registry.models[index]
    return ClassifierModel(config, model, router=router, attempts=attempts, gate=gate)
