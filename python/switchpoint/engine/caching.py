"""The cache on the request path: the query a Chat makes of it, the answer it files, and a hit
turned into the result (and stream) a provider would have produced."""

from __future__ import annotations

import re

from opentelemetry.trace import Tracer

from switchpoint.cache.records import CachedAnswer, CacheHit, CacheParams, CacheQuery
from switchpoint.cache.store import ResponseCache
from switchpoint.engine.calls import REJECTED, CallState, ChatResult
from switchpoint.instruments import MetricsSink, current_span
from switchpoint.registry import Registry
from switchpoint.telemetry import SPAN_CACHE

# A cached answer is replayed to a streaming client in word-sized pieces, as a provider would.
_PIECES = re.compile(r"\s*\S+\s*")


class CacheFront:
    def __init__(
        self, cache: ResponseCache, registry: Registry, tracer: Tracer, metrics: MetricsSink
    ) -> None:
        self.cache = cache
        self._registry = registry
        self._tracer = tracer
        self._metrics = metrics

    def _query(self, call: CallState) -> CacheQuery:
        request, chosen = call.request, call.decision.chosen
        params = request.params
        return CacheQuery(
            tenant=request.routing.tenant,
            model=chosen.name,
            quality=chosen.quality,
            messages=tuple((m.role, m.content) for m in request.messages),
            params=CacheParams(
                temperature=params.temperature,
                top_p=params.top_p,
                max_tokens=params.max_tokens,
                stop=tuple(params.stop),
            ),
            controls=request.cache,
        )

    async def lookup(self, call: CallState) -> CacheHit | None:
        with current_span(self._tracer, SPAN_CACHE) as span:
            hit = await self.cache.lookup(self._query(call))
            span.set_attribute("switchpoint.cache.hit", hit is not None)
            if hit is not None:
                span.set_attribute("switchpoint.cache.kind", hit.kind)
                span.set_attribute("switchpoint.cache.similarity", hit.similarity)
        self._metrics.cache(hit=hit is not None, kind=hit.kind if hit else "lookup")
        return hit

    async def remember(self, call: CallState, result: ChatResult) -> None:
        """File a provider's answer. A stream continued across models is not one model's answer
        and is not filed; an answer after rejected ones (a cascade's) is."""
        if any(a.error_class not in ("", REJECTED) and a.output_tokens for a in result.attempts):
            return
        index = self._registry.index_of(result.model)
        if index is None:
            return
        last = result.attempts[-1]
        await self.cache.store(
            self._query(call),
            CachedAnswer(
                content=result.content,
                model=result.model,
                quality=self._registry.models[index].quality,
                finish_reason=result.finish_reason,
                input_tokens=last.input_tokens,
                output_tokens=last.output_tokens,
                cost_usd=last.cost_usd,
            ),
        )

    def result(self, call: CallState, hit: CacheHit) -> ChatResult:
        index = self._registry.index_of(hit.model)
        provider = self._registry.models[index].provider if index is not None else ""
        return ChatResult(
            request_id=call.request_id,
            content=hit.content,
            model=hit.model,
            provider=provider,
            input_tokens=0,
            output_tokens=0,
            cost_usd=0.0,
            latency_ms=call.elapsed_ms(),
            finish_reason=hit.finish_reason,
            attempts=(),
            decision=call.decision,
            ttft_ms=call.elapsed_ms(),
            cache=hit,
        )

    @staticmethod
    def pieces(hit: CacheHit) -> list[str]:
        return _PIECES.findall(hit.content) or [hit.content]
