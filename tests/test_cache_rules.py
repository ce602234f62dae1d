"""The default semantic rule in the store, with the default embedder (USE and the paraphrase
projection) and real FAISS; and the evaluation (benches/cache_rules.py) deciding as the store
does."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import numpy as np
import pytest

from benches.cache_rules import PARAPHRASES, paraphrase_set, search, served, with_guard
from switchpoint.cache.config import CacheConfig, SemanticConfig
from switchpoint.cache.embedders import LocalSentenceEncoder, create_embedder
from switchpoint.cache.store import ResponseCache
from tests.support.cache_support import answer, ask

CANCEL = "How do I cancel my subscription?"
CANCEL_COPY = "how do I cancel my subscription?"  # another exact key, cosine 0.98
PAUSE = "How do I pause my subscription?"  # a near miss of CANCEL: cosine 0.74
CANCEL_PARAPHRASE = "What are the steps to cancel my subscription?"  # 0.90 / 0.66
BETWEEN = "I want to stop my subscription for a couple of months, how?"  # 0.75 / 0.71


@pytest.fixture(scope="module")
def embedder() -> Iterator[LocalSentenceEncoder]:
    encoder = create_embedder("local")
    assert isinstance(encoder, LocalSentenceEncoder)
    yield encoder
    encoder.close()


def default_config(**semantic: float) -> CacheConfig:
    return CacheConfig(enabled=True, semantic=SemanticConfig(**semantic))


@pytest.fixture
async def cache(embedder: LocalSentenceEncoder) -> AsyncIterator[ResponseCache]:
    response_cache = ResponseCache(default_config(), embedder)
    yield response_cache
    await response_cache.close()


def test_the_default_embedder_names_its_projection(embedder: LocalSentenceEncoder) -> None:
    assert embedder.name == "use-multilingual-v3+paraphrase-1"
    assert embedder.dim == 512
    assert create_embedder("local", projection="none").name == "use-multilingual-v3"


async def test_a_paraphrase_is_served_when_it_stands_out_from_a_near_miss(
    cache: ResponseCache,
) -> None:
    await cache.store(ask(CANCEL), answer("Settings > Billing > Cancel."))
    await cache.store(ask(PAUSE), answer("Settings > Billing > Pause."))

    hit = await cache.lookup(ask(CANCEL_PARAPHRASE))

    assert hit is not None
    assert hit.content == "Settings > Billing > Cancel."


async def test_a_question_between_two_cached_ones_is_a_miss_and_counted(
    cache: ResponseCache,
) -> None:
    await cache.store(ask(CANCEL), answer("Settings > Billing > Cancel."))
    await cache.store(ask(PAUSE), answer("Settings > Billing > Pause."))

    assert await cache.lookup(ask(BETWEEN)) is None
    stats = cache.stats()
    assert (stats.ambiguous_rejections, stats.misses) == (1, 1)


async def test_a_stored_copy_of_a_question_does_not_block_it(
    embedder: LocalSentenceEncoder,
) -> None:
    copies_allowed = ResponseCache(default_config(), embedder)
    copies_compete = ResponseCache(default_config(same_question=1.0), embedder)
    try:
        for cache in (copies_allowed, copies_compete):
            await cache.store(ask(CANCEL), answer("Cancel it in Settings."))
            await cache.store(ask(CANCEL_COPY), answer("Cancel it in Settings."))
            await cache.store(ask(PAUSE), answer("Pause it in Settings."))

        hit = await copies_allowed.lookup(ask(CANCEL_PARAPHRASE))
        assert hit is not None
        assert hit.content == "Cancel it in Settings."
        assert await copies_compete.lookup(ask(CANCEL_PARAPHRASE)) is None
    finally:
        await copies_allowed.close()
        await copies_compete.close()


async def test_the_evaluation_serves_what_the_store_serves(embedder: LocalSentenceEncoder) -> None:
    lookups = paraphrase_set("report-en", [PARAPHRASES / "report" / "en.jsonl"])
    head = 90  # whole groups of near misses: the file keeps a group's lines together
    questions, queries = lookups.questions[:head], lookups.queries[:head]
    config = SemanticConfig()
    question_rows = await embedder.embed(questions)
    query_rows = await embedder.embed(queries)
    everything = np.arange(head)
    searched = search(
        lookups,
        query_rows,
        question_rows,
        everything,
        everything,
        k=config.candidates,
        same=config.same_question,
    )
    with_guard(lookups, searched, everything, config.threshold)
    expected = served(searched, config.threshold, config.margin, guard=True)

    cache = ResponseCache(default_config(), embedder)
    try:
        for number, question in enumerate(questions):
            await cache.store(ask(question), answer(f"answer {number}"))
        got = []
        for query in queries:
            hit = await cache.lookup(ask(query))
            got.append(-1 if hit is None else int(hit.content.split()[1]))
    finally:
        await cache.close()

    want = [
        -1 if position < 0 else int(searched.found[row, position])
        for row, position in enumerate(expected)
    ]
    assert got == want
    # The slice exercises both outcomes: hits on the right question, and misses.
    assert sum(1 for row, g in enumerate(got) if g == row) > 20
    assert got.count(-1) > 20
