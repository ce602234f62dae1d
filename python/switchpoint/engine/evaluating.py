"""A call's evaluation (`switchpoint.evaluation`) on the request path: the order a cascade tries
models in, the hooks at each hook point, and whether an answer is kept or the call escalates.

Escalation is the chain's own walk (`engine.path`): a rejected answer ends its model's turn like a
failure would, and the next model of the chain takes its turn. The rejected attempt stays in the
call's attempts with error_class "rejected" and the reason, and its usage stays charged (the
provider was paid for it). When no model is left, or escalating fails the call (a deadline, an
error that ends a call), the last rejected answer is served: it was paid for, and its attempt
record says why it was rejected.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace

from switchpoint.config import Config
from switchpoint.engine.calls import REJECTED, CallState, ChatResult
from switchpoint.evaluation.checks import rejection
from switchpoint.evaluation.hooks import Answered, Attempt, OutcomeSink, Responded, Routed
from switchpoint.evaluation.loading import LoadedHook
from switchpoint.evaluation.runner import HookRunner, HookVerdict
from switchpoint.routing import ScoredModel

log = logging.getLogger("switchpoint.evaluation")

EVENT_ESCALATION = "switchpoint.escalation"


def cheapest_first(candidates: Sequence[ScoredModel]) -> list[ScoredModel]:
    """A cascade's order: the routed candidates (every one adequate: eligible and admitted) by
    estimated cost, ties in their ranked order."""
    return sorted(candidates, key=lambda candidate: candidate.estimated_cost_usd)


class Evaluation:
    """One config's hooks and cascade settings; `judge` starts a call's evaluation."""

    def __init__(self, config: Config, hooks: Sequence[LoadedHook]) -> None:
        self.runner = HookRunner(hooks)
        self._stages = {name for name, stage in config.routing.stages.items() if stage.cascade}
        self._strategies = frozenset(config.evaluation.cascade.strategies)
        self.checks = tuple(config.evaluation.cascade.checks)

    def cascades(self, call: CallState, *, streamed: bool) -> bool:
        """Whether the call cascades. A stream never does: its client has the answer as it is
        made, so there is nothing left to hold back once a check could reject it."""
        if streamed:
            return False
        if call.request.routing.stage in self._stages:
            return True
        # Reading the decision's strategy crosses into Rust: only when a strategy could cascade.
        return bool(self._strategies) and call.decision.strategy in self._strategies

    def judge(self, call: CallState, *, streamed: bool, outcomes: OutcomeSink | None) -> CallJudge:
        return CallJudge(self, call, streamed=streamed, outcomes=outcomes)


class CallJudge:
    """One call's evaluation, from its admission to its answer."""

    def __init__(
        self,
        evaluation: Evaluation,
        call: CallState,
        *,
        streamed: bool,
        outcomes: OutcomeSink | None,
    ) -> None:
        self._runner = evaluation.runner
        self._checks = evaluation.checks
        self._call = call
        self._streamed = streamed
        self._outcomes = outcomes
        self.cascades = evaluation.cascades(call, streamed=streamed)
        self._answers = 0
        self._rejected: ChatResult | None = None

    def candidates(self) -> Sequence[ScoredModel]:
        """The decision's candidates in the order the call tries them."""
        candidates = self._call.decision.candidates
        return cheapest_first(candidates) if self.cascades else candidates

    async def routed(self) -> None:
        if not self._runner.runs("after_routing"):
            return
        call = self._call
        order = [c.name for c in self.candidates()]
        event = Routed(
            request_id=call.request_id,
            tenant=call.request.routing.tenant,
            stage=call.request.routing.stage,
            messages=call.request.messages,
            strategy=call.decision.strategy,
            candidates=(*order, *(name for name in call.decision.fallback if name not in order)),
            cascade=self.cascades,
            streamed=self._streamed,
        )
        await self._runner.run("after_routing", event, call.request_id)

    async def accepts(self, result: ChatResult) -> bool:
        """Whether the call keeps `result`; False rejects it (listed with its reason) and the
        call goes on to its next model."""
        self._answers += 1
        call = self._call
        failed_check = (
            rejection(self._checks, result.content, result.finish_reason) if self.cascades else ""
        )
        verdicts: list[HookVerdict] = []
        if self._runner.runs("after_attempt"):
            event = Answered(
                request_id=call.request_id,
                tenant=call.request.routing.tenant,
                stage=call.request.routing.stage,
                messages=call.request.messages,
                model=result.model,
                provider=result.provider,
                content=result.content,
                finish_reason=result.finish_reason,
                tier=self._answers,
                cascade=self.cascades,
                streamed=self._streamed,
                rejected_by_check=failed_check,
            )
            verdicts = await self._runner.run("after_attempt", event, call.request_id)
            self._record_scores(result.model, verdicts)
        reason = failed_check or _veto_reason(verdicts)
        if not reason:
            return True
        if self._streamed:
            # The client already has every token of it: nothing to take back or escalate.
            log.info(
                "veto of a streamed answer ignored",
                extra={"request_id": call.request_id, "model": result.model, "reason": reason},
            )
            return True
        self._reject(result, reason)
        return False

    @property
    def rejected(self) -> bool:
        """Whether an answer was rejected (and could still be served)."""
        return self._rejected is not None

    def rejected_answer(self) -> ChatResult | None:
        """The last rejected answer, with every attempt of the call, for a call with no model
        left that would give a better one."""
        rejected, call = self._rejected, self._call
        if rejected is None:
            return None
        input_tokens, output_tokens, cost = call.totals()
        return replace(
            rejected,
            attempts=tuple(call.attempts),
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cost_usd=cost,
            latency_ms=call.elapsed_ms(),
        )

    async def responded(self, result: ChatResult, *, rejected: bool) -> None:
        if not self._runner.runs("after_response"):
            return
        call = self._call
        event = Responded(
            request_id=call.request_id,
            tenant=call.request.routing.tenant,
            stage=call.request.routing.stage,
            messages=call.request.messages,
            model=result.model,
            content=result.content,
            finish_reason=result.finish_reason,
            attempts=tuple(
                Attempt(
                    model=a.model,
                    error_class=a.error_class,
                    error_message=a.error_message,
                    cost_usd=a.cost_usd,
                )
                for a in result.attempts
            ),
            cost_usd=result.cost_usd,
            streamed=self._streamed,
            rejected=rejected,
        )
        verdicts = await self._runner.run("after_response", event, call.request_id)
        self._record_scores(result.model, verdicts)

    def _reject(self, result: ChatResult, reason: str) -> None:
        call = self._call
        self._rejected = result
        # The answered attempt of this model is the last ok one (a hedge's loser may follow it).
        for i in range(len(call.attempts) - 1, -1, -1):
            attempt = call.attempts[i]
            if attempt.model == result.model and attempt.ok:
                call.attempts[i] = replace(attempt, error_class=REJECTED, error_message=reason)
                break
        call.root_span.add_event(
            EVENT_ESCALATION, {"switchpoint.from_model": result.model, "reason": reason}
        )
        log.info(
            "answer rejected",
            extra={"request_id": call.request_id, "model": result.model, "reason": reason},
        )

    def _record_scores(self, model: str, verdicts: Sequence[HookVerdict]) -> None:
        sink, call = self._outcomes, self._call
        if sink is None:
            return
        for hook_verdict in verdicts:
            score = hook_verdict.verdict.score
            if score is None:
                continue
            try:
                sink.record(
                    messages=call.request.messages,
                    model=model,
                    score=float(score),
                    tenant=call.request.routing.tenant,
                )
            except Exception:  # an outcome lost is a learning signal lost, never a failed call
                log.exception(
                    "outcome not recorded",
                    extra={"request_id": call.request_id, "hook": hook_verdict.hook},
                )


def _veto_reason(verdicts: Sequence[HookVerdict]) -> str:
    veto = next((v for v in verdicts if v.verdict.veto), None)
    if veto is None:
        return ""
    reason = veto.verdict.reason
    return f"vetoed by hook '{veto.hook}'" + (f": {reason}" if reason else "")
