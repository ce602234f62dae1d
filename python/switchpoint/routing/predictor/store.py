"""The outcomes the predictor learns from: one row per prompt (its embedding), a score per model.

Rows are searched by inner product (unit rows: cosine) in a FAISS HNSW graph, whose search time
grows with the log of the rows rather than with the rows (a flat scan of 100k rows of 512
dimensions takes ~10 ms). HNSW cannot remove a row, so rows past `max_outcomes` are dropped by
rebuilding the graph without the oldest, at most once per tenth of the capacity.

Not thread-safe: the predictor runs every call on its one worker thread.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import faiss
import numpy as np
import numpy.typing as npt

FORMAT: Final = "switchpoint-outcomes-1"
# HNSW's graph degree, build and search breadths: recall of the true 64 nearest 0.998 on
# clustered 512-d rows, ~0.4 ms of CPU to insert a row (docs/benchmarks.md, "Predicted quality").
GRAPH_DEGREE: Final = 16
BUILD_BREADTH: Final = 40
SEARCH_BREADTH: Final = 128
NO_SOURCE: Final = -1  # a row learnt from feedback or a hook, not read from a file

Vectors = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class Neighbours:
    """The rows nearest a query, nearest first, with their cosine similarity."""

    rows: npt.NDArray[np.int64]
    similarity: npt.NDArray[np.float32]


class OutcomeStore:
    """Rows of `dim` columns; `scores[row, model]` (NaN where the model has no outcome there) and
    `times[row, model]` (Unix seconds) over the model names in `models`."""

    def __init__(self, dim: int, *, max_outcomes: int) -> None:
        self.dim = dim
        self.max_outcomes = max_outcomes
        self.models: list[str] = []
        self._model_index: dict[str, int] = {}
        # Allocated ahead and grown by doubling, so adding one row does not copy them all.
        self._rows = 0
        self._scores = np.zeros((0, 0), np.float32)
        self._times = np.zeros((0, 0), np.float64)
        self._sources = np.zeros(0, np.int32)
        # The source files (by content digest) whose rows the store holds.
        self.files: list[str] = []
        self._index = self._new_index()

    def __len__(self) -> int:
        return self._rows

    @property
    def vectors(self) -> Vectors:
        """A copy of the rows' vectors: the graph holds the only one (a second would double the
        store's memory)."""
        if self._rows == 0:
            return np.zeros((0, self.dim), np.float32)
        vectors: Vectors = self._index.reconstruct_n(0, self._rows)
        return vectors

    @property
    def scores(self) -> npt.NDArray[np.float32]:
        return self._scores[: self._rows]

    @property
    def times(self) -> npt.NDArray[np.float64]:
        return self._times[: self._rows]

    @property
    def sources(self) -> npt.NDArray[np.int32]:
        return self._sources[: self._rows]

    @property
    def outcomes(self) -> int:
        """Scores held (a row may hold several models' scores)."""
        return int(np.count_nonzero(~np.isnan(self.scores)))

    def column_of(self, model: str) -> int | None:
        return self._model_index.get(model)

    def model_column(self, model: str) -> int:
        column = self._model_index.get(model)
        if column is None:
            column = self._model_index[model] = len(self.models)
            self.models.append(model)
            capacity = len(self._sources)
            self._scores = np.hstack([self._scores, np.full((capacity, 1), np.nan, np.float32)])
            self._times = np.hstack([self._times, np.zeros((capacity, 1), np.float64)])
        return column

    def file_source(self, digest: str) -> int:
        if digest not in self.files:
            self.files.append(digest)
        return self.files.index(digest)

    def add(
        self,
        vectors: Vectors,
        outcomes: list[dict[str, float]],
        time_s: float,
        source: int = NO_SOURCE,
    ) -> None:
        """One row per vector, holding its prompt's scores by model, all as of `time_s`."""
        for scores in outcomes:
            for model in scores:
                self.model_column(model)
        count, first = len(vectors), self._rows
        self._reserve(first + count)
        for offset, scores in enumerate(outcomes):
            for model, score in scores.items():
                column = self._model_index[model]
                self._scores[first + offset, column] = score
                self._times[first + offset, column] = time_s
        vectors = np.ascontiguousarray(vectors, np.float32)
        self._sources[first : first + count] = source
        self._rows += count
        self._index.add(vectors)
        if len(self) > self.max_outcomes + max(self.max_outcomes // 10, 1):
            self._keep(np.arange(len(self) - self.max_outcomes, len(self)))

    def drop_sources(self, keep: set[int]) -> None:
        """Drop the rows read from files whose source number is not in `keep`."""
        wanted = (self.sources == NO_SOURCE) | np.isin(self.sources, list(keep))
        if not wanted.all():
            self._keep(np.flatnonzero(wanted))

    def nearest(self, query: Vectors, k: int) -> Neighbours:
        if len(self) == 0:
            return Neighbours(np.zeros(0, np.int64), np.zeros(0, np.float32))
        similarity, rows = self._index.search(query.reshape(1, -1), min(k, len(self)))
        found = rows[0] >= 0
        return Neighbours(rows[0][found], similarity[0][found])

    # -- persistence --------------------------------------------------------------------------

    def save(self, path: Path, *, embedder: str) -> None:
        """Written to a temporary file and renamed into place: a crash keeps the previous one."""
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".outcomes-", suffix=".npz")
        try:
            with os.fdopen(handle, "wb") as out:
                np.savez(
                    out,
                    format=np.array(FORMAT),
                    embedder=np.array(embedder),
                    dim=np.array(self.dim),
                    models=np.array(self.models, dtype=np.str_),
                    files=np.array(self.files, dtype=np.str_),
                    scores=self.scores,
                    times=self.times,
                    sources=self.sources,
                    # The graph, with the vectors: rebuilding it costs more than the rest of a load.
                    index=faiss.serialize_index(self._index),
                )
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: Path, *, embedder: str, dim: int, max_outcomes: int) -> OutcomeStore:
        """The store saved at `path`; ValueError when it is unreadable or was written with
        another embedder (its rows would not be comparable)."""
        try:
            with np.load(path, allow_pickle=False) as saved:
                arrays = {name: saved[name] for name in saved.files}
        except (OSError, ValueError, EOFError) as exc:
            raise ValueError(f"{path}: cannot be read: {exc}") from None
        missing = {"format", "embedder", "dim", "models", "files", "index", "scores"}
        missing = (missing | {"times", "sources"}) - set(arrays)
        if missing or str(arrays["format"]) != FORMAT:
            raise ValueError(f"{path}: not an outcome store")
        if str(arrays["embedder"]) != embedder or int(arrays["dim"]) != dim:
            raise ValueError(f"{path}: written with embedder {arrays['embedder']}")
        store = cls(dim, max_outcomes=max_outcomes)
        store.models = [str(m) for m in arrays["models"]]
        store._model_index = {m: i for i, m in enumerate(store.models)}
        store.files = [str(f) for f in arrays["files"]]
        store._scores = np.asarray(arrays["scores"], np.float32)
        store._times = np.asarray(arrays["times"], np.float64)
        store._sources = np.asarray(arrays["sources"], np.int32)
        rows = store._rows = len(store._sources)
        shapes = (store._scores.shape, store._times.shape)
        if shapes != ((rows, len(store.models)), (rows, len(store.models))):
            raise ValueError(f"{path}: inconsistent shapes {shapes}")
        try:
            index = faiss.deserialize_index(np.ascontiguousarray(arrays["index"], np.uint8))
        except RuntimeError as exc:
            raise ValueError(f"{path}: its search graph cannot be read: {exc}") from None
        if not (isinstance(index, faiss.IndexHNSWFlat) and (index.ntotal, index.d) == (rows, dim)):
            raise ValueError(f"{path}: its search graph does not match its rows")
        index.hnsw.efSearch = SEARCH_BREADTH
        store._index = index
        return store

    # -- internals ----------------------------------------------------------------------------

    def _new_index(self) -> faiss.IndexHNSWFlat:
        index = faiss.IndexHNSWFlat(self.dim, GRAPH_DEGREE, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = BUILD_BREADTH
        index.hnsw.efSearch = SEARCH_BREADTH
        return index

    def _reserve(self, rows: int) -> None:
        capacity = len(self._sources)
        if rows <= capacity:
            return
        grown = max(rows, 2 * capacity, 1024)
        models = len(self.models)
        scores = np.full((grown, models), np.nan, np.float32)
        times = np.zeros((grown, models), np.float64)
        sources = np.zeros(grown, np.int32)
        scores[:capacity], times[:capacity], sources[:capacity] = (
            self._scores,
            self._times,
            self._sources,
        )
        self._scores, self._times, self._sources = scores, times, sources

    def _keep(self, rows: npt.NDArray[np.int64]) -> None:
        vectors = np.ascontiguousarray(self.vectors[rows])
        self._scores = self.scores[rows]
        self._times = self.times[rows]
        self._sources = self.sources[rows]
        self._rows = len(rows)
        self._index = self._new_index()
        self._index.add(vectors)
