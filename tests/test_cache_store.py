"""The response cache's lookup rules, with real FAISS and the real sentence encoder."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from redis.asyncio import Redis

from switchpoint.cache.config import SemanticConfig
from switchpoint.cache.embedders import LocalSentenceEncoder
from switchpoint.cache.keys import tenant_tag
from switchpoint.cache.records import CacheControls, CacheParams
from switchpoint.cache.redis_exact import RedisExactLayer
from switchpoint.cache.store import ResponseCache
from tests.redis_server import RedisServer
from tests.support.cache_support import (
    CHEAP,
    STRONG,
    TEST_THRESHOLD,
    FakeClock,
    answer,
    ask,
    cache_config,
    qqp_pairs,
)

PYTHON_Q = "How do I reverse a list in Python?"
PYTHON_PARAPHRASE = "How can I reverse a Python list?"  # cosine 0.97 with PYTHON_Q
UNRELATED = "What is the best recipe for chocolate cake?"


@pytest.fixture(scope="module")
def embedder() -> Iterator[LocalSentenceEncoder]:
    encoder = LocalSentenceEncoder()
    yield encoder
    encoder.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def cache(embedder: LocalSentenceEncoder, clock: FakeClock) -> AsyncIterator[ResponseCache]:
    response_cache = ResponseCache(cache_config(), embedder, clock=clock)
    yield response_cache
    await response_cache.close()


async def test_exact_hit_ignores_trailing_whitespace_and_line_endings(
    cache: ResponseCache, clock: FakeClock
) -> None:
    assert await cache.lookup(ask("Write a haiku\r\nabout rain.  ")) is None
    assert await cache.store(ask("Write a haiku\r\nabout rain.  "), answer("Drops on tin roofs"))
    clock.advance(5)

    hit = await cache.lookup(ask("  Write a haiku\nabout rain."))

    assert hit is not None
    assert (hit.kind, hit.layer, hit.similarity, hit.age_s) == ("exact", "local", 1.0, 5.0)
    assert (hit.content, hit.model, hit.finish_reason) == ("Drops on tin roofs", STRONG[0], "stop")
    assert (hit.input_tokens_saved, hit.output_tokens_saved, hit.cost_saved_usd) == (12, 34, 0.0021)
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.hits_by_kind) == (1, 1, {"exact": 1})


async def test_semantic_hit_for_a_paraphrase_and_miss_for_an_unrelated_question(
    cache: ResponseCache,
) -> None:
    await cache.store(ask(PYTHON_Q), answer("Use reversed() or list.reverse()."))

    hit = await cache.lookup(ask(PYTHON_PARAPHRASE))

    assert hit is not None
    assert hit.kind == "semantic"
    assert 0.9 < hit.similarity < 1.0
    assert hit.content == "Use reversed() or list.reverse()."
    assert await cache.lookup(ask(UNRELATED)) is None
    assert cache.stats().hits_by_kind == {"semantic": 1}


async def test_guard_refuses_a_neighbour_with_another_number(
    embedder: LocalSentenceEncoder, clock: FakeClock
) -> None:
    stored, asked = (
        "What was the population of France in 2019?",
        "What was the population of France in 2021?",  # cosine 0.90 with the stored one
    )
    guarded = ResponseCache(cache_config(), embedder, clock=clock)
    unguarded = ResponseCache(
        cache_config(semantic=SemanticConfig(threshold=0.85, guard=False)), embedder, clock=clock
    )
    try:
        for cache in (guarded, unguarded):
            await cache.store(ask(stored), answer("67.2 million"))

        assert await guarded.lookup(ask(asked)) is None
        assert guarded.stats().guard_rejections == 1
        assert await unguarded.lookup(ask(asked)) is not None
    finally:
        await guarded.close()
        await unguarded.close()


async def test_tenants_never_see_each_others_entries(cache: ResponseCache) -> None:
    await cache.store(ask(PYTHON_Q, tenant="a"), answer("tenant a's answer"))

    assert await cache.lookup(ask(PYTHON_Q, tenant="b")) is None
    assert await cache.lookup(ask(PYTHON_PARAPHRASE, tenant="b")) is None
    assert await cache.lookup(ask(PYTHON_Q, tenant="a")) is not None


async def test_temperature_above_the_bound_and_tools_bypass(cache: ResponseCache) -> None:
    hot = CacheParams(temperature=0.9)
    assert not await cache.store(ask(PYTHON_Q, params=hot), answer("creative"))
    assert not await cache.store(ask(PYTHON_Q, params=CacheParams(tools=True)), answer("call"))
    assert cache.stats().entries == 0

    await cache.store(ask(PYTHON_Q, params=CacheParams(temperature=0.2)), answer("stored"))

    assert await cache.lookup(ask(PYTHON_Q, params=hot)) is None
    assert await cache.lookup(ask(PYTHON_Q, params=CacheParams(tools=True))) is None
    # Every temperature up to the bound counts as the same request.
    assert await cache.lookup(ask(PYTHON_Q, params=CacheParams(temperature=0.0))) is not None
    assert cache.stats().bypassed == {"temperature": 1, "tools": 1}  # lookups are counted


async def test_answer_changing_parameters_are_separate_partitions(cache: ResponseCache) -> None:
    short = CacheParams(max_tokens=16, stop=("\n",))
    await cache.store(ask(PYTHON_Q, params=short), answer("reversed()"))

    assert await cache.lookup(ask(PYTHON_Q)) is None
    assert await cache.lookup(ask(PYTHON_PARAPHRASE, params=CacheParams(max_tokens=16))) is None
    hit = await cache.lookup(ask(PYTHON_PARAPHRASE, params=short))
    assert hit is not None
    assert hit.kind == "semantic"


async def test_a_system_prompt_is_part_of_the_scope(cache: ResponseCache) -> None:
    pirate = (("system", "Answer like a pirate."),)
    await cache.store(ask(PYTHON_Q, history=pirate), answer("Arr, reversed() it be"))

    assert await cache.lookup(ask(PYTHON_Q)) is None
    assert await cache.lookup(ask(PYTHON_Q, history=(("system", "Be terse."),))) is None
    assert await cache.lookup(ask(PYTHON_PARAPHRASE, history=pirate)) is not None


async def test_response_format_matches_only_exactly(cache: ResponseCache) -> None:
    as_json = CacheParams(response_format="json_object")
    await cache.store(ask(PYTHON_Q, params=as_json), answer('{"how": "reversed()"}'))

    assert await cache.lookup(ask(PYTHON_PARAPHRASE, params=as_json)) is None
    assert await cache.lookup(ask(PYTHON_Q)) is None
    hit = await cache.lookup(ask(PYTHON_Q, params=as_json))
    assert hit is not None
    assert hit.kind == "exact"


async def test_quality_band_serves_equal_or_stronger_answers_only(cache: ResponseCache) -> None:
    await cache.store(ask("cheap question", model=CHEAP), answer("cheap answer", model=CHEAP))
    await cache.store(ask("strong question", model=STRONG), answer("strong answer", model=STRONG))

    assert await cache.lookup(ask("cheap question", model=STRONG)) is None
    assert await cache.lookup(ask("cheap question", model=CHEAP)) is not None
    hit = await cache.lookup(ask("strong question", model=CHEAP))
    assert hit is not None
    assert hit.model == STRONG[0]


async def test_the_class_is_the_answering_model(cache: ResponseCache) -> None:
    # Routed to the strong model, answered by the cheap one after a fallback.
    await cache.store(ask(PYTHON_Q, model=STRONG), answer("fallback answer", model=CHEAP))

    assert await cache.lookup(ask(PYTHON_Q, model=STRONG)) is None
    assert await cache.lookup(ask(PYTHON_Q, model=CHEAP)) is not None


@pytest.mark.parametrize(("scope", "served_to_other_model"), [("model", False), ("none", True)])
async def test_model_and_none_scopes(
    embedder: LocalSentenceEncoder, scope: str, served_to_other_model: bool
) -> None:
    cache = ResponseCache(cache_config(model_class_scope=scope), embedder)
    try:
        await cache.store(ask(PYTHON_Q, model=STRONG), answer("strong answer", model=STRONG))
        same_quality_other_model = ("other-strong-model", STRONG[1])
        hit = await cache.lookup(ask(PYTHON_Q, model=same_quality_other_model))
        assert (hit is not None) == served_to_other_model
        assert await cache.lookup(ask(PYTHON_Q, model=STRONG)) is not None
    finally:
        await cache.close()


async def test_the_key_covers_the_conversation(
    cache: ResponseCache, embedder: LocalSentenceEncoder
) -> None:
    paris = (("user", "Tell me about Paris."), ("assistant", "Paris is the capital of France."))
    london = (("user", "Tell me about London."), ("assistant", "London is England's capital."))
    await cache.store(ask("What is its population?", history=paris), answer("2.1 million"))

    assert await cache.lookup(ask("What is its population?", history=london)) is None
    assert await cache.lookup(ask("What is its population?", history=paris)) is not None

    last_only = ResponseCache(cache_config(conversation_window=1), embedder)
    try:
        await last_only.store(ask("What is its population?", history=paris), answer("2.1M"))
        assert await last_only.lookup(ask("What is its population?", history=london)) is not None
    finally:
        await last_only.close()


async def test_entries_expire_after_their_ttl(
    embedder: LocalSentenceEncoder, clock: FakeClock
) -> None:
    cache = ResponseCache(cache_config(ttl_s=60), embedder, clock=clock)
    try:
        await cache.store(ask(PYTHON_Q), answer("a"))
        await cache.store(ask(UNRELATED), answer("b"), ttl_s=600)
        clock.advance(59)
        assert await cache.lookup(ask(PYTHON_Q)) is not None
        clock.advance(2)

        assert await cache.lookup(ask(PYTHON_Q)) is None
        assert await cache.lookup(ask(PYTHON_PARAPHRASE)) is None
        assert await cache.lookup(ask(UNRELATED)) is not None
        assert await cache.sweep_expired() == 0  # already dropped when read
        clock.advance(600)
        assert await cache.sweep_expired() == 1
        stats = cache.stats()
        assert (stats.entries, stats.vectors, stats.expired) == (0, 0, 2)
    finally:
        await cache.close()


async def test_capacity_evicts_the_least_recently_used(embedder: LocalSentenceEncoder) -> None:
    cache = ResponseCache(cache_config(max_entries=3), embedder)
    try:
        for number in ("one", "two", "three"):
            await cache.store(ask(f"exact {number}", controls=CacheControls()), answer(number))
        assert await cache.lookup(ask("exact one")) is not None  # "two" is now the oldest
        await cache.store(ask("exact four"), answer("four"))

        assert (
            await cache.lookup(ask("exact two", controls=CacheControls(no_semantic=True))) is None
        )
        for number in ("one", "three", "four"):
            assert await cache.lookup(ask(f"exact {number}")) is not None
        stats = cache.stats()
        assert (stats.entries, stats.vectors, stats.evictions) == (3, 3, 1)
    finally:
        await cache.close()


async def test_a_new_answer_replaces_the_old_one(cache: ResponseCache) -> None:
    await cache.store(ask(PYTHON_Q), answer("old"))
    await cache.store(ask(PYTHON_Q), answer("new"))

    hit = await cache.lookup(ask(PYTHON_PARAPHRASE))
    assert hit is not None
    assert hit.content == "new"
    assert (cache.stats().entries, cache.stats().vectors) == (1, 1)


async def test_only_complete_answers_are_stored(cache: ResponseCache) -> None:
    assert not await cache.store(ask(PYTHON_Q), answer("cut off", finish_reason="length"))
    assert not await cache.store(ask(PYTHON_Q), answer(""))
    assert cache.stats().entries == 0


async def test_per_request_controls(cache: ResponseCache) -> None:
    await cache.store(ask(PYTHON_Q), answer("stored"))

    assert await cache.lookup(ask(PYTHON_Q, controls=CacheControls(bypass=True))) is None
    assert not await cache.store(ask(UNRELATED, controls=CacheControls(bypass=True)), answer("x"))
    assert (
        await cache.lookup(ask(PYTHON_PARAPHRASE, controls=CacheControls(no_semantic=True))) is None
    )
    assert await cache.lookup(ask(PYTHON_Q, controls=CacheControls(no_semantic=True))) is not None
    strict = CacheControls(threshold=0.99)
    assert await cache.lookup(ask(PYTHON_PARAPHRASE, controls=strict)) is None
    assert await cache.lookup(ask(PYTHON_PARAPHRASE, controls=CacheControls(threshold=0.9)))


async def test_delete_tenant(cache: ResponseCache) -> None:
    await cache.store(ask(PYTHON_Q, tenant="a"), answer("a1"))
    await cache.store(ask(UNRELATED, tenant="a"), answer("a2"))
    await cache.store(ask(PYTHON_Q, tenant="b"), answer("b1"))

    assert await cache.delete_tenant("a") == 2

    assert await cache.lookup(ask(PYTHON_Q, tenant="a")) is None
    assert await cache.lookup(ask(PYTHON_PARAPHRASE, tenant="a")) is None
    assert await cache.lookup(ask(PYTHON_Q, tenant="b")) is not None
    stats = cache.stats()
    assert (stats.entries, stats.vectors, stats.partitions) == (1, 1, 1)


async def test_hnsw_migration_still_finds_neighbours(embedder: LocalSentenceEncoder) -> None:
    cache = ResponseCache(
        cache_config(hnsw_above=50, semantic=SemanticConfig(guard=False, threshold=TEST_THRESHOLD)),
        embedder,
    )
    origins = [origin for origin, _ in qqp_pairs(120)]
    try:
        for number, origin in enumerate(origins):
            await cache.store(ask(origin), answer(f"answer {number}"))
        flat_hits = [await cache.lookup(ask(f"{origin} Please.")) for origin in origins[:40]]
        await cache.wait_for_rebuilds()
        assert cache.stats().hnsw_partitions == 1

        for number, origin in enumerate(origins[:40]):
            hit = await cache.lookup(ask(f"{origin} Please."))
            flat_hit = flat_hits[number]
            assert (hit is None) == (flat_hit is None)
            if hit is not None and flat_hit is not None:
                assert hit.content == flat_hit.content
        assert sum(hit is not None for hit in flat_hits) >= 30

        # Deletions in the graph are tombstones: a deleted entry is never served.
        for origin in origins[:10]:
            await cache.store(ask(origin), answer("replaced"))
        hit = await cache.lookup(ask(origins[0], controls=CacheControls(no_semantic=False)))
        assert hit is not None
        assert hit.content == "replaced"
        assert cache.stats().vectors == len(origins)
    finally:
        await cache.close()


async def test_redis_exact_layer_is_shared_by_replicas(
    embedder: LocalSentenceEncoder, redis_server: RedisServer, clock: FakeClock
) -> None:
    # One client decodes replies and one does not: the layer must read both.
    clients = [
        Redis.from_url(redis_server.url, decode_responses=decode) for decode in (True, False)
    ]
    config = cache_config(redis_exact={"enabled": True, "ttl_s": 120})
    replicas = [
        ResponseCache(
            config,
            embedder,
            clock=clock,
            redis=RedisExactLayer(client, key_prefix="sp:test", ttl_s=120),
        )
        for client in clients
    ]
    try:
        await replicas[0].store(ask(PYTHON_Q, tenant="a"), answer("shared answer"))
        await replicas[0].store(ask(UNRELATED, tenant="a", model=CHEAP), answer("c", model=CHEAP))
        clock.advance(3)

        hit = await replicas[1].lookup(ask(PYTHON_Q, tenant="a"))
        assert hit is not None
        assert (hit.content, hit.kind, hit.layer, hit.age_s) == (
            "shared answer",
            "exact",
            "redis",
            3.0,
        )
        assert await replicas[1].lookup(ask(PYTHON_Q, tenant="b")) is None
        assert await replicas[1].lookup(ask(UNRELATED, tenant="a", model=STRONG)) is None
        assert await replicas[1].lookup(ask(UNRELATED, tenant="a", model=CHEAP)) is not None
        assert replicas[1].stats().hits_by_kind == {"redis": 2}
        keys = [str(key) for key in await clients[0].keys("sp:test:*")]  # decoded by clients[0]
        assert len(keys) == 2
        assert all(key.startswith(f"sp:test:{tenant_tag('a')}:") for key in keys)
        ttls = [await clients[0].ttl(key) for key in keys]
        assert all(0 < ttl <= 120 for ttl in ttls)

        # Replica 1 holds nothing locally: both deletions happen in Redis.
        assert await replicas[1].delete_tenant("a") == 2
        assert await replicas[1].lookup(ask(PYTHON_Q, tenant="a")) is None
        assert await clients[0].keys("sp:test:*") == []
    finally:
        for replica in replicas:
            await replica.close()
        for client in clients:
            await client.aclose()
