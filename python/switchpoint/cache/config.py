"""The response cache's config section (`cache:` in the YAML).

Off by default: a cache changes what callers get back (an earlier answer instead of a fresh one),
so an operator turns it on knowingly. Every sub-section refuses unknown keys, like the rest of the
config schema.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# The semantic rule's defaults (switchpoint.cache.decide). Named constants because the values come
# from measurement (benches/cache_eval.py: chosen on QQP and the tuning half of the paraphrase sets
# in benches/data/paraphrases, reported on the other half) and move when that measurement does.
DEFAULT_SEMANTIC_THRESHOLD = 0.65
DEFAULT_SEMANTIC_MARGIN = 0.10
DEFAULT_SAME_QUESTION = 0.95

UnitInterval = Annotated[float, Field(gt=0, le=1)]
PositiveInt = Annotated[int, Field(ge=1)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EmbedderConfig(_Strict):
    """Which model turns a request's text into the vector the semantic layer searches with."""

    kind: Literal["local", "openai"] = "local"
    # local only: "paraphrase" (the default) maps the model's vectors through the projection
    # trained to pull paraphrases together and push near misses apart
    # (switchpoint.cache.projection); "none" keeps the model's own vectors.
    projection: Literal["paraphrase", "none"] | None = None
    # openai: an OpenAI-compatible /v1/embeddings endpoint and the model to ask it for.
    base_url: str | None = None
    # Name of the environment variable holding the API key; the key itself never appears in config.
    api_key_env: str | None = None
    model: str | None = None
    # The endpoint's embedding size, checked against every response.
    dim: PositiveInt | None = None

    @model_validator(mode="after")
    def _remote_needs_endpoint(self) -> EmbedderConfig:
        if self.kind == "openai" and (not self.base_url or not self.model):
            raise ValueError("an openai embedder needs base_url and model")
        if self.kind == "openai" and self.projection == "paraphrase":
            raise ValueError("projection: the paraphrase projection is trained for the local model")
        return self


class SemanticConfig(_Strict):
    enabled: bool = True
    # The floor: no neighbour less similar than this is served, however much it stands out.
    threshold: UnitInterval = DEFAULT_SEMANTIC_THRESHOLD
    # How much more similar than its nearest rival (another question in the cache) a neighbour
    # must be; 0 turns the rival test off, leaving the floor alone.
    margin: Annotated[float, Field(ge=0, le=1)] = DEFAULT_SEMANTIC_MARGIN
    # Two cached entries at least this similar to each other are the same question asked twice,
    # not rivals.
    same_question: UnitInterval = DEFAULT_SAME_QUESTION
    # Check a semantic neighbour with switchpoint.cache.guard before serving it: near-identical
    # wording with a different entity or number ("... in 2019" / "... in 2021") embeds above any
    # useful threshold but asks something else.
    guard: bool = True
    # Neighbours examined per lookup: the rival test needs at least two, and a few more let a
    # guard refusal fall through and copies of one question be told from rivals.
    candidates: Annotated[int, Field(ge=2, le=64)] = 8


class RedisExactConfig(_Strict):
    """An exact layer shared by all replicas (switchpoint.cache.redis_exact)."""

    enabled: bool = False
    # None: the server factory uses shared_state.redis_url.
    url: str | None = None
    key_prefix: Annotated[str, Field(min_length=1)] = "switchpoint:cache"
    # None: the cache's own ttl_s.
    ttl_s: PositiveInt | None = None


class CacheConfig(_Strict):
    enabled: bool = False
    embedder: EmbedderConfig = Field(default_factory=EmbedderConfig)
    semantic: SemanticConfig = Field(default_factory=SemanticConfig)
    # Entries across all tenants; beyond it the least recently used entry is evicted.
    max_entries: PositiveInt = 50_000
    ttl_s: PositiveInt = 86_400
    # A partition (tenant x model class x parameters) switches from exact inner-product search to
    # an HNSW graph when it holds more entries than this: flat search is exact and cheap up to a
    # few tens of thousands of 512-d vectors, HNSW stays sub-millisecond far beyond.
    hnsw_above: PositiveInt = 20_000
    # Requests asking for more randomness than this want a fresh answer: they bypass the cache.
    max_temperature: Annotated[float, Field(ge=0)] = 0.3
    # How many of the latest non-system messages the key covers; 0 = the whole conversation.
    # System messages always count in full (they define the task).
    conversation_window: Annotated[int, Field(ge=0)] = 0
    # Which answers a request may be served (switchpoint.cache.keys.ModelClass):
    #   model        only answers from the very model the router chose
    #   quality_band answers from any model whose quality band is >= the chosen model's
    #   none         any answer in the tenant, whatever model wrote it
    model_class_scope: Literal["model", "quality_band", "none"] = "quality_band"
    # quality (0..1) is cut into this many equal bands: 10 -> [0, 0.1), ..., [0.9, 1].
    quality_bands: Annotated[int, Field(ge=1, le=100)] = 10
    # Snapshots are written here on graceful stop and every snapshot_interval_s; None = memory only.
    directory: str | None = None
    snapshot_interval_s: Annotated[float, Field(gt=0)] = 300.0
    redis_exact: RedisExactConfig = Field(default_factory=RedisExactConfig)
