"""The library and the gRPC front, built from one config, answer the same Route requests with the
same decisions and the same errors: hypothesis draws the requests (models, stages, strategies,
tenants, capabilities, sizes), each is sent to both, and the answers are compared whole."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
import pytest_asyncio
from hypothesis import event, given
from hypothesis import strategies as st

from switchpoint import Router, SwitchpointError
from switchpoint.library import CallKeywords
from switchpoint.library.results import decision_from_message
from switchpoint.server.status import failure_for
from switchpoint.v1 import router_pb2 as pb
from tests.sidecar_harness import RunningSidecar, routing_config, running_sidecar
from tests.support.fuzzing import search

# Mostly what passes validation, so that routing itself is compared; sometimes what does not.
ROLES = ("user",) * 6 + ("assistant", "system", "robot")
WORDS = ("fix this python bug", "prove the theorem step by step", "hello", "")
# Up to well past the smallest context window (tiny: 1024 tokens), so size decides too.
CONTENT = (
    st.sampled_from(WORDS)
    | st.text(min_size=1, max_size=40)
    | st.integers(1, 3000).map("word ".__mul__)
)


def _config() -> dict[str, Any]:
    config = routing_config()
    # A tenant the stage policy and limits know, and one they do not.
    config["budgets"] = [
        {"name": "acme-day", "window": "day", "limit_usd": 50.0, "match": {"tenant": "acme"}}
    ]
    return config


@dataclass(frozen=True)
class Case:
    messages: tuple[tuple[str, str], ...]
    model: str | None
    stage: str
    strategy: str
    tenant: str
    capabilities: tuple[str, ...]
    max_cost_usd: float | None
    max_tokens: int | None
    request_id: str

    def wire(self) -> pb.RouteRequest:
        routing = pb.RoutingOptions(
            models=[self.model] if self.model is not None else [],
            stage=self.stage,
            strategy=self.strategy,
            tenant=self.tenant,
            capabilities=self.capabilities,
        )
        if self.max_cost_usd is not None:
            routing.max_cost_usd = self.max_cost_usd
        params = pb.GenerationParams()
        if self.max_tokens is not None:
            params.max_tokens = self.max_tokens
        return pb.RouteRequest(
            messages=[pb.Message(role=r, content=c) for r, c in self.messages],
            routing=routing,
            params=params,
            request_id=self.request_id,
        )


CASES = st.builds(
    Case,
    messages=st.lists(st.tuples(st.sampled_from(ROLES), CONTENT), max_size=3).map(tuple)
    | st.just((("user", "hello"),)),
    model=st.none() | st.none() | st.sampled_from(["cheap", "fast", "strong", "tiny", "nope"]),
    stage=st.sampled_from(["", "", "", "architecture", "nope"]),
    strategy=st.sampled_from(["", "", "balanced", "thrifty", "quality-first", "cost-first", "x"]),
    tenant=st.sampled_from(["", "acme", "beta"]),
    capabilities=st.lists(st.sampled_from(["chat", "code", "vision"]), max_size=2).map(tuple),
    max_cost_usd=st.none() | st.floats(0.0, 0.05),
    max_tokens=st.none() | st.integers(0, 5000),
    request_id=st.builds(lambda: uuid.uuid4().hex),
)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sidecar() -> AsyncIterator[RunningSidecar]:
    async with running_sidecar(_config()) as running:
        yield running


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def router() -> AsyncIterator[Router]:
    async with Router.from_config(_config(), environ={}) as started:
        yield started


def _options(case: Case) -> CallKeywords:
    return CallKeywords(
        model=case.model,
        stage=case.stage,
        strategy=case.strategy,
        tenant=case.tenant,
        capabilities=case.capabilities,
        max_cost_usd=case.max_cost_usd,
        max_tokens=case.max_tokens,
        request_id=case.request_id,
    )


async def _library(router: Router, case: Case) -> tuple[str, object]:
    try:
        decision = await router.route(
            [{"role": r, "content": c} for r, c in case.messages], **_options(case)
        )
    except SwitchpointError as exc:
        failure = failure_for(exc, case.request_id)
        return failure.code.name, failure.message
    return "OK", decision


async def _grpc(sidecar: RunningSidecar, case: Case) -> tuple[str, object]:
    try:
        answer = await sidecar.stub.Route(case.wire())
    except grpc.aio.AioRpcError as refused:
        return refused.code().name, refused.details()
    return "OK", decision_from_message(answer)


@pytest.mark.asyncio(loop_scope="module")
@search(150)
@given(case=CASES)
async def test_library_and_grpc_give_the_same_decision_or_the_same_error(
    sidecar: RunningSidecar, router: Router, case: Case
) -> None:
    library = await _library(router, case)
    event(library[0])
    assert library == await _grpc(sidecar, case)


@pytest.mark.asyncio(loop_scope="module")
async def test_the_drawn_cases_reach_both_decisions_and_refusals(
    sidecar: RunningSidecar, router: Router
) -> None:
    """The comparison is not vacuous: known cases give a decision, and refusals of each kind."""
    base = Case((("user", "hello"),), None, "", "", "", (), None, None, "a" * 32)
    outcomes = {}
    for name, case in {
        "decided": base,
        "unknown model": Case(**{**base.__dict__, "model": "nope"}),
        "no messages": Case(**{**base.__dict__, "messages": ()}),
        "policy": Case(**{**base.__dict__, "stage": "architecture", "model": "tiny"}),
    }.items():
        library = await _library(router, case)
        assert library == await _grpc(sidecar, case)
        outcomes[name] = library[0]
    assert outcomes["decided"] == "OK"
    assert outcomes["unknown model"] == "INVALID_ARGUMENT"
    assert outcomes["no messages"] == "INVALID_ARGUMENT"
    assert outcomes["policy"] == "PERMISSION_DENIED"


@pytest.mark.asyncio(loop_scope="module")
async def test_chat_refusals_are_the_same_on_both_fronts(
    sidecar: RunningSidecar, router: Router
) -> None:
    """Chat refuses what Route refuses, with the same status and message on both fronts."""
    base = Case((("user", "hello"),), None, "", "", "", (), None, None, "b" * 32)
    for changes in (
        {"model": "nope"},
        {"messages": ()},
        {"stage": "architecture", "model": "tiny"},
        {"strategy": "x"},
        {"messages": (("robot", "hello"),)},
    ):
        case = Case(**{**base.__dict__, **changes})
        try:
            await router.chat(
                [{"role": r, "content": c} for r, c in case.messages], **_options(case)
            )
        except SwitchpointError as exc:
            failure = failure_for(exc, case.request_id)
            library = (failure.code.name, failure.message)
        else:
            raise AssertionError(f"the library served {changes}")
        wire = case.wire()
        chat = pb.ChatRequest(
            messages=wire.messages,
            routing=wire.routing,
            params=wire.params,
            request_id=wire.request_id,
        )
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await sidecar.stub.Chat(chat)
        assert library == (refused.value.code().name, refused.value.details()), changes
