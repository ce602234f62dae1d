"""Smoke tests of the Rust extension through its Python API (`switchpoint._native`). Scoring and
the classifier are tested in the core (rust/core) and through the router (test_route_*.py)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from switchpoint import _native
from switchpoint._native import CoreError, LatencyTracker, ModelSpec, ModelTable, capability_bits
from switchpoint.config import parse_config
from switchpoint.engine.building import build_engine
from switchpoint.errors import ConfigError, QuotaExceededError
from tests.sidecar_harness import routing_config


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


def test_the_tracker_reads_back_what_the_table_slots_record() -> None:
    tracker = LatencyTracker()
    table = ModelTable(
        [spec("a", 1.0, 100.0, 0.5), spec("b", 1.0, 200.0, 0.5)], tracker, min_samples=3
    )
    slot = table.slot(0)
    assert slot == tracker.slot("a")
    for _ in range(3):
        # "a" turns out slow: 2 s to the first token, then 50 ms per token.
        tracker.record(slot, 2_000.0 + 50.0 * 199, ttft_ms=2_000.0, output_tokens=200)
    seen = tracker.percentiles(slot, "tpot")
    p50, p95, p99, count = seen.p50_ms, seen.p95_ms, seen.p99_ms, seen.samples
    assert p50 == pytest.approx(50.0, rel=0.05)
    assert p50 <= p95 <= p99
    assert count == pytest.approx(3.0, rel=1e-3)
    unused = tracker.percentiles(tracker.slot("unused"), "ttft")
    assert (unused.p50_ms, unused.p95_ms, unused.p99_ms, unused.samples) == (0.0, 0.0, 0.0, 0.0)


def test_spec_cost_and_prior_latency_follow_the_formulas() -> None:
    spec = ModelSpec(
        "m",
        input_per_mtok=3.0,
        output_per_mtok=15.0,
        context_window=8_000,
        quality=0.5,
        ttft_prior_ms=400.0,
        tpot_prior_ms=20.0,
    )
    assert spec.cost_usd(1_000, 200) == (1_000 * 3.0 + 200 * 15.0) / 1e6
    assert spec.prior_latency_ms(200) == 400.0 + 200 * 20.0


def test_bad_indices_raise(table: ModelTable) -> None:
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


def test_capability_bits_come_from_the_core() -> None:
    names, masks = capability_bits([["vision", "chat"], [], ["code", "chat"]])
    assert (names, masks) == (["chat", "code", "vision"], [0b101, 0, 0b011])
    raw = routing_config()
    raw["models"][0]["capabilities"] = [f"c{i:02}" for i in range(65)]
    with pytest.raises(ConfigError, match="models: at most 64 distinct capabilities"):
        build_engine(parse_config(raw), environ={})
    raw["models"][0]["capabilities"] = [f"c{i:02}" for i in range(62)]
    registry = build_engine(parse_config(raw), environ={}).engine.registry
    assert registry.capability_names == sorted({"chat", "code", *(f"c{i:02}" for i in range(62))})


@given(st.floats(min_value=0.0, max_value=1e15, allow_nan=False))
def test_retry_waits_are_worded_with_three_significant_digits(seconds: float) -> None:
    # The core words every quota refusal; it writes numbers as Python's ".3g" would.
    assert _native.retry_wait(seconds) == f"retry after {seconds:.3g}s"


def test_quota_refusals_are_worded_once() -> None:
    assert str(QuotaExceededError("budget", "b", 3600.0)) == (
        "budget 'b' is exhausted; retry after 3.6e+03s"
    )
    assert (
        str(QuotaExceededError("rpm", "r", math.inf))
        == "rate limit (rpm) 'r' is exhausted; no retry"
    )
