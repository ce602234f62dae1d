"""The decision's wire form (`Decision.encode`) against protobuf's own encoder."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from switchpoint.config import parse_config
from switchpoint.engine.building import build_engine
from switchpoint.engine.path import Engine
from switchpoint.errors import NoEligibleModelError, PolicyDeniedError
from switchpoint.routing import Decision, Level, ScoredModel
from switchpoint.server import convert
from switchpoint.server.convert import decision_message
from switchpoint.v1 import router_pb2 as pb
from tests.sidecar_harness import routing_config, user


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
                quality_source=(
                    pb.QUALITY_SOURCE_PREDICTED if c.predicted else pb.QUALITY_SOURCE_PRIOR
                ),
                quality_evidence=c.predicted.evidence if c.predicted else 0.0,
                quality_similar=c.predicted.similar if c.predicted else 0,
            )
            for c in decision.candidates
        ],
        level=pb.DecisionLevel.ValueType(decision.level.value),
        reasons=decision.reasons,
        strategy=decision.strategy,
        weights=pb.Weights(cost=cost, latency=latency, quality=quality),
        estimated_cost_usd=chosen.estimated_cost_usd,
        estimated_latency_ms=chosen.estimated_latency_ms,
        estimated_input_tokens=min(decision.input_tokens, 2**32 - 1),
        estimated_output_tokens=min(decision.output_tokens, 2**32 - 1),
        task_class=decision.task_class,
        complexity=decision.complexity,
        request_id=decision.request_id,
        choice_probability=decision.choice_probability,
    )


NOW = 1_706_745_600.0


@pytest.fixture(scope="module")
def engine() -> Engine:
    return build_engine(parse_config(routing_config()), environ={}).engine


def decide(engine: Engine, prompt: str, **routing: Any) -> Decision:
    request = pb.ChatRequest(messages=user(prompt), routing=pb.RoutingOptions(**routing))
    return engine.router.decide(convert.chat_input(request), now=NOW)


def test_bytes_equal_protobufs_own_serialization(engine: Engine) -> None:
    d = decide(engine, "hello there", models=["cheap", "strong"])
    encoded = d.encode()
    assert encoded == reference(d).SerializeToString()
    message = pb.RouteDecision.FromString(encoded)
    assert message.model == d.chosen.name
    assert [c.model for c in message.candidates] == [c.name for c in d.candidates]
    assert message.level == pb.DECISION_LEVEL_OVERRIDE
    assert list(message.reasons) == list(d.reasons)
    assert decision_message(d) == message


def test_the_decision_reads_by_name(engine: Engine) -> None:
    d = decide(engine, "fix this python bug")
    assert d.level == Level.AUTO
    assert d.level.name == "AUTO"
    assert d.chosen.name == d.candidates[0].name
    assert d.candidates[0].table_index == engine.registry.index_of(d.chosen.name)
    assert d.task_class == "code"
    assert isinstance(d.candidates[0], ScoredModel)


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    prompt=st.text(min_size=1, max_size=200).filter(str.strip),
    models=st.lists(st.sampled_from(["cheap", "fast", "strong", "tiny"]), max_size=3, unique=True),
    stage=st.sampled_from(["", "architecture"]),
    max_tokens=st.one_of(st.none(), st.integers(1, 2**32 - 1)),
)
def test_any_decision_encodes_as_protobuf_would(
    engine: Engine, prompt: str, models: list[str], stage: str, max_tokens: int | None
) -> None:
    request = pb.ChatRequest(
        messages=user(prompt), routing=pb.RoutingOptions(models=models, stage=stage)
    )
    if max_tokens is not None:
        request.params.max_tokens = max_tokens
    try:
        d = engine.router.decide(convert.chat_input(request), now=NOW)
    except (PolicyDeniedError, NoEligibleModelError):
        return  # a model outside the stage, or none fits: nothing to encode
    assert d.encode() == reference(d).SerializeToString()
