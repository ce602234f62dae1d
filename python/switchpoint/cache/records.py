"""What goes in and out of the response cache, independent of the engine's and the wire's types.

The engine adapts its ChatInput and its completion to `CacheQuery` and `CachedAnswer`; the cache
never imports engine code, so it can be tested and benchmarked on its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, NamedTuple

HitKind = Literal["exact", "semantic"]
HitLayer = Literal["local", "redis"]


@dataclass(frozen=True, slots=True)
class CacheScope:
    """One partition of the cache: entries in different scopes never see each other."""

    tenant: str
    model_class: str
    params_key: str


@dataclass(frozen=True, slots=True)
class CacheParams:
    """The generation parameters that decide whether, and how, a request may be served a copy."""

    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    # The request offers tools: the answer may be a tool call that depends on state the cache
    # cannot see, so such requests bypass it.
    tools: bool = False
    # "json_object", a JSON schema as text, ...; any value makes the request exact-match only.
    response_format: str | None = None


class CacheControls(NamedTuple):
    """Per-request control of the cache."""

    # Neither read nor write the cache for this request.
    bypass: bool = False
    # Exact hits only.
    no_semantic: bool = False
    # This request's own similarity threshold for semantic hits (0 < t <= 1).
    threshold: float | None = None


@dataclass(frozen=True, slots=True)
class CacheQuery:
    tenant: str
    # The model the router chose for this request and its quality (0..1): the model class the
    # request asks for is derived from them (switchpoint.cache.keys.model_class_of).
    model: str
    quality: float
    # (role, content) pairs, the whole conversation; the cache applies its window.
    messages: tuple[tuple[str, str], ...]
    params: CacheParams = field(default_factory=CacheParams)
    controls: CacheControls = field(default_factory=CacheControls)


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    """A provider's complete answer, as stored; `model`/`quality` are the model that wrote it."""

    content: str
    model: str
    quality: float
    finish_reason: str
    input_tokens: int
    output_tokens: int
    cost_usd: float


@dataclass(frozen=True, slots=True)
class CacheHit:
    content: str
    model: str
    finish_reason: str
    # What serving this hit saved: the original call's usage and cost.
    input_tokens_saved: int
    output_tokens_saved: int
    cost_saved_usd: float
    age_s: float
    # Cosine similarity of the request to the entry; 1.0 for exact hits.
    similarity: float
    kind: HitKind
    layer: HitLayer


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """One stored answer. Immutable: recency lives in the store's LRU order, not in the entry."""

    entry_id: int
    scope: CacheScope
    class_rank: int
    exact_key: str
    # The request's text as the guard compares it; None for entries stored exact-only.
    semantic_text: str | None
    answer: CachedAnswer
    created_at: float
    expires_at: float

    def hit(self, *, now: float, similarity: float, kind: HitKind) -> CacheHit:
        return answer_hit(
            self.answer,
            age_s=now - self.created_at,
            similarity=similarity,
            kind=kind,
            layer="local",
        )


def answer_hit(
    answer: CachedAnswer, *, age_s: float, similarity: float, kind: HitKind, layer: HitLayer
) -> CacheHit:
    return CacheHit(
        content=answer.content,
        model=answer.model,
        finish_reason=answer.finish_reason,
        input_tokens_saved=answer.input_tokens,
        output_tokens_saved=answer.output_tokens,
        cost_saved_usd=answer.cost_usd,
        age_s=max(0.0, age_s),
        similarity=similarity,
        kind=kind,
        layer=layer,
    )
