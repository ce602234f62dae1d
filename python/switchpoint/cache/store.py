"""The response cache: an exact layer, an optional shared (Redis) exact layer, and a semantic
layer, looked up in that order before the priority queue and the provider call.

Lookup: a request that may use the cache (switchpoint.cache.keys.bypass_reason) is first looked
up by its exact key in every model class it may be served from; then in Redis when configured;
then, unless it is exact-only, its conversation window is embedded once and searched in the
FAISS partitions of its tenant, parameters and servable classes. A live neighbour is served when
switchpoint.cache.decide finds that it asks the same thing (similarity floor, standing out from
its nearest rival) and the guard agrees; otherwise the next candidate is tried.

Store: only complete answers (finish_reason "stop", non-empty) are kept, under the ANSWERING
model's class. The same exact key and class replaces the older entry. Beyond `max_entries` the
least recently used entries are evicted; each entry expires `ttl_s` after it was stored (checked
on every read, and swept periodically so expired entries also leave memory).

The cache never fails a request: an embedder or FAISS error makes the lookup a miss and the store
a no-op (logged and counted).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from switchpoint.cache.config import CacheConfig
from switchpoint.cache.decide import NO_RIVAL, Candidate, SemanticRule, servable
from switchpoint.cache.embedders import Embedder
from switchpoint.cache.guard import GuardVerdict, agrees
from switchpoint.cache.index import Neighbour, Vector, VectorIndex
from switchpoint.cache.keys import (
    KEY_VERSION,
    RequestKeys,
    bypass_reason,
    derive_keys,
    model_class_of,
)
from switchpoint.cache.persistence import SnapshotError, SnapshotIdentity, SnapshotStore
from switchpoint.cache.records import CachedAnswer, CacheEntry, CacheHit, CacheQuery, CacheScope
from switchpoint.cache.redis_exact import RedisExactLayer

log = logging.getLogger(__name__)

Guard = Callable[[str, str], GuardVerdict]

STORABLE_FINISH_REASONS = frozenset({"stop"})
# Expired entries leave memory at least this often (they are never served in between).
SWEEP_INTERVAL_S = 60.0
# Characters (query and cached question together) the guard compares on the loop; a few
# microseconds per hundred. Longer ones are compared on a worker thread.
GUARD_INLINE_CHARS = 4096


@dataclass(slots=True)
class _Counters:
    hits: Counter[str] = field(default_factory=Counter)  # by "exact" / "redis" / "semantic"
    misses: int = 0
    bypassed: Counter[str] = field(default_factory=Counter)  # by reason
    stores: int = 0
    evictions: int = 0
    expired: int = 0
    guard_rejections: int = 0
    # Lookups whose nearest entry reached the floor but did not stand out from a rival.
    ambiguous_rejections: int = 0
    errors: int = 0


@dataclass(frozen=True, slots=True)
class CacheStats:
    entries: int
    vectors: int
    partitions: int
    hnsw_partitions: int
    hits: int
    misses: int
    hits_by_kind: dict[str, int]
    bypassed: dict[str, int]
    stores: int
    evictions: int
    expired: int
    guard_rejections: int
    ambiguous_rejections: int
    errors: int
    redis_errors: int
    last_snapshot_at: float | None
    last_snapshot_error: str | None


class ResponseCache:
    def __init__(
        self,
        config: CacheConfig,
        embedder: Embedder,
        *,
        clock: Callable[[], float] = time.time,
        redis: RedisExactLayer | None = None,
        guard: Guard = agrees,
    ) -> None:
        self._config = config
        self._embedder = embedder
        self._clock = clock
        self._redis = redis
        self._guard = guard
        self._index = VectorIndex(embedder.dim, config.hnsw_above)
        self._rule = SemanticRule(
            threshold=config.semantic.threshold,
            margin=config.semantic.margin,
            same_question=config.semantic.same_question,
        )
        # Least recently used first; a hit moves its entry to the end.
        self._entries: OrderedDict[int, CacheEntry] = OrderedDict()
        self._exact: dict[tuple[str, str], int] = {}  # (exact key, model class) -> entry id
        self._expiry: list[tuple[float, int]] = []  # heap; may hold ids already gone
        # Entries dropped from the maps whose vectors are still to be removed from the index.
        self._doomed: list[CacheEntry] = []
        self._next_id = 1
        self._counters = _Counters()
        self._snapshots = (
            SnapshotStore(
                Path(config.directory),
                SnapshotIdentity(
                    embedder=embedder.name,
                    dim=embedder.dim,
                    key_version=KEY_VERSION,
                    model_class_scope=config.model_class_scope,
                    quality_bands=config.quality_bands,
                ),
            )
            if config.directory
            else None
        )
        self._snapshot_lock = asyncio.Lock()
        self._last_snapshot_at: float | None = None
        self._last_snapshot_error: str | None = None
        self._maintenance: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the newest snapshot (if a directory is configured) and start the periodic sweep
        and snapshots."""
        await self.load_snapshot()
        self._maintenance = asyncio.get_running_loop().create_task(self._maintain())

    async def close(self) -> None:
        """Stop the periodic work and write a final snapshot (graceful stop)."""
        if self._maintenance is not None:
            self._maintenance.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._maintenance
            self._maintenance = None
        if self._snapshots is not None:
            await self.snapshot()
        await self._index.close()

    async def _maintain(self) -> None:
        interval = self._config.snapshot_interval_s
        next_snapshot = time.monotonic() + interval
        while True:
            await asyncio.sleep(min(SWEEP_INTERVAL_S, interval))
            try:
                await self.sweep_expired()
                if self._snapshots is not None and time.monotonic() >= next_snapshot:
                    next_snapshot = time.monotonic() + interval
                    await self.snapshot()
            except Exception:
                log.exception("cache maintenance failed; retrying at the next interval")

    # -- lookup ----------------------------------------------------------------------------

    async def lookup(self, query: CacheQuery) -> CacheHit | None:
        reason = bypass_reason(query, self._config)
        if reason is not None:
            self._counters.bypassed[reason] += 1
            return None
        keys = derive_keys(query, self._config)
        hit = self._exact_hit(keys)
        if hit is None and self._redis is not None:
            hit = await self._redis.get(keys, now=self._clock())
        if hit is None and keys.semantic_text is not None:
            threshold = query.controls.threshold or self._config.semantic.threshold
            hit = await self._semantic_hit(keys, keys.semantic_text, threshold)
        if hit is None:
            self._counters.misses += 1
        else:
            self._counters.hits["redis" if hit.layer == "redis" else hit.kind] += 1
        return hit

    def _live(self, entry_id: int, now: float) -> CacheEntry | None:
        entry = self._entries.get(entry_id)
        if entry is None:
            return None
        if entry.expires_at <= now:
            self._counters.expired += 1
            self._forget_later([entry])
            return None
        return entry

    def _exact_hit(self, keys: RequestKeys) -> CacheHit | None:
        now = self._clock()
        for model_class in keys.servable_classes:
            entry_id = self._exact.get((keys.exact_key, model_class))
            entry = None if entry_id is None else self._live(entry_id, now)
            if entry is not None:
                self._entries.move_to_end(entry.entry_id)
                return entry.hit(now=now, similarity=1.0, kind="exact")
        return None

    async def _embed(self, text: str) -> Vector | None:
        try:
            rows = await self._embedder.embed([text])
        except Exception:
            self._counters.errors += 1
            log.warning("embedding failed; semantic cache skipped for this request", exc_info=True)
            return None
        vector: Vector = np.ascontiguousarray(rows[0], dtype=np.float32)
        return vector

    async def _semantic_hit(
        self, keys: RequestKeys, text: str, threshold: float
    ) -> CacheHit | None:
        vector = await self._embed(text)
        if vector is None:
            return None
        scopes = [replace(keys.scope, model_class=label) for label in keys.servable_classes]
        wanted = self._config.semantic.candidates
        try:
            neighbours = await self._index.search(scopes, vector, wanted)
        except Exception:
            self._counters.errors += 1
            log.warning("vector search failed; treated as a miss", exc_info=True)
            return None
        now = self._clock()
        found: list[tuple[Neighbour, CacheEntry]] = []
        for neighbour in neighbours:
            entry = self._live(neighbour.entry_id, now)
            if entry is not None and entry.scope == neighbour.scope and entry.semantic_text:
                found.append((neighbour, entry))
        candidates = [Candidate(n.similarity, n.vector) for n, _ in found]
        # Fewer neighbours than asked for: the search saw every entry it may serve from.
        unseen = NO_RIVAL if len(neighbours) < wanted else neighbours[-1].similarity
        rule = replace(self._rule, threshold=threshold)
        positions = servable(candidates, rule, unseen_bound=unseen)
        if not positions and candidates and rule.reaches_floor(candidates[0].similarity):
            self._counters.ambiguous_rejections += 1
        for position in positions:
            neighbour, entry = found[position]
            if self._config.semantic.guard:
                verdict = await self._check(text, entry.semantic_text or "")
                if not verdict.ok:
                    self._counters.guard_rejections += 1
                    log.debug("cache guard refused a semantic hit: %s", verdict.reason)
                    continue
            self._entries.move_to_end(entry.entry_id)
            return entry.hit(now=now, similarity=min(1.0, neighbour.similarity), kind="semantic")
        return None

    async def _check(self, query: str, cached: str) -> GuardVerdict:
        """The guard's verdict; for long texts on a worker thread, so that the loop serves other
        calls meanwhile (the guard is linear, but a long text still takes milliseconds)."""
        if len(query) + len(cached) <= GUARD_INLINE_CHARS:
            return self._guard(query, cached)
        return await asyncio.to_thread(self._guard, query, cached)

    # -- store -----------------------------------------------------------------------------

    async def store(
        self, query: CacheQuery, answer: CachedAnswer, ttl_s: int | None = None
    ) -> bool:
        """Keep `answer` for requests like `query`; False when it is not cacheable."""
        if bypass_reason(query, self._config) is not None:
            return False
        if answer.finish_reason not in STORABLE_FINISH_REASONS or not answer.content:
            return False
        keys = derive_keys(query, self._config)
        answered = model_class_of(self._config, answer.model, answer.quality)
        scope = replace(keys.scope, model_class=answered.label)
        vector = None if keys.semantic_text is None else await self._embed(keys.semantic_text)
        now = self._clock()
        expires_at = now + (ttl_s or self._config.ttl_s)
        entry = CacheEntry(
            entry_id=self._next_id,
            scope=scope,
            class_rank=answered.rank,
            exact_key=keys.exact_key,
            semantic_text=keys.semantic_text if vector is not None else None,
            answer=answer,
            created_at=now,
            expires_at=expires_at,
        )
        self._next_id += 1
        if vector is not None:
            try:
                await self._index.add(scope, entry.entry_id, vector)
            except Exception:
                self._counters.errors += 1
                log.warning("adding a cache vector failed; stored exact-only", exc_info=True)
                entry = replace(entry, semantic_text=None)
        self._insert(entry)
        await self._flush_forgotten()
        if self._redis is not None:
            await self._redis.put(
                keys, answered.label, answer, created_at=now, ttl_s=ttl_s or self._redis_ttl()
            )
        return True

    def _redis_ttl(self) -> int:
        return self._config.redis_exact.ttl_s or self._config.ttl_s

    def _insert(self, entry: CacheEntry) -> None:
        # Synchronous from here to the end: the maps never show a half-inserted entry.
        exact = (entry.exact_key, entry.scope.model_class)
        replaced = self._exact.get(exact)
        if replaced is not None and replaced in self._entries:
            self._forget_later([self._entries[replaced]])
        self._entries[entry.entry_id] = entry
        self._exact[exact] = entry.entry_id
        heapq.heappush(self._expiry, (entry.expires_at, entry.entry_id))
        self._counters.stores += 1
        overflow = len(self._entries) - self._config.max_entries
        if overflow > 0:
            oldest = [self._entries[i] for i in list(self._entries)[:overflow]]
            self._counters.evictions += overflow
            self._forget_later(oldest)

    # -- removal ---------------------------------------------------------------------------

    def _forget_later(self, entries: Iterable[CacheEntry]) -> None:
        """Drop entries from the maps now (they can no longer be served); their vectors are
        removed by the next `_flush_forgotten`. Vectors of forgotten entries that are still in
        an index are harmless meanwhile: every search result is checked against the maps."""
        for entry in entries:
            if self._entries.pop(entry.entry_id, None) is None:
                continue
            exact = (entry.exact_key, entry.scope.model_class)
            if self._exact.get(exact) == entry.entry_id:
                del self._exact[exact]
            if entry.semantic_text is not None:
                self._doomed.append(entry)

    async def _flush_forgotten(self) -> None:
        doomed, self._doomed = self._doomed, []
        if not doomed:
            return
        by_scope: dict[CacheScope, list[int]] = {}
        for entry in doomed:
            by_scope.setdefault(entry.scope, []).append(entry.entry_id)
        for scope, ids in by_scope.items():
            await self._index.remove(scope, ids)

    async def sweep_expired(self) -> int:
        now = self._clock()
        expired = []
        while self._expiry and self._expiry[0][0] <= now:
            _, entry_id = heapq.heappop(self._expiry)
            entry = self._entries.get(entry_id)
            if entry is not None and entry.expires_at <= now:
                expired.append(entry)
        if len(self._expiry) > 2 * len(self._entries) + 1024:
            # Evicted and replaced entries leave their heap items behind; rebuild it.
            self._expiry = [(e.expires_at, e.entry_id) for e in self._entries.values()]
            heapq.heapify(self._expiry)
        self._counters.expired += len(expired)
        self._forget_later(expired)
        await self._flush_forgotten()
        return len(expired)

    async def delete_tenant(self, tenant: str) -> int:
        """Delete every entry of the tenant, here and in Redis; the number of entries deleted."""
        doomed = [e for e in self._entries.values() if e.scope.tenant == tenant]
        self._forget_later(doomed)
        self._doomed = [e for e in self._doomed if e.scope.tenant != tenant]
        await self._index.drop(s for s in self._index.partition_kinds() if s.tenant == tenant)
        await self._flush_forgotten()
        shared = 0 if self._redis is None else await self._redis.delete_tenant(tenant)
        return len(doomed) + shared

    # -- persistence -----------------------------------------------------------------------

    async def snapshot(self) -> Path | None:
        """Write a snapshot now; None (and `last_snapshot_error` set) when it failed."""
        if self._snapshots is None:
            return None
        store = self._snapshots
        async with self._snapshot_lock:
            await self._flush_forgotten()
            # Copy the entries and queue the index export with no await in between: the export
            # then reflects every add queued before the copy, so every copied entry's vector is in
            # it (vectors of entries stored after the copy are dropped again on load).
            entries = list(self._entries.values())
            next_id = self._next_id
            exported = self._index.begin_export()
            try:
                blobs = await exported
                path = await asyncio.to_thread(
                    store.write, entries, blobs, created_at=self._clock(), next_entry_id=next_id
                )
            except Exception as exc:
                self._last_snapshot_error = f"writing a snapshot failed: {exc}"
                log.exception("writing a cache snapshot failed")
                return None
            self._last_snapshot_at = self._clock()
            self._last_snapshot_error = None
            return path

    async def load_snapshot(self) -> int:
        """Replace the cache's contents with the newest snapshot; the entries loaded. A corrupt
        or incompatible snapshot is reported, moved aside, and the cache stays empty."""
        if self._snapshots is None:
            return 0
        store = self._snapshots
        try:
            loaded = await asyncio.to_thread(store.load)
        except SnapshotError as exc:
            await self._skip_snapshot(store, str(exc))
            return 0
        if loaded is None:
            return 0
        now = self._clock()
        entries = [e for e in loaded.entries if e.expires_at > now]
        live: dict[CacheScope, set[int]] = {}
        for entry in entries:
            if entry.semantic_text is not None:
                live.setdefault(entry.scope, set()).add(entry.entry_id)
        await self._index.install(loaded.indexes, live)
        self._entries = OrderedDict((e.entry_id, e) for e in entries)
        self._exact = {(e.exact_key, e.scope.model_class): e.entry_id for e in entries}
        self._expiry = [(e.expires_at, e.entry_id) for e in entries]
        heapq.heapify(self._expiry)
        self._next_id = max([loaded.next_entry_id, *(e.entry_id + 1 for e in entries)])
        log.info("cache snapshot %s loaded: %d entries", loaded.path.name, len(entries))
        return len(entries)

    async def _skip_snapshot(self, store: SnapshotStore, problem: str) -> None:
        newest = store.newest()
        moved = await asyncio.to_thread(store.discard, newest) if newest else None
        self._last_snapshot_error = f"snapshot skipped: {problem}"
        log.error("cache snapshot not loaded, starting empty: %s (moved to %s)", problem, moved)

    # -- introspection ---------------------------------------------------------------------

    def stats(self) -> CacheStats:
        kinds = self._index.partition_kinds()
        counters = self._counters
        return CacheStats(
            entries=len(self._entries),
            vectors=self._index.vector_count(),
            partitions=len(kinds),
            hnsw_partitions=sum(1 for kind in kinds.values() if kind == "hnsw"),
            hits=sum(counters.hits.values()),
            misses=counters.misses,
            hits_by_kind=dict(counters.hits),
            bypassed=dict(counters.bypassed),
            stores=counters.stores,
            evictions=counters.evictions,
            expired=counters.expired,
            guard_rejections=counters.guard_rejections,
            ambiguous_rejections=counters.ambiguous_rejections,
            errors=counters.errors,
            redis_errors=0 if self._redis is None else self._redis.errors,
            last_snapshot_at=self._last_snapshot_at,
            last_snapshot_error=self._last_snapshot_error,
        )

    async def wait_for_rebuilds(self) -> None:
        """Wait until no partition is being rebuilt (tests and benchmarks)."""
        await self._index.wait_for_rebuilds()
