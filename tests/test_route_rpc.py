"""Route decisions over real gRPC: each level, each strategy, the ranking, and bad input."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from switchpoint.v1 import router_pb2 as pb
from tests.sidecar_harness import RunningSidecar, routing_config, running_sidecar, user


@pytest.fixture
async def sidecar() -> AsyncIterator[RunningSidecar]:
    async with running_sidecar(routing_config()) as running:
        yield running


def _request(text: str = "hello there", **routing: Any) -> pb.RouteRequest:
    params = {}
    if "max_tokens" in routing:
        params["max_tokens"] = routing.pop("max_tokens")
    return pb.RouteRequest(
        messages=user(text),
        routing=pb.RoutingOptions(**routing),
        params=pb.GenerationParams(**params),
    )


async def _route(sidecar: RunningSidecar, request: pb.RouteRequest) -> pb.RouteDecision:
    return await sidecar.stub.Route(request)


async def _route_error(
    sidecar: RunningSidecar, request: pb.RouteRequest
) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await sidecar.stub.Route(request)
    return caught.value.code(), caught.value.details() or ""


# -- strategies ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("strategy", "expected_first"),
    [("cost-first", "tiny"), ("latency-first", "fast"), ("quality-first", "strong")],
)
async def test_builtin_strategies_rank_as_their_weights_say(
    sidecar: RunningSidecar, strategy: str, expected_first: str
) -> None:
    decision = await _route(sidecar, _request(strategy=strategy))
    assert decision.level == pb.DECISION_LEVEL_AUTO
    assert decision.strategy == strategy
    assert decision.model == expected_first
    scores = [c.score for c in decision.candidates]
    assert scores == sorted(scores, reverse=True)
    assert {c.model for c in decision.candidates} == {"cheap", "fast", "strong", "tiny"}


async def test_cost_only_orders_by_price_and_excludes_what_does_not_fit(
    sidecar: RunningSidecar,
) -> None:
    # 2000 output tokens do not fit tiny's 1024-token window, so it must drop out with a reason.
    weights = pb.Weights(cost=1, latency=0, quality=0)
    decision = await _route(sidecar, _request(weights=weights, max_tokens=2000))
    assert [c.model for c in decision.candidates] == ["cheap", "fast", "strong"]
    assert "tiny" not in [c.model for c in decision.candidates]
    assert any(r.startswith("tiny excluded: context window 1024") for r in decision.reasons)
    costs = {c.model: c.estimated_cost_usd for c in decision.candidates}
    assert costs["cheap"] < costs["fast"] < costs["strong"]
    cheap = decision.candidates[0]
    assert cheap.norm_cost == 0.0
    assert decision.candidates[-1].model == "strong"
    assert decision.candidates[-1].norm_cost == 1.0


async def test_custom_weights_win_over_strategy(sidecar: RunningSidecar) -> None:
    decision = await _route(
        sidecar,
        _request(strategy="cost-first", weights=pb.Weights(cost=0, latency=0, quality=1)),
    )
    assert decision.strategy == "custom"
    assert decision.model == "strong"
    assert decision.weights.quality == pytest.approx(1.0)


async def test_configured_strategy_by_name(sidecar: RunningSidecar) -> None:
    decision = await _route(sidecar, _request(strategy="thrifty"))
    assert decision.strategy == "thrifty"
    assert (decision.weights.cost, decision.weights.latency) == (0.6, 0.2)


async def test_score_parts_are_reported_and_consistent(sidecar: RunningSidecar) -> None:
    decision = await _route(sidecar, _request(strategy="balanced", max_tokens=100))
    w = decision.weights
    total = w.cost + w.latency + w.quality
    for c in decision.candidates:
        expected = (
            w.cost * (1 - c.norm_cost) + w.latency * (1 - c.norm_latency) + w.quality * c.quality
        ) / total
        assert c.score == pytest.approx(expected)
        assert 0.0 <= c.norm_cost <= 1.0
        assert 0.0 <= c.norm_latency <= 1.0
        assert not c.latency_observed
    strong = next(c for c in decision.candidates if c.model == "strong")
    # 100 output tokens at the prior: 800 ms TTFT + 100 x 25 ms.
    assert strong.estimated_latency_ms == pytest.approx(800 + 100 * 25)
    assert decision.estimated_output_tokens == 100
    assert decision.estimated_input_tokens > 0


# -- levels -------------------------------------------------------------------------------------


async def test_override_single_model(sidecar: RunningSidecar) -> None:
    decision = await _route(sidecar, _request(models=["strong"], strategy="cost-first"))
    assert decision.level == pb.DECISION_LEVEL_OVERRIDE
    assert [c.model for c in decision.candidates] == ["strong"]
    assert decision.reasons[0] == "override: the request named strong"


async def test_override_list_is_ranked_by_strategy(sidecar: RunningSidecar) -> None:
    decision = await _route(
        sidecar, _request(models=["strong", "cheap", "strong"], strategy="cost-first")
    )
    assert decision.level == pb.DECISION_LEVEL_OVERRIDE
    assert [c.model for c in decision.candidates] == ["cheap", "strong"]


async def test_stage_uses_its_models_and_strategy(sidecar: RunningSidecar) -> None:
    decision = await _route(sidecar, _request(stage="architecture"))
    assert decision.level == pb.DECISION_LEVEL_STAGE
    assert decision.strategy == "quality-first"
    assert [c.model for c in decision.candidates] == ["strong", "fast"]


async def test_stage_strategy_yields_to_the_request(sidecar: RunningSidecar) -> None:
    decision = await _route(sidecar, _request(stage="architecture", strategy="cost-first"))
    assert decision.strategy == "cost-first"
    assert decision.model == "fast"


async def test_auto_routes_hard_prompts_to_quality(sidecar: RunningSidecar) -> None:
    prompt = (
        "Design a distributed rate limiter and analyze the trade-offs step by step; "
        "prove that it never admits more than the limit under concurrency."
    )
    decision = await _route(sidecar, _request(prompt))
    assert decision.level == pb.DECISION_LEVEL_AUTO
    assert decision.complexity >= 0.6
    assert decision.strategy == "quality-first"
    assert decision.model == "strong"


async def test_auto_routes_easy_prompts_to_cost(sidecar: RunningSidecar) -> None:
    decision = await _route(sidecar, _request("hi, what is the capital of France?"))
    assert decision.complexity <= 0.25
    assert decision.strategy == "cost-first"
    assert decision.model == "tiny"


async def test_auto_prefers_code_models_for_code(sidecar: RunningSidecar) -> None:
    decision = await _route(sidecar, _request("fix this python function: def f(x): return x +"))
    assert decision.task_class == "code"
    assert {c.model for c in decision.candidates} == {"fast", "strong"}
    assert any("code task" in r for r in decision.reasons)


async def test_fallback_level_keeps_chain_order_when_auto_is_off() -> None:
    config = routing_config()
    config["routing"]["auto"] = {"enabled": False}
    async with running_sidecar(config) as sidecar:
        decision = await _route(sidecar, _request(strategy="quality-first"))
    assert decision.level == pb.DECISION_LEVEL_FALLBACK
    assert [c.model for c in decision.candidates] == ["tiny", "cheap"]
    assert "auto routing is disabled" in decision.reasons


async def test_required_capability_filters(sidecar: RunningSidecar) -> None:
    decision = await _route(sidecar, _request(capabilities=["code"], strategy="cost-first"))
    assert [c.model for c in decision.candidates] == ["fast", "strong"]
    assert any(r == "tiny excluded: lacks a required capability" for r in decision.reasons)


async def test_max_cost_cap_filters(sidecar: RunningSidecar) -> None:
    decision = await _route(
        sidecar, _request(strategy="quality-first", max_tokens=1000, max_cost_usd=0.005)
    )
    assert "strong" not in {c.model for c in decision.candidates}
    assert all(c.estimated_cost_usd <= 0.005 for c in decision.candidates)
    assert any(r.startswith("strong excluded: estimated cost") for r in decision.reasons)


# -- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_", "code", "field"),
    [
        (pb.RouteRequest(), grpc.StatusCode.INVALID_ARGUMENT, "messages"),
        (
            pb.RouteRequest(messages=[pb.Message(role="robot", content="x")]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "messages[0].role",
        ),
        (_request(models=["gpt-9"]), grpc.StatusCode.INVALID_ARGUMENT, "routing.models[0]"),
        (_request(stage="nowhere"), grpc.StatusCode.INVALID_ARGUMENT, "routing.stage"),
        (_request(strategy="yolo"), grpc.StatusCode.INVALID_ARGUMENT, "routing.strategy"),
        (
            _request(weights=pb.Weights(cost=-1, latency=1, quality=1)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "routing.weights.cost",
        ),
        (
            _request(weights=pb.Weights(cost=math.nan, latency=1, quality=1)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "routing.weights.cost",
        ),
        (
            _request(weights=pb.Weights()),
            grpc.StatusCode.INVALID_ARGUMENT,
            "routing.weights: must not all be zero",
        ),
        (
            _request(capabilities=["teleport"]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "routing.capabilities[0]",
        ),
        (_request(max_cost_usd=-0.5), grpc.StatusCode.INVALID_ARGUMENT, "routing.max_cost_usd"),
        (_request(max_tokens=0), grpc.StatusCode.INVALID_ARGUMENT, "params.max_tokens"),
        (
            _request(models=["tiny"], max_tokens=5000),
            grpc.StatusCode.FAILED_PRECONDITION,
            "tiny excluded: context window 1024",
        ),
        (
            _request("x" * 300_000),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "messages[0].content: 300000 bytes exceeds server.limits.message_bytes (262144)",
        ),
    ],
)
async def test_bad_input_names_the_problem(
    sidecar: RunningSidecar, request_: pb.RouteRequest, code: grpc.StatusCode, field: str
) -> None:
    got_code, details = await _route_error(sidecar, request_)
    assert got_code == code
    assert field in details
    assert "Traceback" not in details


async def test_bad_priority_enum_value(sidecar: RunningSidecar) -> None:
    request = _request()
    request.routing.priority = 42  # type: ignore[assignment]
    code, details = await _route_error(sidecar, request)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "routing.priority" in details


async def test_disabled_provider_model_is_unavailable_not_unknown() -> None:
    config = routing_config()
    config["providers"]["paid"] = {
        "kind": "anthropic",
        "base_url": "http://127.0.0.1:9",
        "api_key_env": "PAID_KEY",
        "optional": True,
    }
    config["models"][2]["provider"] = "paid"
    async with running_sidecar(config, environ={}) as sidecar:
        code, details = await _route_error(sidecar, _request(models=["strong"]))
        decision = await _route(sidecar, _request(strategy="quality-first"))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "PAID_KEY is not set" in details
    assert "strong" not in {c.model for c in decision.candidates}


# -- discovery ----------------------------------------------------------------------------------


async def test_health_and_reflection(sidecar: RunningSidecar) -> None:
    health = health_pb2_grpc.HealthStub(sidecar.channel)
    for service in ("", "switchpoint.v1.Router"):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(sidecar.channel)
    responses = reflection.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    names = set()
    async for response in responses:
        names = {s.name for s in response.list_services_response.service}
    assert {"switchpoint.v1.Router", "grpc.health.v1.Health"} <= names
