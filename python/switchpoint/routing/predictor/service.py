"""The quality predictor of one sidecar: outcomes in, a predicted quality per model out.

Started and closed with the sidecar (like the cache: it outlives config reloads, which only
re-read its outcome files). Store work (FAISS search and insertion, snapshots) runs on one worker
thread, embeddings on the embedder's own; nothing here runs on the event loop but bookkeeping.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import numpy as np

from switchpoint._native import PredictedQuality
from switchpoint.cache.embedders import Embedder, LocalSentenceEncoder
from switchpoint.errors import (
    AlreadyDoneError,
    ConfigError,
    DeadlineExceededError,
    InvalidRequestError,
    NotFoundError,
)
from switchpoint.providers.base import ChatMessage
from switchpoint.request import ChatInput
from switchpoint.routing.predictor.config import PredictorConfig
from switchpoint.routing.predictor.outcomes import Outcome, prompt_read, read_outcomes, valid_score
from switchpoint.routing.predictor.predict import Weighing, predict
from switchpoint.routing.predictor.recent import RecentRequests
from switchpoint.routing.predictor.store import NO_SOURCE, OutcomeStore, Vectors
from switchpoint.routing.predictor.tokens_embedder import TokenMeanEmbedder

log = logging.getLogger("switchpoint.predictor")
T = TypeVar("T")
# Texts embedded per batch when reading an outcome file: large enough for the embedder's matrix
# products to pay, small enough that requests embedding meanwhile wait little.
EMBED_BATCH = 64


class Prompt(NamedTuple):
    """A prompt as the predictor reads it: its embedding and its length in characters."""

    vector: Vectors
    chars: int


class QualityPredictor:
    def __init__(
        self,
        config: PredictorConfig,
        embedder: Embedder,
        *,
        owns_embedder: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self._owns_embedder = owns_embedder
        self._weighing = Weighing.of(config)
        self._embedder = embedder
        self._clock = clock
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="predictor")
        self._store = OutcomeStore(embedder.dim, max_outcomes=config.max_outcomes)
        self._recent = RecentRequests(
            capacity=config.feedback_requests, window_s=config.feedback_window_s
        )
        self._files_lock = asyncio.Lock()
        self._changed = False
        self._snapshots: asyncio.Task[None] | None = None
        self._learning: set[asyncio.Task[None]] = set()

    @property
    def outcomes(self) -> int:
        return self._store.outcomes

    async def start(self, known_models: Collection[str]) -> None:
        """The saved store (if any), then the outcome files; ConfigError for a bad file."""
        if isinstance(self._embedder, LocalSentenceEncoder | TokenMeanEmbedder):
            # Its weights load now, not on the first request routed.
            await self._embedder.warm_up()
        path = self.config.store
        if path is not None and path.exists():
            try:
                self._store = await self._run(
                    OutcomeStore.load,
                    path,
                    embedder=self._embedder.name,
                    dim=self._embedder.dim,
                    max_outcomes=self.config.max_outcomes,
                )
                log.info("outcome store %s: %d outcomes", path, self._store.outcomes)
            except ValueError as exc:
                # Outcome files are read again below; only feedback is lost.
                log.warning("outcome store ignored: %s", exc)
        await self.load_outcome_files(self.config.outcomes, known_models)
        if path is not None:
            self._snapshots = asyncio.create_task(self._snapshot_every_interval(path))

    async def load_outcome_files(
        self, paths: Sequence[Path], known_models: Collection[str]
    ) -> None:
        """Make the store hold exactly these files' outcomes (and all feedback): files already
        read (same contents) are kept, new ones embedded, dropped ones removed. Every file is
        read and checked before the store changes: ConfigError lists every bad line."""
        async with self._files_lock:
            read = await self._run(_read_files, list(paths))
            digests = {digest for digest, _, _ in read}
            for digest, path, outcomes in read:
                unknown = sorted({o.model for o in outcomes} - set(known_models))
                if unknown:
                    log.warning(
                        "%s: outcomes of models not configured (kept for when they are): %s",
                        path,
                        ", ".join(unknown[:10]),
                    )
                if digest in self._store.files:
                    continue
                await self._add_file(digest, path, outcomes)
            keep = {self._store.files.index(d) for d in digests}
            await self._run(self._store.drop_sources, keep)
            self._changed = True

    async def predict(
        self, request: ChatInput, priors: Mapping[str, float], timeout_s: float | None
    ) -> tuple[Prompt, dict[str, PredictedQuality]]:
        """The prompt as the predictor reads it and each model's predicted quality (a model
        the outcomes say nothing about is left out); DeadlineExceededError when that takes past
        `timeout_s`."""
        text, chars = prompt_read(request.messages)
        try:
            async with asyncio.timeout(timeout_s):
                vector = (await self._embedder.embed([text]))[0]
                predicted = await self._run(
                    lambda: predict(
                        self._store, vector, priors, self._weighing, self._clock(), chars=chars
                    )
                )
        except TimeoutError:
            raise DeadlineExceededError("deadline passed while predicting quality") from None
        return Prompt(vector, chars), predicted

    def remember(self, request_id: str, tenant: str, prompt: Prompt, model: str) -> None:
        self._recent.remember(request_id, tenant, prompt, model, self._clock())

    def served(self, request_id: str, model: str) -> None:
        self._recent.served(request_id, model)

    async def feedback(
        self, request_id: str, tenant: str, model: str, score: float, models: Collection[str]
    ) -> str:
        """Record `score` for `model` (default: the model that served it) on the request
        `request_id` of `tenant`; the model it was recorded for."""
        if not request_id:
            raise InvalidRequestError("request_id", "is required")
        if valid_score(score) is None:
            raise InvalidRequestError("score", f"must be within [0, 1], got {score!r}")
        if model and model not in models:
            raise InvalidRequestError("model", f"'{model}' is not a configured model")
        pending = self._recent.find(request_id, tenant, self._clock())
        if pending is None:
            raise NotFoundError(
                "request_id",
                f"no recent request '{request_id}' of this tenant (requests can be scored for "
                f"{self.config.feedback_window_s:g} s, the last "
                f"{self.config.feedback_requests} of them)",
            )
        model = model or pending.model
        if model in pending.scored:
            raise AlreadyDoneError("model", f"'{model}' was already scored on '{request_id}'")
        pending.scored.add(model)
        await self._learn([pending.prompt], [{model: score}])
        return model

    def record(
        self, *, messages: Sequence[ChatMessage], model: str, score: float, tenant: str
    ) -> None:
        """An outcome from a hook: embedded and learnt in the background."""
        if valid_score(score) is None or not messages:
            log.warning("outcome for %s from tenant %s ignored: bad score %r", model, tenant, score)
            return
        task = asyncio.create_task(self._record(*prompt_read(messages), model, score))
        self._learning.add(task)
        task.add_done_callback(self._learning.discard)

    async def close(self) -> None:
        """Finish what is being learnt, write the store, stop the worker."""
        if self._learning:
            await asyncio.gather(*self._learning, return_exceptions=True)
        if self._snapshots is not None:
            self._snapshots.cancel()
            await asyncio.gather(self._snapshots, return_exceptions=True)
        if self.config.store is not None:
            await self._snapshot(self.config.store)
        self._worker.shutdown(wait=True)
        if self._owns_embedder and isinstance(
            self._embedder, LocalSentenceEncoder | TokenMeanEmbedder
        ):
            self._embedder.close()

    # -- internals ----------------------------------------------------------------------------

    async def _run(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._worker, lambda: function(*args, **kwargs))

    async def _add_file(self, digest: str, path: Path, outcomes: list[Outcome]) -> None:
        by_text: dict[str, dict[str, float]] = {}
        by_chars: dict[str, int] = {}
        for outcome in outcomes:
            by_text.setdefault(outcome.text, {})[outcome.model] = outcome.score
            by_chars[outcome.text] = outcome.chars
        texts = list(by_text)
        when = await self._run(lambda: path.stat().st_mtime)
        source = self._store.file_source(digest)
        for start in range(0, len(texts), EMBED_BATCH):
            batch = texts[start : start + EMBED_BATCH]
            vectors = await self._embedder.embed(batch)
            scores = [by_text[text] for text in batch]
            chars = [by_chars[text] for text in batch]
            await self._run(self._store.add, vectors, scores, when, source, chars)
        log.info("%s: %d outcomes of %d prompts", path, len(outcomes), len(texts))

    async def _record(self, text: str, chars: int, model: str, score: float) -> None:
        try:
            vector = (await self._embedder.embed([text]))[0]
            await self._learn([Prompt(vector, chars)], [{model: score}])
        except Exception:
            log.exception("outcome for %s could not be learnt", model)

    async def _learn(self, prompts: list[Prompt], scores: list[dict[str, float]]) -> None:
        vectors, chars = _rows([p.vector for p in prompts]), [p.chars for p in prompts]
        await self._run(self._store.add, vectors, scores, self._clock(), NO_SOURCE, chars)
        self._changed = True

    async def _snapshot(self, path: Path) -> None:
        if not self._changed:
            return
        self._changed = False
        try:
            await self._run(self._store.save, path, embedder=self._embedder.name)
        except OSError as exc:
            self._changed = True
            log.warning("outcome store %s not written: %s", path, exc)

    async def _snapshot_every_interval(self, path: Path) -> None:
        while True:
            await asyncio.sleep(self.config.snapshot_interval_s)
            await self._snapshot(path)


def build_predictor(config: PredictorConfig, shared: Embedder | None) -> QualityPredictor | None:
    """The predictor `config` asks for (None when off), embedding with the cache's local model
    when the cache runs one and the predictor wants it (one model in memory, one worker thread),
    else with its own."""
    if not config.enabled:
        return None
    if config.embedder == "use-tokens":
        return QualityPredictor(config, TokenMeanEmbedder(), owns_embedder=True)
    if isinstance(shared, LocalSentenceEncoder):
        return QualityPredictor(config, shared)
    return QualityPredictor(config, LocalSentenceEncoder(), owns_embedder=True)


def _rows(vectors: list[Vectors]) -> Vectors:
    return np.vstack(vectors).astype(np.float32, copy=False)


def _read_files(paths: list[Path]) -> list[tuple[str, Path, list[Outcome]]]:
    """Each file's content digest and outcomes; ConfigError listing every file's bad lines."""
    read: list[tuple[str, Path, list[Outcome]]] = []
    errors: list[str] = []
    for number, path in enumerate(paths):
        field = f"routing.predictor.outcomes[{number}]"
        try:
            digest, outcomes = read_outcomes(path, field=field)
            read.append((digest, path, outcomes))
        except ConfigError as exc:
            errors.extend(exc.errors)
    if errors:
        raise ConfigError(errors)
    return read
