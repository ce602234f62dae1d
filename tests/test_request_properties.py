"""Request validation under arbitrary messages: every ChatRequest and RouteRequest that hypothesis
builds (any field set to anything its type allows) is decided, refused as an invalid request naming
its field, or answered with the router's own refusal (no eligible model, policy); never another
exception. Route's decoder reads each one's bytes as protobuf does: the same outcome. And through
the running server, any bytes get a decision or a status that names what is wrong."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import pytest_asyncio
from hypothesis import event, given
from hypothesis import strategies as st

from switchpoint.config import parse_config
from switchpoint.engine.building import build_engine
from switchpoint.engine.path import Engine
from switchpoint.errors import InvalidRequestError, NoEligibleModelError, PolicyDeniedError
from switchpoint.server import convert
from switchpoint.v1 import router_pb2 as pb
from tests.sidecar_harness import RunningSidecar, routing_config, running_sidecar
from tests.support.fuzzing import search
from tests.support.protobuf_messages import messages
from tests.support.protobuf_wire import route_request_bytes

# The names routing_config() knows, so that drawn requests reach past validation into routing.
VOCABULARY = (
    *("system", "user", "assistant", "robot"),
    *("cheap", "fast", "strong", "tiny", "nope"),
    *("architecture", "balanced", "thrifty", "quality-first", "cost-first", "custom"),
    *("chat", "code", "vision", "acme"),
    *("fix this python bug", "prove the theorem step by step", "hello"),
)
# Mostly what passes validation, so that each later check is reached; sometimes anything.
HINTS = {
    "switchpoint.v1.Message.role": st.sampled_from(["user", "user", "assistant", "system"]),
    "switchpoint.v1.Message.content": st.text(min_size=1, max_size=40)
    | st.sampled_from(VOCABULARY),
    "switchpoint.v1.RouteRequest.messages": st.deferred(lambda: MESSAGES),
    "switchpoint.v1.ChatRequest.messages": st.deferred(lambda: MESSAGES),
}
MESSAGES: st.SearchStrategy[Any] = messages(pb.Message.DESCRIPTOR, VOCABULARY, HINTS)
# A field path as the router names it: `messages[2].role`, `routing.weights.cost`, `request_id`;
# `request` for bytes that are no request at all.
FIELD_PATH = re.compile(
    r"(messages|routing|params|cache|request_id)(\.[a-z_]+|\[\d+\])*\Z|request\Z"
)
# Checked after everything a RouteRequest also carries (request_id is field 4 of both).
CHAT_ONLY_FIELDS = {"cache.threshold"}

Outcome = tuple[str, Any]  # ("ok", the decision's bytes) or (refusal, what it says)


@pytest.fixture(scope="module")
def engine() -> Engine:
    return build_engine(parse_config(routing_config()), environ={}).engine


def _refusal(exc: Exception) -> Outcome:
    if isinstance(exc, InvalidRequestError):
        assert FIELD_PATH.match(exc.field), exc.field
        assert exc.message
        return "invalid", (exc.field, exc.message)
    # Well-formed, and the router's answer is that nothing may serve it.
    assert isinstance(exc, NoEligibleModelError | PolicyDeniedError), repr(exc)
    return type(exc).__name__, str(exc)


# Ids are drawn per request; the wire path is given this one for a request without its own, and
# so is the engine, so that both answers carry the same.
SAME_ID = "0" * 32


def engine_outcome(engine: Engine, request: pb.ChatRequest | pb.RouteRequest) -> Outcome:
    chat_input = convert.chat_input(request)
    if not request.request_id:
        chat_input = chat_input._replace(request_id=SAME_ID)
    try:
        decision = engine.decide(chat_input)
    except Exception as exc:  # anything but the expected refusals fails in _refusal
        return _refusal(exc)
    answer = decision.encode()
    assert pb.RouteDecision.FromString(answer).model in {"cheap", "fast", "strong", "tiny"}
    return "ok", answer


def engine_outcome_seen(engine: Engine, request: pb.ChatRequest | pb.RouteRequest) -> Outcome:
    """`engine_outcome`, counted by kind (`pytest --hypothesis-show-statistics` shows how many
    drawn requests got past validation, and which check refused the others)."""
    outcome = engine_outcome(engine, request)
    event(outcome[1][0] if outcome[0] == "invalid" else outcome[0])
    return outcome


def wire_outcome(engine: Engine, data: bytes) -> Outcome:
    try:
        routed = engine.router.route_wire(data, now=engine.gate.now(), request_id=SAME_ID)
    except Exception as exc:
        return _refusal(exc)
    return "ok", routed.decision


@search(400)
@given(request=messages(pb.RouteRequest.DESCRIPTOR, VOCABULARY, HINTS))
def test_any_route_request_is_decided_or_refused_naming_its_field(
    engine: Engine, request: pb.RouteRequest
) -> None:
    expected = engine_outcome_seen(engine, request)
    assert wire_outcome(engine, request.SerializeToString()) == expected


@search(400)
@given(request=messages(pb.ChatRequest.DESCRIPTOR, VOCABULARY, HINTS))
def test_any_chat_request_is_decided_or_refused_naming_its_field(
    engine: Engine, request: pb.ChatRequest
) -> None:
    expected = engine_outcome_seen(engine, request)
    # A ChatRequest's fields 1-3 are a RouteRequest's; Route's decoder skips the others.
    wire = wire_outcome(engine, request.SerializeToString())
    if expected[0] == "invalid" and expected[1][0] in CHAT_ONLY_FIELDS:
        assert wire[0] != "invalid" or wire[1][0] not in CHAT_ONLY_FIELDS
    else:
        assert wire == expected


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sidecar() -> AsyncIterator[RunningSidecar]:
    async with running_sidecar(routing_config()) as running:
        yield running


# What a well-formed request may be refused with, besides INVALID_ARGUMENT naming its field.
ROUTERS_OWN_REFUSALS = {grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.PERMISSION_DENIED}


async def grpc_outcome(sidecar: RunningSidecar, data: bytes) -> tuple[grpc.StatusCode, str, bytes]:
    """(status, details, answer) of a Route call with `data` as its request's bytes."""
    raw: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = sidecar.channel.unary_unary(
        "/switchpoint.v1.Router/Route"
    )
    try:
        return grpc.StatusCode.OK, "", await raw(data)
    except grpc.aio.AioRpcError as refused:
        return refused.code(), refused.details() or "", b""


