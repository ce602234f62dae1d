"""Route from the request's bytes (`Router.route_wire`): the same entry point as every request
(`Router.decide`, which `Engine.decide` calls on the parsed request), a decoder that reads any bytes
as protobuf does, the gate's and breakers' say, and what it counts."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
from google.protobuf.message import DecodeError
from hypothesis import example, given
from hypothesis import strategies as st

from switchpoint import _native
from switchpoint.cache.records import CacheControls
from switchpoint.config import BUILTIN_STRATEGIES, parse_config
from switchpoint.engine.building import build_engine
from switchpoint.engine.path import Engine
from switchpoint.errors import ErrorClass, InvalidRequestError
from switchpoint.request import ChatInput, GenerationParams, RoutingOptions
from switchpoint.server import convert
from switchpoint.v1 import router_pb2 as pb
from tests.sidecar_harness import routing_config, running_sidecar, user, with_changes
from tests.support.fuzzing import search
from tests.support.protobuf_wire import damaged, route_request_bytes

MODEL_NAMES = ("cheap", "fast", "strong", "tiny", "nope", "")
NOW = 1_706_745_600.0  # 2024-02-01T00:00:00Z


@pytest.fixture(scope="module")
def engine() -> Engine:
    return build_engine(parse_config(routing_config()), environ={}).engine


def _by_name(value: Any) -> Any:
    """`value`'s named-tuple fields, nested ones too, in reverse order and not as a tuple."""
    if isinstance(value, tuple) and hasattr(value, "_asdict"):
        return SimpleNamespace(**{k: _by_name(v) for k, v in reversed(value._asdict().items())})
    if isinstance(value, tuple | list):
        return [_by_name(item) for item in value]
    return value


def test_the_router_reads_a_chat_input_by_name(engine: Engine) -> None:
    request = ChatInput(
        messages=convert.chat_input(pb.ChatRequest(messages=user("fix this python bug"))).messages,
        routing=RoutingOptions(
            models=("cheap", "strong"), tenant="acme", max_cost_usd=1.0, capabilities=("code",)
        ),
        params=GenerationParams(max_tokens=64, temperature=0.5, stop=("END",)),
        request_id="r1",
        cache=CacheControls(threshold=0.9),
    )
    router = engine.router
    assert (
        router.decide(_by_name(request), now=NOW).encode()
        == router.decide(request, now=NOW).encode()
    )
    bad = request._replace(cache=CacheControls(threshold=2.0))
    with pytest.raises(InvalidRequestError, match="threshold") as by_position:
        router.decide(bad, now=NOW)
    with pytest.raises(InvalidRequestError) as by_name:
        router.decide(_by_name(bad), now=NOW)
    assert str(by_name.value) == str(by_position.value)


numbers = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([0.0, 0.5, 1.0, -1.0])
texts = st.text(max_size=40) | st.sampled_from(
    ["hello", "  ", "fix this python bug", "prove the theorem step by step", "write a poem"]
)


@st.composite
def route_requests(draw: st.DrawFn) -> pb.RouteRequest:
    messages = draw(
        st.lists(
            st.builds(
                pb.Message,
                role=st.sampled_from(["system", "user", "assistant", "robot", ""]),
                content=texts,
            ),
            max_size=4,
        )
    )
    request = pb.RouteRequest(messages=messages)
    if draw(st.booleans()):
        routing = request.routing
        routing.models.extend(draw(st.lists(st.sampled_from(MODEL_NAMES), max_size=3)))
        routing.stage = draw(st.sampled_from(["", "", "architecture", "nope"]))
        routing.strategy = draw(st.sampled_from(["", "", "balanced", "thrifty", "nope"]))
        if draw(st.booleans()):
            routing.weights.CopyFrom(
                pb.Weights(cost=draw(numbers), latency=draw(numbers), quality=draw(numbers))
            )
        routing.tenant = draw(st.sampled_from(["", "acme", "x" * 129]))
        routing.priority = draw(st.integers(-1, 5))  # type: ignore[assignment]
        routing.capabilities.extend(
            draw(st.lists(st.sampled_from(["code", "chat", "vision", " "]), max_size=2))
        )
        if draw(st.booleans()):
            routing.max_cost_usd = draw(numbers)
    if draw(st.booleans()):
        params = request.params
        if draw(st.booleans()):
            params.max_tokens = draw(st.integers(0, 2**32 - 1))
        if draw(st.booleans()):
            params.temperature = draw(numbers)
        if draw(st.booleans()):
            params.top_p = draw(numbers)
        params.stop.extend(draw(st.lists(st.sampled_from(["", "END"]), max_size=2)))
    return request


