"""The semantic layer's vectors: one FAISS index per cache partition (CacheScope).

A partition per (tenant, model class, parameters) rather than one index with a filter: a search
can then only ever return vectors of the partitions it was asked about, so one tenant's questions
are never even candidates for another's. Each partition starts as an exact inner-product index
(IndexFlatIP; the vectors are L2-normalised, so inner product = cosine similarity) and is rebuilt
as an HNSW graph once it holds more than `hnsw_above` vectors, where a flat scan stops being cheap.

Threads. Every FAISS call runs on one dedicated thread (FAISS releases the GIL, so the event loop
keeps going): operations on a partition are therefore serialised without locks, in submission
order. That thread uses one OpenMP thread; for single-vector searches a second thread costs more
in synchronisation than it saves. Rebuilds run on a second thread so a search never waits for a
graph build; operations submitted meanwhile are replayed on the new index before it is swapped in.

HNSW cannot delete: a removed vector becomes a tombstone, filtered from results, and the graph is
rebuilt once tombstones make up a quarter of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import faiss
import numpy as np
import numpy.typing as npt

from switchpoint.cache.records import CacheScope

log = logging.getLogger(__name__)

IndexKind = Literal["flat", "hnsw"]
Vector = npt.NDArray[np.float32]

HNSW_M = 32
HNSW_EF_CONSTRUCTION = 64
HNSW_EF_SEARCH = 64
# Tombstones beyond this share of an HNSW partition trigger a rebuild (not below the minimum:
# rebuilding a small graph for a handful of deletions is not worth a build).
TOMBSTONE_SHARE = 0.25
TOMBSTONE_MIN = 256
# Extra neighbours fetched per search when a partition has tombstones, so that dead results do
# not crowd out live ones.
TOMBSTONE_OVERFETCH = 16

_T = TypeVar("_T")


def _one_omp_thread() -> None:
    # OpenMP's thread count is per calling thread, so it is set inside each FAISS thread.
    faiss.omp_set_num_threads(1)


def new_faiss_index(kind: IndexKind, dim: int) -> Any:
    if kind == "flat":
        return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    graph = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
    graph.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    graph.hnsw.efSearch = HNSW_EF_SEARCH
    return faiss.IndexIDMap2(graph)


def kind_of(index: Any) -> IndexKind:
    inner = faiss.downcast_index(index.index)
    if isinstance(inner, faiss.IndexHNSWFlat):
        inner.hnsw.efSearch = HNSW_EF_SEARCH
        return "hnsw"
    if isinstance(inner, faiss.IndexFlatIP):
        return "flat"
    raise ValueError(f"unexpected FAISS index type {type(inner).__name__}")


def index_ids(index: Any) -> npt.NDArray[np.int64]:
    return np.asarray(faiss.vector_to_array(index.id_map), dtype=np.int64)


@dataclass(slots=True)
class _Partition:
    """One FAISS index; touched only on the FAISS thread."""

    index: Any
    kind: IndexKind
    tombstones: set[int] = field(default_factory=set)
    # While a rebuild is under way: the adds and removals to replay on the new index.
    replay: list[tuple[str, npt.NDArray[np.int64], Vector | None]] | None = None

    def add(self, ids: npt.NDArray[np.int64], vectors: Vector) -> None:
        self.index.add_with_ids(vectors, ids)
        if self.replay is not None:
            self.replay.append(("add", ids, vectors))

    def remove(self, ids: npt.NDArray[np.int64]) -> None:
        if self.kind == "flat":
            self.index.remove_ids(ids)
        else:
            self.tombstones.update(int(i) for i in ids)
        if self.replay is not None:
            self.replay.append(("remove", ids, None))

    def search(self, vector: Vector, k: int) -> list[tuple[int, float, Vector]]:
        """The k nearest live entries, each with its own vector (the lookup compares candidates
        with each other to tell a rival question from a second copy of the same one)."""
        fetch = k + (min(len(self.tombstones), TOMBSTONE_OVERFETCH) if self.tombstones else 0)
        scores, ids = self.index.search(vector.reshape(1, -1), fetch)
        live = [
            (int(entry_id), float(score))
            for entry_id, score in zip(ids[0].tolist(), scores[0].tolist(), strict=True)
            if entry_id >= 0 and entry_id not in self.tombstones
        ][:k]
        if not live:
            return []
        # One call for all the vectors: a few microseconds, against ~2 each one by one.
        own = self.index.reconstruct_batch(np.array([entry_id for entry_id, _ in live]))
        return [
            (entry_id, score, np.asarray(row, dtype=np.float32))
            for (entry_id, score), row in zip(live, own, strict=True)
        ]

    def live_vectors(self) -> tuple[npt.NDArray[np.int64], Vector]:
        ids = index_ids(self.index)
        vectors = np.asarray(self.index.index.reconstruct_n(0, ids.size), dtype=np.float32)
        if self.tombstones:
            keep = np.fromiter((int(i) not in self.tombstones for i in ids), dtype=bool)
            return ids[keep], vectors[keep]
        return ids, vectors


@dataclass(slots=True)
class _PartitionState:
    """What the event loop knows of a partition, to decide on rebuilds without a thread hop."""

    kind: IndexKind
    live: int = 0
    tombstones: int = 0
    rebuilding: bool = False


@dataclass(frozen=True, slots=True)
class PartitionBlob:
    """A partition's index, serialised with faiss.serialize_index."""

    scope: CacheScope
    kind: IndexKind
    data: bytes