@pytest.mark.asyncio(loop_scope="module")
@search(200)
@given(
    data=route_request_bytes()
    | messages(pb.RouteRequest.DESCRIPTOR, VOCABULARY, HINTS).map(lambda r: r.SerializeToString())
)
async def test_route_over_grpc_answers_any_bytes_with_a_decision_or_a_named_refusal(
    sidecar: RunningSidecar, engine: Engine, data: bytes
) -> None:
    """Through the running server, any bytes get a RouteDecision or a refusal whose status and
    message say what is wrong (never UNKNOWN or INTERNAL), and the engine's own answer."""
    code, details, answer = await grpc_outcome(sidecar, data)
    expected = wire_outcome(engine, data)
    if code is grpc.StatusCode.OK:
        assert expected[0] == "ok"
        # The server draws its own id for a request without one; the rest is the engine's.
        served, engines = (pb.RouteDecision.FromString(b) for b in (answer, expected[1]))
        assert served.request_id
        if served.request_id != engines.request_id:
            assert engines.request_id == SAME_ID
            served.request_id = engines.request_id
        assert served.SerializeToString() == expected[1]
    elif code is grpc.StatusCode.INVALID_ARGUMENT:
        assert FIELD_PATH.match(details.partition(": ")[0]), details
        assert expected[0] == "invalid"
    else:
        assert code in ROUTERS_OWN_REFUSALS, (code, details)
        assert expected[0] not in ("ok", "invalid")
