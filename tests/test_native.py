"""Smoke tests of the Rust extension through its Python API (`switchpoint._native`)."""

from __future__ import annotations

import pytest

from switchpoint._native import CoreError, LatencyTracker, ModelSpec, ModelTable, classify

COST_FIRST = (1.0, 0.0, 0.0)
LATENCY_FIRST = (0.0, 1.0, 0.0)
QUALITY_FIRST = (0.0, 0.0, 1.0)


def spec(
    name: str,
    price: float,
    ttft_ms: float,
    quality: float,
    *,
    context_window: int = 100_000,
    capabilities: int = 0,
) -> ModelSpec:
    return ModelSpec(
        name,
        input_per_mtok=price,
        output_per_mtok=price * 4,
        context_window=context_window,
        quality=quality,
        ttft_prior_ms=ttft_ms,
        tpot_prior_ms=10.0,
        capabilities=capabilities,
    )


@pytest.fixture
def table() -> ModelTable:
    """cheap (slow, weak), fast (pricey, strong), mid."""
    models = [
        spec("cheap", 0.1, 900.0, 0.3),
        spec("fast", 10.0, 100.0, 0.9),
        spec("mid", 1.0, 400.0, 0.6),
    ]
    return ModelTable(models, LatencyTracker(), min_samples=3)


@pytest.mark.parametrize(
    ("weights", "expected"),
    [(COST_FIRST, [0, 2, 1]), (LATENCY_FIRST, [1, 2, 0]), (QUALITY_FIRST, [1, 2, 0])],
)
def test_strategies_rank(
    table: ModelTable, weights: tuple[float, float, float], expected: list[int]
) -> None:
    result = table.score(1_000, 200, weights)
    assert result.ranked == expected
    assert result.best() == expected[0]
    assert len(result) == 3
    assert result.excluded() == []


def test_candidates_carry_estimates(table: ModelTable) -> None:
    best, *_ = table.score(1_000, 200, COST_FIRST).candidates()
    assert best.index == 0
    assert best.score == pytest.approx(1.0)
    assert best.estimated_cost_usd == pytest.approx(1_000 * 0.1 / 1e6 + 200 * 0.4 / 1e6)
    assert best.estimated_latency_ms == pytest.approx(900.0 + 200 * 10.0)
    assert best.norm_cost == 0.0
    assert not best.latency_observed


def test_exclusion_reasons() -> None:
    models = [
        spec("small", 0.1, 100.0, 0.5, context_window=500, capabilities=0b11),
        spec("no_tools", 0.1, 100.0, 0.5, capabilities=0b01),
        spec("pricey", 100.0, 100.0, 0.5, capabilities=0b11),
        spec("ok", 0.1, 100.0, 0.5, capabilities=0b11),
    ]
    table = ModelTable(models, LatencyTracker())
    result = table.score(1_000, 200, COST_FIRST, required_capabilities=0b10, max_cost_usd=0.01)
    assert result.ranked == [3]
    assert result.excluded() == [(0, "context_window"), (1, "capabilities"), (2, "max_cost")]
    subset = table.score(1_000, 200, COST_FIRST, candidates=[3, 1, 3])
    assert subset.ranked == [1, 3]
    assert subset.excluded() == []


def test_observed_latency_replaces_priors_after_min_samples() -> None:
    tracker = LatencyTracker()
    table = ModelTable(
        [spec("a", 1.0, 100.0, 0.5), spec("b", 1.0, 200.0, 0.5)], tracker, min_samples=3
    )
    slot = table.slot(0)
    assert slot == tracker.slot("a")
    assert table.score(100, 200, LATENCY_FIRST).ranked == [0, 1]
    for recorded in range(1, 4):
        # "a" turns out slow: 2 s to the first token, then 50 ms per token.
        tracker.record(slot, 2_000.0 + 50.0 * 199, ttft_ms=2_000.0, output_tokens=200)
        result = table.score(100, 200, LATENCY_FIRST)
        observed = {c.index: c.latency_observed for c in result.candidates()}
        assert observed[0] is (recorded >= 3)
    assert result.ranked == [1, 0]
    slow = result.candidates()[1]
    assert slow.estimated_latency_ms == pytest.approx(2_000.0 + 200 * 50.0, rel=0.05)
    p50, p95, p99, count = tracker.percentiles(slot, "tpot")
    assert p50 == pytest.approx(50.0, rel=0.05)
    assert p50 <= p95 <= p99
    assert count == pytest.approx(3.0, rel=1e-3)
    assert tracker.percentiles(tracker.slot("unused"), "ttft") == (0.0, 0.0, 0.0, 0.0)


def test_spec_cost_and_prior_latency_are_the_scorers() -> None:
    spec = ModelSpec(
        "m",
        input_per_mtok=3.0,
        output_per_mtok=15.0,
        context_window=8_000,
        quality=0.5,
        ttft_prior_ms=400.0,
        tpot_prior_ms=20.0,
    )
    table = ModelTable([spec], LatencyTracker(half_life_s=60.0))
    (best,) = table.score(1_000, 200, COST_FIRST).candidates()
    assert spec.cost_usd(1_000, 200) == best.estimated_cost_usd == (1_000 * 3.0 + 200 * 15.0) / 1e6
    assert spec.prior_latency_ms(200) == best.estimated_latency_ms == 400.0 + 200 * 20.0