def _answer(engine: Engine, request: bytes, **options: Any) -> bytes:
    """The wire path's answer, given the id `convert.chat_input` gives a request without one."""
    return engine.router.route_wire(
        request, now=engine.gate.now(), request_id=SAME_ID, **options
    ).decision


# Ids are drawn per request; where both paths must give the same bytes, both get this one.
SAME_ID = "0" * 32


def _as_wire(request: pb.RouteRequest) -> ChatInput:
    """The request as the engine reads it, with the id the wire path was given when it has none."""
    chat_input = convert.chat_input(request)
    return chat_input if request.request_id else chat_input._replace(request_id=SAME_ID)


def _outcome(decide: Any) -> tuple[str, Any]:
    try:
        return "ok", decide()
    except Exception as exc:  # compared below: same type, same message
        return type(exc).__name__, str(exc)


def test_what_the_wire_path_reports_beside_the_answer(engine: Engine) -> None:
    request = pb.RouteRequest(
        messages=user("héllo"), routing=pb.RoutingOptions(tenant="acme", stage="architecture")
    )
    routed = engine.router.route_wire(request.SerializeToString(), now=NOW)
    assert pb.RouteDecision.FromString(routed.decision).model == routed.model == "strong"
    assert (routed.tenant, routed.stage, routed.prompt_chars) == ("acme", "architecture", 5)


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x0a\x05ab",  # a message field cut short
        b"\x0a\x04\x0a\x02\xff\xfe",  # a role that is not UTF-8
        b"\x08",  # a tag without its value
        b"\x0b",  # a group: not in proto3
    ],
)
def test_bytes_that_are_no_route_request_are_refused_naming_the_request(
    engine: Engine, garbage: bytes
) -> None:
    with pytest.raises(InvalidRequestError) as refused:
        engine.router.route_wire(garbage, now=NOW)
    assert refused.value.field == "request"
    assert "switchpoint.v1.RouteRequest" in refused.value.message


async def test_undecodable_route_is_invalid_argument_over_grpc() -> None:
    async with running_sidecar(routing_config()) as sidecar:
        raw: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = sidecar.channel.unary_unary(
            "/switchpoint.v1.Router/Route"
        )
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await raw(b"\x0a\x05ab")
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert (refused.value.details() or "").startswith("request: is not a valid")
        # The sidecar is none the worse for it.
        decision = await sidecar.stub.Route(pb.RouteRequest(messages=user("hello")))
        assert decision.model


def test_route_tally_counts_and_times_each_answer(engine: Engine) -> None:
    tally = _native.RouteTally([0.001, 1.0])
    request = pb.RouteRequest(messages=user("hi"), routing=pb.RoutingOptions(tenant="t"))
    for _ in range(3):
        engine.router.route_wire(request.SerializeToString(), now=NOW, tally=tally)
    with pytest.raises(InvalidRequestError):
        engine.router.route_wire(pb.RouteRequest().SerializeToString(), now=NOW, tally=tally)
    [seen] = tally.requests()
    model, tenant, stage, calls = seen.model, seen.tenant, seen.stage, seen.calls
    assert (tenant, stage, calls) == ("t", "", 3)
    assert model in {"cheap", "fast", "strong", "tiny"}
    overhead = tally.overhead()
    counts, total = overhead.counts, overhead.sum_s
    assert sum(counts) == 3
    assert len(counts) == 3
    assert 0 < total < math.inf


def _budgeted(limit_usd: float, **budget: Any) -> Engine:
    config = with_changes(
        routing_config(),
        budgets=[{"name": "b", "match": {"tenant": "*"}, "limit_usd": limit_usd, **budget}],
    )
    return build_engine(parse_config(config), environ={}).engine


def test_route_from_bytes_makes_and_registers_the_rule_instances_it_needs() -> None:
    engine = _budgeted(1.0, window="day")
    request = pb.RouteRequest(messages=user("hello"), routing=pb.RoutingOptions(tenant="t"))
    # A tenant the gate has not seen: the router makes its budget instance, which the gate's
    # table then holds (capped, freed when idle) like any other.
    assert len(engine.gate.scopes) == 0
    answer = engine.gate.asking(lambda: _answer(engine, request.SerializeToString()))
    assert answer == engine.decide(_as_wire(request)).encode()
    [instance] = engine.gate.budget_instances()
    assert (instance.rule.name, instance.scope) == ("b", (("tenant", "t"),))
    assert engine.gate.scopes.get("budget", instance.gate_id) is not None


