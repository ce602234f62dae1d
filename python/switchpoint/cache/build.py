"""Builds the response cache a config asks for, and closes everything it opened."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from redis.asyncio import Redis

from switchpoint.cache.embedders import Embedder, LocalSentenceEncoder, create_embedder
from switchpoint.cache.redis_exact import RedisExactLayer
from switchpoint.cache.store import ResponseCache
from switchpoint.config import Config
from switchpoint.errors import ConfigError


@dataclass(slots=True)
class CacheService:
    """The cache and what it owns: started with the sidecar, closed (snapshot first) at stop."""

    cache: ResponseCache
    embedder: Embedder
    redis: Redis | None = None

    async def start(self) -> None:
        await self.cache.start()

    async def close(self) -> None:
        await self.cache.close()
        if isinstance(self.embedder, LocalSentenceEncoder):
            self.embedder.close()
        else:
            aclose = getattr(self.embedder, "aclose", None)
            if aclose is not None:
                await aclose()
        if self.redis is not None:
            await self.redis.aclose()


def build_cache(config: Config, environ: Mapping[str, str]) -> CacheService | None:
    """None when the config leaves the cache off."""
    settings = config.cache
    if not settings.enabled:
        return None
    embedder_settings = settings.embedder
    api_key = environ.get(embedder_settings.api_key_env) if embedder_settings.api_key_env else None
    embedder = create_embedder(
        embedder_settings.kind,
        base_url=embedder_settings.base_url,
        api_key=api_key,
        model=embedder_settings.model,
        dim=embedder_settings.dim,
        projection=embedder_settings.projection or "paraphrase",
    )
    redis: Redis | None = None
    layer: RedisExactLayer | None = None
    if settings.redis_exact.enabled:
        url = settings.redis_exact.url or config.shared_state.redis_url
        if url is None:
            raise ConfigError(["cache.redis_exact.url: required (or set shared_state.redis_url)"])
        redis = Redis.from_url(url, decode_responses=False)
        layer = RedisExactLayer(
            redis,
            key_prefix=settings.redis_exact.key_prefix,
            ttl_s=settings.redis_exact.ttl_s or settings.ttl_s,
        )
    return CacheService(ResponseCache(settings, embedder, redis=layer), embedder, redis)
