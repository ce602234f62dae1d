"""The decision's wire form (`_native.encode_route_decision`) against protobuf's own encoder."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from switchpoint import _native
from switchpoint.routing import Decision, Level, ScoredModel
from switchpoint.server.convert import decision_message
from switchpoint.v1 import router_pb2 as pb


def reference(decision: Decision) -> pb.RouteDecision:
    """The message built field by field through protobuf's Python API."""
    chosen = decision.chosen
    cost, latency, quality = decision.weights
    return pb.RouteDecision(
        model=chosen.name,
        candidates=[
            pb.Candidate(
                model=c.name,
                provider=c.provider,
                score=c.score,
                norm_cost=c.norm_cost,
                norm_latency=c.norm_latency,
                quality=c.quality,
                estimated_cost_usd=c.estimated_cost_usd,
                estimated_latency_ms=c.estimated_latency_ms,
                latency_observed=c.latency_observed,
            )
            for c in decision.candidates
        ],
        level=pb.DecisionLevel.ValueType(decision.level),
        reasons=decision.reasons,
        strategy=decision.strategy,
        weights=pb.Weights(cost=cost, latency=latency, quality=quality),
        estimated_cost_usd=chosen.estimated_cost_usd,
        estimated_latency_ms=chosen.estimated_latency_ms,
        estimated_input_tokens=decision.input_tokens,
        estimated_output_tokens=decision.output_tokens,
        task_class=decision.task_class,
        complexity=decision.complexity,
    )


def scored(name: str, **overrides: object) -> ScoredModel:
    values: dict[str, object] = {
        "table_index": 0,
        "name": name,
        "provider": "openai",
        "score": 0.75,
        "norm_cost": 0.0,
        "norm_latency": 1.0,
        "quality": 0.9,
        "estimated_cost_usd": 0.000125,
        "estimated_latency_ms": 812.5,
        "latency_observed": True,
    }
    values.update(overrides)
    return ScoredModel(**values)  # type: ignore[arg-type]


def decision(*candidates: ScoredModel, **overrides: object) -> Decision:
    values: dict[str, object] = {
        "candidates": candidates,
        "level": Level.AUTO,
        "reasons": ("auto: task class chat, complexity 0.10", "chose a: score 0.750"),
        "strategy": "cost-first",
        "weights": (0.7, 0.15, 0.15),
        "input_tokens": 17,
        "output_tokens": 256,
        "task_class": "chat",
        "complexity": 0.1,
    }
    values.update(overrides)
    return Decision(**values)  # type: ignore[arg-type]


def test_the_encoder_reads_the_fields_by_name() -> None:
    d = decision(scored("a"), scored("b", score=0.5))
    # The same values in another order, and not a tuple at all: only the names can match them.
    fields = dict(reversed(d._asdict().items()))
    fields["candidates"] = [
        SimpleNamespace(**dict(reversed(c._asdict().items()))) for c in d.candidates
    ]
    shuffled = SimpleNamespace(**fields)
    assert _native.encode_route_decision(shuffled) == reference(d).SerializeToString()


def test_bytes_equal_protobufs_own_serialization() -> None:
    d = decision(scored("a"), scored("b", provider="anthropic", latency_observed=False, score=0.5))
    encoded = _native.encode_route_decision(d)
    assert encoded == reference(d).SerializeToString()
    message = pb.RouteDecision.FromString(encoded)
    assert message.model == "a"
    assert [c.model for c in message.candidates] == ["a", "b"]
    assert message.candidates[1].provider == "anthropic"
    assert not message.candidates[1].latency_observed
    assert message.level == pb.DECISION_LEVEL_AUTO
    assert list(message.reasons) == list(d.reasons)
    assert message.estimated_output_tokens == 256
    assert message.weights.cost == pytest.approx(0.7)


def test_defaults_zeros_and_unicode_round_trip() -> None:
    d = decision(
        scored("模型-ü", provider="", score=0.0, quality=-0.0, estimated_cost_usd=0.0),
        reasons=(),
        strategy="",
        weights=(0.0, 0.0, 0.0),
        input_tokens=0,
        output_tokens=2**32 - 1,
        task_class="",
        complexity=0.0,
        level=Level.OVERRIDE,
    )
    assert _native.encode_route_decision(d) == reference(d).SerializeToString()
    message = decision_message(d)
    assert message.model == "模型-ü"
    assert message.HasField("weights")
    assert math.copysign(1.0, message.candidates[0].quality) == -1.0


def test_a_value_the_wire_cannot_carry_is_an_error_not_a_wrong_message() -> None:
    with pytest.raises(OverflowError):
        _native.encode_route_decision(decision(scored("a"), input_tokens=2**32))
    with pytest.raises(TypeError):
        _native.encode_route_decision(decision(scored("a"), reasons=["a list"]))
    with pytest.raises(TypeError):
        _native.encode_route_decision(("not", "a", "decision"))


names = st.text(min_size=1, max_size=40)
floats = st.floats(allow_nan=False)


@given(
    st.lists(
        st.tuples(names, st.text(max_size=20), floats, floats, st.booleans()),
        min_size=1,
        max_size=6,
    ),
    st.lists(st.text(max_size=200), max_size=5),
    st.tuples(floats, floats, floats),
    st.integers(0, 2**32 - 1),
    st.sampled_from(list(Level)),
)
def test_any_decision_encodes_as_protobuf_would(
    rows: list[tuple[str, str, float, float, bool]],
    reasons: list[str],
    weights: tuple[float, float, float],
    tokens: int,
    level: Level,
) -> None:
    d = decision(
        *(
            scored(
                name, provider=provider, score=score, estimated_cost_usd=cost, latency_observed=seen
            )
            for name, provider, score, cost, seen in rows
        ),
        reasons=tuple(reasons),
        weights=weights,
        input_tokens=tokens,
        level=level,
    )
    assert _native.encode_route_decision(d) == reference(d).SerializeToString()