def test_a_budget_that_refuses_leaves_its_models_out_of_route_with_reasons() -> None:
    engine = _budgeted(0.0, window="total")
    request = pb.RouteRequest(messages=user("hello"), routing=pb.RoutingOptions(tenant="t"))
    # Every model but the free one is over the budget: the decision drops them, with reasons.
    raw = engine.gate.asking(lambda: _answer(engine, request.SerializeToString()))
    decision = pb.RouteDecision.FromString(raw)
    assert [c.model for c in decision.candidates] == ["tiny"]
    assert any("excluded: budget 'b" in reason for reason in decision.reasons)
    assert raw == engine.decide(_as_wire(request)).encode()


def test_an_open_breaker_leaves_its_model_out_of_route_with_the_reason(engine: Engine) -> None:
    fresh = build_engine(parse_config(routing_config()), environ={}).engine
    request = pb.RouteRequest(messages=user("hello")).SerializeToString()
    chosen = pb.RouteDecision.FromString(_answer(fresh, request)).model
    breaker = fresh.breakers.get(chosen)
    for _ in range(5):
        assert breaker.begin()
        breaker.record(ErrorClass.SERVER_ERROR)
    assert breaker.state == "open"
    decision = pb.RouteDecision.FromString(
        _answer(fresh, request, open_breakers=fresh.breakers.refusing())
    )
    assert decision.model != chosen
    assert any(r.startswith(f"{chosen} excluded: circuit breaker open") for r in decision.reasons)


@search(600)
# Where the decoder and protobuf once disagreed, always tried: a six-byte tag, a five-byte tag over
# 32 bits, a six-byte length, a ten-byte value past 64 bits, a group, 101 nested groups.
@example(data=b"\x8a\x80\x80\x80\x80\x00\x00")
@example(data=b"\x82\x80\x80\x80\x10\x00")
@example(data=b"\x0a\x80\x80\x80\x80\x80\x00")
@example(data=b"\x78" + b"\xff" * 9 + b"\x02")
@example(data=b"\x7b\x08\x01\x7c")
@example(data=b"\x7b" * 101 + b"\x7c" * 101)
@given(
    data=route_request_bytes()
    | route_requests().map(lambda r: r.SerializeToString()).flatmap(damaged)
    | route_requests().map(lambda r: r.SerializeToString() + b"\x78\x01")
)
def test_any_bytes_are_answered_as_protobuf_reads_them(engine: Engine, data: bytes) -> None:
    """Whatever the bytes, the router's decoder agrees with protobuf's parser: what protobuf
    refuses it refuses, and what protobuf reads it reads the same (so it decides the same)."""
    wire = _outcome(lambda: engine.router.route_wire(data, now=NOW, request_id=SAME_ID))
    try:
        message = pb.RouteRequest.FromString(data)
    except DecodeError:
        assert wire[0] == "InvalidRequestError"
        assert wire[1].startswith("request: is not a valid switchpoint.v1.RouteRequest")
        return
    full = _outcome(lambda: engine.router.decide(_as_wire(message), now=NOW).encode())
    if wire[0] != "ok":
        assert wire == full
        return
    assert full[0] == "ok"
    routed = wire[1]
    assert routed.decision == full[1]
    assert (routed.tenant, routed.stage) == (message.routing.tenant, message.routing.stage)


def test_levels_are_the_protos_decision_levels() -> None:
    assert [(level.value, level.name) for level in _native.Level.members()] == [
        (pb.DecisionLevel.Value(f"DECISION_LEVEL_{name}"), name)
        for name in ("OVERRIDE", "STAGE", "AUTO", "FALLBACK")
    ]
    assert _native.Level.AUTO == pb.DECISION_LEVEL_AUTO


def test_auto_reasons_and_built_in_strategies_come_from_the_core() -> None:
    raw = routing_config()
    routing = raw.setdefault("routing", {})
    routing["strategies"] = {"cost-first": {"cost": 1.0, "latency": 0.0, "quality": 0.0}}
    routing.setdefault("auto", {})["hard_complexity"] = 0.5
    config = parse_config(raw)
    engine = build_engine(config, environ={}).engine
    auto = config.routing.auto

    def decide(prompt: str) -> Any:
        return engine.decide(convert.chat_input(pb.ChatRequest(messages=user(prompt))))

    hard = decide("Design a distributed cache and compare the trade-offs step by step")
    assert (hard.strategy, hard.weights) == ("quality-first", BUILTIN_STRATEGIES["quality-first"])
    assert f"complexity >= {auto.hard_complexity}: quality-first" in hard.reasons
    easy = decide("hi, what is the capital of France?")
    # The configured strategy takes the built-in's place.
    assert (easy.strategy, easy.weights) == ("cost-first", (1.0, 0.0, 0.0))
    assert f"complexity <= {auto.easy_complexity}: cost-first" in easy.reasons