@dataclass(frozen=True, slots=True)
class Neighbour:
    scope: CacheScope
    entry_id: int
    similarity: float
    vector: Vector = field(compare=False, repr=False)


def _build(kind: IndexKind, dim: int, ids: npt.NDArray[np.int64], vectors: Vector) -> Any:
    index = new_faiss_index(kind, dim)
    if ids.size:
        index.add_with_ids(vectors, ids)
    return index


class VectorIndex:
    def __init__(self, dim: int, hnsw_above: int) -> None:
        self._dim = dim
        self._hnsw_above = hnsw_above
        self._faiss = ThreadPoolExecutor(1, "switchpoint-faiss", initializer=_one_omp_thread)
        self._builder = ThreadPoolExecutor(1, "switchpoint-faiss-build", _one_omp_thread)
        self._partitions: dict[CacheScope, _Partition] = {}
        self._states: dict[CacheScope, _PartitionState] = {}
        self._rebuilds: set[asyncio.Task[None]] = set()

    @property
    def dim(self) -> int:
        return self._dim

    def partition_kinds(self) -> dict[CacheScope, IndexKind]:
        return {scope: state.kind for scope, state in self._states.items()}

    def vector_count(self) -> int:
        return sum(state.live for state in self._states.values())

    async def _on_faiss(self, fn: Callable[..., _T], *args: object) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._faiss, fn, *args)

    async def add(self, scope: CacheScope, entry_id: int, vector: Vector) -> None:
        state = self._states.get(scope)
        if state is None:
            state = self._states[scope] = _PartitionState(kind="flat")
        state.live += 1
        ids = np.array([entry_id], dtype=np.int64)
        await self._on_faiss(self._add, scope, ids, vector.reshape(1, self._dim))
        self._maybe_rebuild(scope, state)

    def _add(self, scope: CacheScope, ids: npt.NDArray[np.int64], vectors: Vector) -> None:
        partition = self._partitions.get(scope)
        if partition is None:
            partition = self._partitions[scope] = _Partition(
                new_faiss_index("flat", self._dim), "flat"
            )
        partition.add(ids, np.ascontiguousarray(vectors, dtype=np.float32))

    async def remove(self, scope: CacheScope, entry_ids: Sequence[int]) -> None:
        state = self._states.get(scope)
        if state is None or not entry_ids:
            return
        state.live -= len(entry_ids)
        if state.kind == "hnsw":
            state.tombstones += len(entry_ids)
        empty = state.live <= 0 and not state.rebuilding
        if empty:
            del self._states[scope]
        await self._on_faiss(self._remove, scope, np.array(entry_ids, dtype=np.int64), empty)
        if not empty:
            self._maybe_rebuild(scope, state)

    def _remove(self, scope: CacheScope, ids: npt.NDArray[np.int64], drop: bool) -> None:
        if drop:
            self._partitions.pop(scope, None)
        elif (partition := self._partitions.get(scope)) is not None:
            partition.remove(ids)

    async def search(self, scopes: Iterable[CacheScope], vector: Vector, k: int) -> list[Neighbour]:
        """The k nearest neighbours over the given partitions, most similar first."""
        wanted = [scope for scope in scopes if scope in self._states]
        if not wanted:
            return []
        return await self._on_faiss(self._search, wanted, vector, k)

    def _search(self, scopes: list[CacheScope], vector: Vector, k: int) -> list[Neighbour]:
        query = np.ascontiguousarray(vector, dtype=np.float32)
        found: list[Neighbour] = []
        for scope in scopes:
            partition = self._partitions.get(scope)
            if partition is not None:
                found.extend(Neighbour(scope, i, s, v) for i, s, v in partition.search(query, k))
        found.sort(key=lambda n: n.similarity, reverse=True)
        return found[:k]

    async def drop(self, scopes: Iterable[CacheScope]) -> None:
        doomed = [scope for scope in scopes if self._states.pop(scope, None) is not None]
        if doomed:
            await self._on_faiss(self._drop, doomed)

    def _drop(self, scopes: list[CacheScope]) -> None:
        for scope in scopes:
            self._partitions.pop(scope, None)

    def _maybe_rebuild(self, scope: CacheScope, state: _PartitionState) -> None:
        if state.rebuilding:
            return
        if state.kind == "flat":
            target: IndexKind | None = "hnsw" if state.live > self._hnsw_above else None
        else:
            tombstoned = state.tombstones >= max(
                TOMBSTONE_MIN, TOMBSTONE_SHARE * (state.live + state.tombstones)
            )
            small = state.live < self._hnsw_above // 2
            target = ("flat" if small else "hnsw") if tombstoned else None
        if target is None:
            return
        state.rebuilding = True
        task = asyncio.get_running_loop().create_task(self._rebuild(scope, state, target))
        self._rebuilds.add(task)
        task.add_done_callback(self._rebuilds.discard)

    async def _rebuild(self, scope: CacheScope, state: _PartitionState, kind: IndexKind) -> None:
        loop = asyncio.get_running_loop()
        try:
            exported = await self._on_faiss(self._start_rebuild, scope)
            if exported is None:
                return
            ids, vectors = exported
            built = await loop.run_in_executor(self._builder, _build, kind, self._dim, ids, vectors)
            tombstones = await self._on_faiss(self._finish_rebuild, scope, built, kind)
            if tombstones is not None:
                state.kind, state.tombstones = kind, tombstones
                log.info("cache partition rebuilt as %s with %d vectors", kind, ids.size)
        except Exception:
            log.exception("rebuilding a cache partition as %s failed; keeping the old index", kind)
            await self._on_faiss(self._abandon_rebuild, scope)
        finally:
            state.rebuilding = False
        if state.live <= 0 and self._states.get(scope) is state:
            await self.drop([scope])

    def _start_rebuild(self, scope: CacheScope) -> tuple[npt.NDArray[np.int64], Vector] | None:
        partition = self._partitions.get(scope)
        if partition is None:
            return None
        partition.replay = []
        return partition.live_vectors()

    def _finish_rebuild(self, scope: CacheScope, built: Any, kind: IndexKind) -> int | None:
        old = self._partitions.get(scope)
        if old is None or old.replay is None:
            return None
        fresh = _Partition(built, kind)
        for op, ids, vectors in old.replay:
            if op == "add" and vectors is not None:
                fresh.add(ids, vectors)
            else:
                fresh.remove(ids)
        self._partitions[scope] = fresh
        return len(fresh.tombstones)

    def _abandon_rebuild(self, scope: CacheScope) -> None:
        if (partition := self._partitions.get(scope)) is not None:
            partition.replay = None

    async def wait_for_rebuilds(self) -> None:
        while self._rebuilds:
            await asyncio.gather(*self._rebuilds, return_exceptions=True)

    def begin_export(self) -> asyncio.Future[list[PartitionBlob]]:
        """Every partition serialised, as of all operations submitted before this call: the
        export is queued on the FAISS thread before this returns."""
        return asyncio.get_running_loop().run_in_executor(self._faiss, self._export)

    def _export(self) -> list[PartitionBlob]:
        return [
            PartitionBlob(scope, partition.kind, faiss.serialize_index(partition.index).tobytes())
            for scope, partition in self._partitions.items()
        ]

    async def install(
        self, indexes: dict[CacheScope, Any], live: dict[CacheScope, set[int]]
    ) -> None:
        """Replace every partition with loaded FAISS indexes. Vectors whose id is not in `live`
        (added while the snapshot's entries were being copied) are removed or tombstoned."""
        await self.wait_for_rebuilds()
        partitions = {
            scope: _Partition(index, kind_of(index))
            for scope, index in indexes.items()
            if live.get(scope)
        }
        tombstones = await self._on_faiss(self._install, partitions, live)
        self._states = {
            scope: _PartitionState(
                kind=partition.kind, live=len(live[scope]), tombstones=tombstones[scope]
            )
            for scope, partition in partitions.items()
        }

    def _install(
        self, partitions: dict[CacheScope, _Partition], live: dict[CacheScope, set[int]]
    ) -> dict[CacheScope, int]:
        for scope, partition in partitions.items():
            ghosts = [int(i) for i in index_ids(partition.index) if int(i) not in live[scope]]
            if ghosts:
                partition.remove(np.array(ghosts, dtype=np.int64))
        self._partitions = partitions
        return {scope: len(partition.tombstones) for scope, partition in partitions.items()}

    async def close(self) -> None:
        for task in list(self._rebuilds):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._rebuilds, return_exceptions=True)
        self._builder.shutdown(wait=True, cancel_futures=True)
        self._faiss.shutdown(wait=True, cancel_futures=True)
