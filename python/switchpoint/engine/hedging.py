"""Hedging: a call's first model raced against its second once the first is slower than usual.

Whole calls race to the first answer (`Hedging.race`), streams to the first token
(`Hedging.race_streams`). The loser is cancelled, charged what reached its provider
(`engine.billing`) and listed with the answer's attempts.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Iterator
from contextlib import aclosing
from dataclasses import replace
from typing import Literal

from switchpoint._native import LatencyTracker
from switchpoint.config import Config, ModelConfig
from switchpoint.engine.attempts import Attempts, Outcome
from switchpoint.engine.calls import AttemptRecord, CallState, ChatResult, StreamDelta
from switchpoint.registry import Registry
from switchpoint.request import ChatInput


class Hedging:
    """Runs hedged races on the engine's attempts; no state of its own."""

    def __init__(
        self, config: Config, registry: Registry, latency: LatencyTracker, attempts: Attempts
    ) -> None:
        self._config = config
        self._registry = registry
        self._latency = latency
        self._attempts = attempts

    def applies(self, request: ChatInput) -> bool:
        """Whether the call races its first two models (asked by the call or by its stage)."""
        stage = self._config.routing.stages.get(request.routing.stage)
        return request.routing.hedge or (stage is not None and stage.hedge)

    async def run(
        self, call: CallState, models: Iterator[ModelConfig], outcome: Outcome, *, streamed: bool
    ) -> AsyncGenerator[StreamDelta, None]:
        """The race, whole or streamed: the winner's answer into `outcome` (None when no racer
        answered, and the caller goes on down the chain); streamed, the winner's deltas."""
        if not streamed:
            outcome.result = await self.race(call, models)
            return
        async with aclosing(self.race_streams(call, models, outcome)) as deltas:
            async for delta in deltas:
                yield delta

    async def race(self, call: CallState, models: Iterator[ModelConfig]) -> ChatResult | None:
        """Race the first model against the second once the first is slower than its usual p95;
        the first answer wins and the other call is cancelled, charged what reached its provider
        (`switchpoint.engine.billing`) and listed with the answer's attempts and usage."""
        primary = next(models, None)
        if primary is None:
            return None
        racers = {asyncio.create_task(self._attempts.complete_on(call, primary)): primary}
        done, _ = await asyncio.wait(racers, timeout=self._delay_s(primary, call))
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

    async def race_streams(
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
        hedge_after: float | None = self._delay_s(primary, call, kind="ttft")
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

    def _delay_s(
        self, model: ModelConfig, call: CallState, *, kind: Literal["total", "ttft"] = "total"
    ) -> float:
        """The model's observed p95 whole-call latency (or time to first token), or its prior
        before enough samples."""
        seen = self._latency.percentiles(self._latency.slot(model.name), kind)
        p95_ms, samples = seen.p95_ms, seen.samples
        if samples < self._config.routing.min_latency_samples:
            p95_ms = (
                self._registry.prior_latency_ms(model, call.decision.output_tokens)
                if kind == "total"
                else model.latency_prior.ttft_ms
            )
        return p95_ms / 1000.0


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
        self.stream = attempts.turn(call, model, self.outcome, streamed=True)
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
