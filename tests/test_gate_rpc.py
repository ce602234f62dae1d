"""The token gate through real gRPC: rate limits, budgets under concurrency, routing around
exhausted models, budget pressure, stage whitelists, reservations released on every path, Admin."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from switchpoint._native import CoreError
from switchpoint.quota.scopes import RequestScope
from switchpoint.v1 import admin_pb2, admin_pb2_grpc
from switchpoint.v1 import router_pb2 as pb
from tests.providers.anthropic_server import AnthropicServer
from tests.providers.fixtures import ANTHROPIC_TEST_KEY, OPENAI_TEST_KEY
from tests.providers.openai_server import OpenAIServer
from tests.providers.script import hang
from tests.sidecar_harness import RunningSidecar, running_sidecar, user
from tests.support.log_records import recorded

ADMIN_TOKEN = "admin-token-for-tests"
ENV = {
    "T_OAI": OPENAI_TEST_KEY,
    "T_ANT": ANTHROPIC_TEST_KEY,
    "SWITCHPOINT_ADMIN_TOKEN": ADMIN_TOKEN,
}
PRICE = {"input_per_mtok": 1000.0, "output_per_mtok": 1000.0}  # $0.001 per token: easy sums


def _config(openai: OpenAIServer, anthropic: AnthropicServer, **sections: Any) -> dict[str, Any]:
    common = {
        "context_window": 100000,
        "latency_prior": {"ttft_ms": 100, "tpot_ms": 10},
        "price": PRICE,
    }
    return {
        "providers": {
            "oai": {"kind": "openai", "base_url": openai.base_url, "api_key_env": "T_OAI"},
            "ant": {"kind": "anthropic", "base_url": anthropic.base_url, "api_key_env": "T_ANT"},
        },
        "models": [
            {**common, "name": "gpt", "provider": "oai", "quality": 0.6},
            {**common, "name": "claude", "provider": "ant", "quality": 0.7},
        ],
        "routing": {
            "stages": {"ui": {"models": ["gpt"]}},
            "fallback_chain": ["gpt", "claude"],
        },
        **sections,
    }


@pytest.fixture
def servers(
    openai_server: OpenAIServer, anthropic_server: AnthropicServer
) -> tuple[OpenAIServer, AnthropicServer]:
    return openai_server, anthropic_server


def _chat(
    text: str = "hello there", *models: str, tenant: str = "acme", **routing: Any
) -> pb.ChatRequest:
    return pb.ChatRequest(
        messages=user(text),
        routing=pb.RoutingOptions(models=list(models), tenant=tenant, **routing),
        params=pb.GenerationParams(max_tokens=10),
    )


def _retry_delay_s(error: grpc.aio.AioRpcError) -> float:
    trailing = dict(error.trailing_metadata() or ())
    status = status_pb2.Status.FromString(trailing["grpc-status-details-bin"])
    info = error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(info)
    return float(info.retry_delay.ToNanoseconds()) / 1e9


async def test_rpm_limit_per_tenant(servers: tuple[OpenAIServer, AnthropicServer]) -> None:
    limits = [{"name": "tenant-rpm", "match": {"tenant": "*"}, "rpm": 3}]
    async with running_sidecar(_config(*servers, limits=limits), ENV) as sidecar:
        for _ in range(3):
            await sidecar.stub.Chat(_chat("hi", "gpt"))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await sidecar.stub.Chat(_chat("hi", "gpt"))
        other_tenant = await sidecar.stub.Chat(_chat("hi", "gpt", tenant="globex"))
    error = caught.value
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "rate limit (rpm) 'tenant-rpm[tenant=acme]' is exhausted" in (error.details() or "")
    delay = _retry_delay_s(error)
    assert 0 < delay <= 20.0  # one request refills in 60/3 s
    assert float(dict(error.trailing_metadata() or ())["retry-after"]) == pytest.approx(
        delay, abs=0.01
    )
    assert other_tenant.model == "gpt"


async def test_concurrent_calls_never_overshoot_a_budget(
    servers: tuple[OpenAIServer, AnthropicServer],
) -> None:
    openai, _ = servers
    # Every call is slow, so all 200 are in flight together and race for the budget.
    openai.script.default = hang(0.5)
    budgets = [{"name": "daily", "window": "day", "limit_usd": 1.0}]
    async with running_sidecar(_config(*servers, budgets=budgets), ENV) as sidecar:
        probe = await sidecar.stub.Route(
            pb.RouteRequest(
                messages=user("hello there"),
                routing=pb.RoutingOptions(models=["gpt"]),
                params=pb.GenerationParams(max_tokens=10),
            )
        )
        estimate = probe.estimated_cost_usd
        results = await asyncio.gather(
            *(sidecar.stub.Chat(_chat("hello there", "gpt")) for _ in range(200)),
            return_exceptions=True,
        )
        gate = sidecar.sidecar.engine.gate
        instance = next(iter(gate.budget_instances()))
        budget = gate.gate.budget_state(instance.gate_id, gate.now())
        spent, reserved = budget.spent_usd, budget.reserved_usd
        outstanding = gate.gate.outstanding()
    served = [r for r in results if isinstance(r, pb.ChatResponse)]
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(served) + len(refused) == 200
    assert refused, "the budget must have refused some of the 200 calls"
    assert all(e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for e in refused)
    # Every call's estimate is above its real cost, so the ledger can never pass the limit: a
    # reservation that would take spent + reserved past it is refused.
    assert all(r.cost_usd <= estimate for r in served)
    assert spent == pytest.approx(sum(r.cost_usd for r in served))
    assert spent <= 1.0 + 1e-9
    assert reserved == 0
    assert outstanding == 0


async def test_exhausted_model_drops_out_of_routing(
    servers: tuple[OpenAIServer, AnthropicServer],
) -> None:
    budgets = [{"name": "gpt-only", "match": {"model": "gpt"}, "window": "hour", "limit_usd": 0}]
    async with running_sidecar(_config(*servers, budgets=budgets), ENV) as sidecar:
        decision = await sidecar.stub.Route(
            pb.RouteRequest(messages=user("hi"), routing=pb.RoutingOptions(strategy="cost-first"))
        )
        reply = await sidecar.stub.Chat(_chat("hi"))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await sidecar.stub.Chat(_chat("hi", "gpt"))
    assert [c.model for c in decision.candidates] == ["claude"]
    assert any(
        r.startswith("gpt excluded: budget 'gpt-only[model=gpt]' is exhausted")
        for r in decision.reasons
    )
    assert reply.model == "claude"
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_a_stream_opens_with_the_decision_the_gate_admitted(
    servers: tuple[OpenAIServer, AnthropicServer],
) -> None:
    budgets = [{"name": "gpt-only", "match": {"model": "gpt"}, "window": "hour", "limit_usd": 0}]
    async with running_sidecar(_config(*servers, budgets=budgets), ENV) as sidecar:
        chunks = [chunk async for chunk in sidecar.stub.ChatStream(_chat("hi"))]
    first = chunks[0].decision
    assert [c.model for c in first.candidates] == ["claude"]
    assert any(r.startswith("gpt excluded: budget 'gpt-only") for r in first.reasons)
    assert chunks[-1].model == "claude"


async def test_a_route_the_gate_refuses_is_observed_with_its_tenant(
    servers: tuple[OpenAIServer, AnthropicServer],
) -> None:
    budgets = [{"name": "none", "match": {"tenant": "*"}, "window": "hour", "limit_usd": 0}]
    route = pb.RouteRequest(messages=user("hi"), routing=pb.RoutingOptions(tenant="acme"))
    with recorded("switchpoint.request") as lines:
        async with running_sidecar(_config(*servers, budgets=budgets), ENV) as sidecar:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await sidecar.stub.Route(route)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "budget 'none[tenant=acme]' is exhausted" in (caught.value.details() or "")
    assert _retry_delay_s(caught.value) > 0
    seen = [(vars(r)["rpc"], vars(r)["tenant"], vars(r)["outcome"]) for r in lines.records]
    assert seen == [("Route", "acme", "resource_exhausted")]


async def test_budget_pressure_shifts_balanced_to_cost_first(
    servers: tuple[OpenAIServer, AnthropicServer],
) -> None:
    budgets = [
        {
            "name": "tenant-day",
            "match": {"tenant": "*"},
            "window": "day",
            "limit_usd": 1.0,
            "pressure": {"at_share": 0.01, "strategy": "cost-first"},
        }
    ]
    prompt = "Tell me about the history of Rome in a few paragraphs."
    route = pb.RouteRequest(messages=user(prompt), routing=pb.RoutingOptions(tenant="acme"))
    async with running_sidecar(_config(*servers, budgets=budgets), ENV) as sidecar:
        before = await sidecar.stub.Route(route)
        await sidecar.stub.Chat(_chat("spend a little of the budget", "gpt"))
        after = await sidecar.stub.Route(route)
    assert before.strategy == "balanced"
    assert after.strategy == "cost-first"
    assert any("budget 'tenant-day' is" in r for r in after.reasons)


async def test_stage_whitelist_refuses_other_models(
    servers: tuple[OpenAIServer, AnthropicServer],
) -> None:
    async with running_sidecar(_config(*servers), ENV) as sidecar:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await sidecar.stub.Chat(_chat("hi", "claude", stage="ui"))
        allowed = await sidecar.stub.Chat(_chat("hi", "gpt", stage="ui"))
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "routing.models[0]: model 'claude' is not allowed in stage 'ui'" in (
        caught.value.details() or ""
    )
    assert allowed.model == "gpt"


@pytest.fixture
async def gated(servers: tuple[OpenAIServer, AnthropicServer]) -> AsyncIterator[RunningSidecar]:
    limits = [{"name": "all", "concurrency": 5, "tpm": 1_000_000}]
    budgets = [{"name": "total", "window": "total", "limit_usd": 100.0}]
    config = _config(*servers, limits=limits, budgets=budgets)
    config["providers"]["oai"]["timeout_s"] = 0.5
    async with running_sidecar(config, ENV) as sidecar:
        yield sidecar


async def test_a_cancelled_stream_leaves_no_reservation_or_slot(
    gated: RunningSidecar, servers: tuple[OpenAIServer, AnthropicServer]
) -> None:
    servers[0].script.default = hang(2.0, after_chunks=1)
    call = gated.stub.ChatStream(_chat("one two three four", "gpt"))
    first = await call.read()
    assert isinstance(first, pb.ChatChunk)
    gate = gated.sidecar.engine.gate.gate
    assert gate.outstanding() == 1
    call.cancel()
    for _ in range(100):
        if gate.outstanding() == 0:
            break
        await asyncio.sleep(0.02)
    assert gate.outstanding() == 0
    assert gate.limit_state(0, gated.sidecar.engine.gate.now()).in_flight == 0


async def test_upstream_timeout_charges_each_sent_prompt_and_holds_nothing(
    gated: RunningSidecar, servers: tuple[OpenAIServer, AnthropicServer]
) -> None:
    servers[0].script.default = hang(3.0)
    route = await gated.stub.Route(
        pb.RouteRequest(messages=user("slow"), routing=pb.RoutingOptions(models=["gpt"]))
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gated.stub.Chat(_chat("slow", "gpt"))
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    engine_gate = gated.sidecar.engine.gate
    assert engine_gate.gate.outstanding() == 0
    instance = next(iter(engine_gate.budget_instances()))
    budget = engine_gate.gate.budget_state(instance.gate_id, engine_gate.now())
    spent, reserved = budget.spent_usd, budget.reserved_usd
    # Every attempt that timed out had reached the provider: its prompt is charged, no more.
    prompt_cost = route.estimated_input_tokens * PRICE["input_per_mtok"] / 1e6
    sent = len(servers[0].requests)
    assert sent >= 1
    assert spent == pytest.approx(sent * prompt_cost)
    assert reserved == 0.0


@pytest.mark.parametrize("bad_cost", [float("nan"), -0.01])
async def test_a_settle_the_gate_refuses_releases_the_hold(
    gated: RunningSidecar, bad_cost: float
) -> None:
    engine = gated.sidecar.engine
    token_gate = engine.gate
    model = engine.registry.models[0]
    hold = await token_gate.reserve(RequestScope("acme", ""), model, 100, 0.1)
    assert token_gate.gate.outstanding() == 1
    with hold, pytest.raises(CoreError, match="cost_usd"):
        hold.settle(10, bad_cost)
    now = token_gate.now()
    assert token_gate.gate.outstanding() == 0
    assert token_gate.gate.limit_state(0, now).in_flight == 0, "the concurrency slot leaked"
    instance = next(iter(token_gate.budget_instances()))
    budget = token_gate.gate.budget_state(instance.gate_id, now)
    assert (budget.spent_usd, budget.reserved_usd) == (0.0, 0.0)
    # The gate still serves: the slot and the budget are there for the next call.
    reply = await gated.stub.Chat(_chat("after", "gpt"))
    assert reply.model == "gpt"


# -- Admin ----------------------------------------------------------------------------------------


async def test_admin_needs_the_token_and_adjusts_budgets(
    servers: tuple[OpenAIServer, AnthropicServer],
) -> None:
    budgets = [{"name": "tenant-day", "match": {"tenant": "*"}, "window": "day", "limit_usd": 0}]
    async with running_sidecar(_config(*servers, budgets=budgets), ENV) as sidecar:
        admin = admin_pb2_grpc.AdminStub(sidecar.channel)
        with pytest.raises(grpc.aio.AioRpcError) as anonymous:
            await admin.GetBudgets(admin_pb2.GetBudgetsRequest())
        with pytest.raises(grpc.aio.AioRpcError) as wrong:
            await admin.GetBudgets(
                admin_pb2.GetBudgetsRequest(), metadata=(("authorization", "Bearer nope"),)
            )
        auth = (("authorization", f"Bearer {ADMIN_TOKEN}"),)
        with pytest.raises(grpc.aio.AioRpcError) as broke:
            await sidecar.stub.Chat(_chat("hi", "gpt"))
        raised = await admin.SetBudget(
            admin_pb2.SetBudgetRequest(name="tenant-day", limit_usd=5.0), metadata=auth
        )
        reply = await sidecar.stub.Chat(_chat("hi", "gpt"))
        state = await admin.GetBudgets(admin_pb2.GetBudgetsRequest(tenant="acme"), metadata=auth)
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await admin.SetBudget(
                admin_pb2.SetBudgetRequest(name="nope", limit_usd=1.0), metadata=auth
            )
        with pytest.raises(grpc.aio.AioRpcError) as bad_scope:
            await admin.SetBudget(
                admin_pb2.SetBudgetRequest(name="tenant-day", limit_usd=1.0, scope={"team": "x"}),
                metadata=auth,
            )
        unchanged = await admin.GetBudgets(admin_pb2.GetBudgetsRequest(), metadata=auth)
    assert bad_scope.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (bad_scope.value.details() or "").startswith("scope: 'team' is not one of tenant")
    assert [b.limit_usd for b in unchanged.budgets] == [5.0]
    assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert wrong.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert broke.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert [b.limit_usd for b in raised.budgets] == [5.0]
    [budget] = state.budgets
    assert (budget.name, dict(budget.scope), budget.window) == (
        "tenant-day",
        {"tenant": "acme"},
        "day",
    )
    assert budget.spent_usd == pytest.approx(reply.cost_usd)
    assert budget.remaining_usd == pytest.approx(5.0 - reply.cost_usd)
    assert budget.window_end - budget.window_start == 86400
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


async def test_admin_is_refused_without_a_configured_token(
    servers: tuple[OpenAIServer, AnthropicServer],
) -> None:
    async with running_sidecar(_config(*servers), {"T_OAI": "k", "T_ANT": "k"}) as sidecar:
        admin = admin_pb2_grpc.AdminStub(sidecar.channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await admin.GetBudgets(
                admin_pb2.GetBudgetsRequest(), metadata=(("authorization", "Bearer x"),)
            )
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "admin is disabled" in (caught.value.details() or "")