@pytest.mark.parametrize(
    "weights", [(0.0, 0.0, 0.0), (-1.0, 1.0, 1.0), (float("nan"), 1.0, 1.0), (float("inf"), 0, 0)]
)
def test_bad_weights_raise(table: ModelTable, weights: tuple[float, float, float]) -> None:
    with pytest.raises(CoreError, match=r"^weights: must be finite and >= 0, not all zero"):
        table.score(1_000, 200, weights)


def test_bad_indices_raise(table: ModelTable) -> None:
    with pytest.raises(CoreError, match="candidate index 3 out of range"):
        table.score(1_000, 200, COST_FIRST, candidates=[0, 3])
    with pytest.raises(CoreError, match="candidate index -1 out of range"):
        table.score(1_000, 200, COST_FIRST, candidates=[-1])
    with pytest.raises(CoreError, match="index 7 out of range"):
        table.slot(7)
    with pytest.raises(CoreError, match="index -1 out of range"):
        table.slot(-1)


def test_bad_arguments_raise() -> None:
    tracker = LatencyTracker(half_life_s=60.0)
    with pytest.raises(CoreError, match="unknown"):
        tracker.record(5, 10.0)
    with pytest.raises(CoreError, match=r"^kind:"):
        tracker.percentiles(tracker.slot("a"), "p99")  # type: ignore[arg-type]
    with pytest.raises(CoreError, match=r"^half_life_s:"):
        LatencyTracker(half_life_s=0.0)
    with pytest.raises(CoreError, match=r'^model "m": quality'):
        spec("m", 1.0, 100.0, 1.5)
    with pytest.raises(CoreError, match="listed twice"):
        ModelTable([spec("m", 1.0, 100.0, 0.5), spec("m", 2.0, 100.0, 0.5)], tracker)


def test_model_spec_round_trips() -> None:
    model = spec("m", 2.0, 150.0, 0.75, context_window=32_768, capabilities=0b101)
    assert (model.name, model.input_per_mtok, model.output_per_mtok) == ("m", 2.0, 8.0)
    assert (model.context_window, model.quality, model.capabilities) == (32_768, 0.75, 5)
    assert (model.ttft_prior_ms, model.tpot_prior_ms) == (150.0, 10.0)


def test_large_candidate_sets_score_without_the_gil() -> None:
    # More than 256 candidates takes the path that releases the GIL; the answer must not change.
    models = [spec(f"m{i}", 1.0 + i, 100.0, 0.5) for i in range(300)]
    table = ModelTable(models, LatencyTracker())
    result = table.score(1_000, 200, COST_FIRST)
    assert result.ranked == list(range(300))
    assert table.score(1_000, 200, COST_FIRST, candidates=[299, 5]).ranked == [5, 299]


def test_rows_are_the_candidates_as_tuples(table: ModelTable) -> None:
    result = table.score(1_000, 200, (0.3, 0.3, 0.4))
    fields = (
        "index",
        "score",
        "norm_cost",
        "norm_latency",
        "quality",
        "estimated_cost_usd",
        "estimated_latency_ms",
        "latency_observed",
    )
    expected = [tuple(getattr(c, f) for f in fields) for c in result.candidates()]
    assert result.rows() == expected
    assert [row[0] for row in result.rows()] == result.ranked


@pytest.mark.parametrize(
    ("text", "task_class"),
    [
        ("please refactor this python function", "code"),
        ("solve for x: 3 * x = 12", "math"),
        ("summarise the key points of the memo", "summarize"),
        ("write a haiku about rain", "creative"),
        ("where do otters live", "chat"),
        # Priority order: code is checked before summarize.
        ("summarize this stack trace", "code"),
    ],
)
def test_classify_reads_the_task_class(text: str, task_class: str) -> None:
    assert classify(text, len(text))[0] == task_class


def test_classify_explains_complexity() -> None:
    easy_class, easy, easy_signals = classify("hello, who is the mayor?", 24)
    assert easy_class == "chat"
    assert easy_signals == ["short, simple question"]
    text = "Compare the trade-offs step by step and DESIGN a distributed cache"
    _, hard, hard_signals = classify(text, len(text))
    assert hard_signals == ["asks to compare, design, distributed, step by step, trade-offs"]
    assert hard > easy
    assert 0.0 <= easy <= hard <= 1.0


def test_classify_long_prompts_like_short_ones() -> None:
    # Past 64 KiB the classifier runs without the GIL; the reading must not change.
    text = "lorem ipsum " * 8_000 + "now derive the integral"
    task_class, complexity, signals = classify(text, len(text))
    assert task_class == "math"
    assert signals[0] == f"{len(text)} characters"
    assert "asks to derive" in signals
    assert complexity == pytest.approx(0.3 + 0.35 + 0.15 + 0.1)
