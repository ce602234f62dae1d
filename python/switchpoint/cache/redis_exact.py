"""An exact-match layer in Redis, shared by every replica of the sidecar.

Only exact entries are shared: the semantic layer's vectors stay in each replica's memory (a
shared vector index is a different system). A replica that misses locally asks Redis before
embedding; every stored answer is also written to Redis with a TTL, so a question answered by one
replica is an exact hit on all of them.

Keys: `{prefix}:{tenant tag}:{exact key}:{model class}` (switchpoint.cache.keys), so one MGET
covers every model class the request may be served from, and deleting a tenant is one SCAN over
its tag. Values are JSON: the answer and when it was made.

Redis trouble never fails a request: a lookup that errors is a miss, a write that errors is
dropped; both are logged and counted. Deleting a tenant is the exception: its errors propagate.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict

from redis.asyncio import Redis
from redis.exceptions import RedisError

from switchpoint.cache.keys import RequestKeys, tenant_tag
from switchpoint.cache.records import CachedAnswer, CacheHit, answer_hit

log = logging.getLogger(__name__)

_DELETE_BATCH = 500


class RedisExactLayer:
    def __init__(self, client: Redis, *, key_prefix: str, ttl_s: int) -> None:
        self._client = client
        self._prefix = key_prefix
        self._ttl_s = ttl_s
        self.errors = 0

    def _key(self, tenant: str, exact_key: str, model_class: str) -> str:
        return f"{self._prefix}:{tenant_tag(tenant)}:{exact_key}:{model_class}"

    async def get(self, keys: RequestKeys, *, now: float) -> CacheHit | None:
        names = [
            self._key(keys.scope.tenant, keys.exact_key, label) for label in keys.servable_classes
        ]
        try:
            values = await self._client.mget(names)
        except (RedisError, OSError) as exc:
            self._failed("lookup", exc)
            return None
        for value in values:
            if value is None:
                continue
            try:
                raw = json.loads(value)
                answer = CachedAnswer(**raw["answer"])
                created_at = float(raw["created_at"])
            except (ValueError, TypeError, KeyError):
                log.warning("ignoring an unreadable shared cache value")
                continue
            return answer_hit(
                answer, age_s=now - created_at, similarity=1.0, kind="exact", layer="redis"
            )
        return None

    async def put(
        self,
        keys: RequestKeys,
        model_class: str,
        answer: CachedAnswer,
        *,
        created_at: float,
        ttl_s: int | None = None,
    ) -> None:
        value = json.dumps({"answer": asdict(answer), "created_at": created_at})
        name = self._key(keys.scope.tenant, keys.exact_key, model_class)
        try:
            await self._client.set(name, value, ex=ttl_s or self._ttl_s)
        except (RedisError, OSError) as exc:
            self._failed("store", exc)

    async def delete_tenant(self, tenant: str) -> int:
        """Delete every shared entry of the tenant. Errors propagate: a deletion the caller asked
        for must not be reported done when it was not."""
        deleted = 0
        batch: list[str | bytes] = []
        async for name in self._client.scan_iter(
            match=f"{self._prefix}:{tenant_tag(tenant)}:*", count=_DELETE_BATCH
        ):
            batch.append(name)
            if len(batch) >= _DELETE_BATCH:
                deleted += int(await self._client.unlink(*batch))
                batch.clear()
        if batch:
            deleted += int(await self._client.unlink(*batch))
        return deleted

    def _failed(self, what: str, exc: Exception) -> None:
        self.errors += 1
        log.warning("shared cache %s failed, continuing without it: %s", what, exc)
