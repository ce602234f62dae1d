"""`use-tokens`, the predictor's fast embedder: unit rows, the same row for the same text however it
is batched, similar prompts nearer than unrelated ones, and the predictor in the sidecar with it."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from switchpoint.routing.predictor.tokens_embedder import TokenMeanEmbedder
from switchpoint.v1 import router_pb2 as pb
from tests.sidecar_harness import running_sidecar
from tests.test_predictor_rpc import (
    KEYS,
    PROBE,
    UNRELATED,
    candidate,
    predictor_config,
    quality_first,
    teach_cheap_is_enough,
)


@pytest.fixture(scope="module")
def embedder() -> Iterator[TokenMeanEmbedder]:
    tokens = TokenMeanEmbedder()
    try:
        yield tokens
    finally:
        tokens.close()


async def test_rows_are_unit_and_do_not_depend_on_the_batch(embedder: TokenMeanEmbedder) -> None:
    texts = ["What is the capital of France?", "東京の天気は?", "", "x" * 601]
    rows = await embedder.embed(texts)
    assert rows.shape == (4, 512)
    assert rows.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, rtol=1e-5)
    alone = await embedder.embed([texts[1]])
    np.testing.assert_allclose(alone[0], rows[1], atol=1e-6)


async def test_similar_prompts_are_nearer_than_unrelated_ones(embedder: TokenMeanEmbedder) -> None:
    capital, other_capital, code = await embedder.embed(
        [
            "What is the capital of France?",
            "What is the capital city of Portugal?",
            "Write a recursive Fibonacci function in Rust.",
        ]
    )
    assert float(capital @ other_capital) > float(capital @ code) + 0.1


async def test_the_predictor_learns_from_feedback_with_it() -> None:
    async with running_sidecar(predictor_config(embedder="use-tokens"), KEYS) as running:
        stub = running.stub
        assert (await stub.Route(quality_first(PROBE))).model == "strong"
        await teach_cheap_is_enough(stub)
        after = await stub.Route(quality_first(PROBE))
        assert after.model == "cheap"
        assert candidate(after, "cheap").quality_source == pb.QUALITY_SOURCE_PREDICTED
        unrelated = await stub.Route(quality_first(UNRELATED))
        assert unrelated.model == "strong"
