"""Random tenant names in a loop leave bounded state: gate instances, the id caches, usage stats,
the Route tally, Prometheus label sets and (shared) the Redis commands of a sync round stay under
`server.state.max_scopes` or the config's own names, whatever the number of names sent; an idle
instance expires; a budget's spend is never forgotten within its window."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import yaml
from redis.asyncio import Redis

from switchpoint._native import CoreError
from switchpoint.config import parse_config
from switchpoint.errors import ConfigError, QuotaExceededError
from switchpoint.quota.gate import TokenGate
from switchpoint.quota.labels import OTHER
from switchpoint.quota.scopes import RequestScope
from switchpoint.v1 import router_pb2 as pb
from tests.providers.fixtures import OPENAI_TEST_KEY
from tests.providers.openai_server import OpenAIServer
from tests.redis_server import RedisServer
from tests.sidecar_harness import RunningSidecar, one_model_config, running_sidecar, user

MAX_SCOPES = 40
FLOOD = 2000
KNOWN = "acme"
ENV = {"K": OPENAI_TEST_KEY}


def _config(base_url: str, **sections: Any) -> dict[str, Any]:
    config = one_model_config(base_url, api_key_env="K")
    config["server"] = {"state": {"max_scopes": MAX_SCOPES, "idle_expiry_s": 600}}
    config["limits"] = [{"name": "per-tenant", "match": {"tenant": "*"}, "rpm": 100000}]
    config["budgets"] = [
        {"name": "per-tenant", "match": {"tenant": "*"}, "window": "day", "limit_usd": 1.0},
        {"name": "acme", "match": {"tenant": KNOWN}, "window": "day", "limit_usd": 100.0},
    ]
    config["telemetry"] = {"metrics_address": "127.0.0.1:0"}
    config.update(sections)
    return config


def _route(tenant: str) -> pb.RouteRequest:
    return pb.RouteRequest(messages=user("hello there"), routing=pb.RoutingOptions(tenant=tenant))


def _chat(tenant: str) -> pb.ChatRequest:
    return pb.ChatRequest(
        messages=user("hello there"),
        routing=pb.RoutingOptions(models=["gpt"], tenant=tenant),
        params=pb.GenerationParams(max_tokens=10),
    )


def _random_tenant() -> str:
    return f"t-{uuid.uuid4().hex}"


async def _in_batches(calls: Sequence[Callable[[], Awaitable[Any]]], size: int = 50) -> list[Any]:
    """Each call started only when its batch is: a call is under way from the moment it is made."""
    results: list[Any] = []
    for start in range(0, len(calls), size):
        batch = (call() for call in calls[start : start + size])
        results += await asyncio.gather(*batch, return_exceptions=True)
    return results


async def _metric_labels(sidecar: RunningSidecar, label: str) -> set[str]:
    """Every value of `label` in the /metrics exposition."""
    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://127.0.0.1:{sidecar.sidecar.metrics_port}/metrics")
    return set(re.findall(label + r'="([^"]*)"', response.text))


def _instances(sidecar: RunningSidecar) -> int:
    gate = sidecar.sidecar.engine.gate.gate
    return gate.limit_count() + gate.budget_count()


async def test_a_flood_of_tenants_leaves_bounded_state(openai_server: OpenAIServer) -> None:
    async with running_sidecar(_config(openai_server.base_url), ENV) as running:
        engine = running.sidecar.engine
        routes = [partial(running.stub.Route, _route(_random_tenant())) for _ in range(FLOOD)]
        routes.append(partial(running.stub.Route, _route(KNOWN)))
        results = await _in_batches(routes)
        # Route reserves nothing, so every instance it made can be freed: none is refused.
        failed = [r for r in results if not isinstance(r, pb.RouteDecision)]
        assert not failed, failed[:3]
        assert _instances(running) <= MAX_SCOPES
        assert max(engine.gate.gate.rule_slots()) <= MAX_SCOPES
        assert len(engine.gate.scopes) <= MAX_SCOPES
        assert len(engine.gate.book) <= MAX_SCOPES * len(engine.config.models)

        chats = await _in_batches(
            [partial(running.stub.Chat, _chat(_random_tenant())) for _ in range(60)]
        )
        served = [r for r in chats if isinstance(r, pb.ChatResponse)]
        refused = [r for r in chats if isinstance(r, grpc.aio.AioRpcError)]
        # Each served tenant holds a budget with spend (kept all day) and a rate limit whose
        # bucket refills over a minute: once they fill the cap, new tenants are refused.
        assert 0 < len(served) <= MAX_SCOPES
        assert refused
        for error in refused:
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "server.state.max_scopes" in (error.details() or "")
        assert _instances(running) <= MAX_SCOPES

        tenants = {key.tenant for key, _ in engine.stats.items()}
        assert tenants <= {KNOWN, OTHER}
        assert {
            seen.tenant for seen in running.sidecar._telemetry.metrics.route_tally.requests()
        } <= {KNOWN, OTHER}
        # Stages are checked against routing.stages, but a refused call is still counted.
        bad_stages = await _in_batches(
            [
                partial(
                    running.stub.Route,
                    pb.RouteRequest(
                        messages=user("hi"), routing=pb.RoutingOptions(stage=_random_tenant())
                    ),
                )
                for _ in range(50)
            ]
        )
        assert all(
            isinstance(r, grpc.aio.AioRpcError) and r.code() == grpc.StatusCode.INVALID_ARGUMENT
            for r in bad_stages
        )
        assert await _metric_labels(running, "tenant") == {KNOWN, OTHER, ""}
        assert await _metric_labels(running, "stage") == {OTHER, ""}
        # GetStats by an unknown tenant reads the shared `other` counters.
        stats = await running.stub.GetStats(pb.StatsRequest(tenant=_random_tenant()))
        other = await running.stub.GetStats(pb.StatsRequest(tenant=OTHER))
        assert stats.models[0].requests == other.models[0].requests == len(served)


def _gate(clock: list[float], max_scopes: int = 100) -> TokenGate:
    config = parse_config(
        {
            **one_model_config("http://127.0.0.1:9/v1"),
            "server": {"state": {"max_scopes": max_scopes, "idle_expiry_s": 60}},
            "limits": [{"name": "rate", "match": {"tenant": "*"}, "rpm": 600}],
            "budgets": [
                {"name": "day", "match": {"tenant": "*"}, "window": "day", "limit_usd": 1.0}
            ],
        }
    )
    return TokenGate(config, clock=lambda: clock[0])


# 2024-02-01T00:00:00Z plus an hour.
FEB = 1_706_745_600.0 + 3600.0


async def test_idle_instances_expire_but_spend_is_kept_for_its_window() -> None:
    clock = [FEB]
    gate = _gate(clock)
    model = parse_config(one_model_config("http://x/v1")).models[0]
    spender, idle = RequestScope("spender", ""), RequestScope("idle", "")
    with await gate.reserve(spender, model, 10, 0.75) as held:
        held.settle(10, 0.75)
    with await gate.reserve(idle, model, 10, 0.0) as held:
        held.settle(10, 0.0)
    assert len(gate.scopes) == 4
    (spender_budget,) = [i.gate_id for i in gate.budget_instances() if i.scope[0][1] == "spender"]

    clock[0] += 59.0
    assert gate.expire_idle() == 0  # not idle long enough (and buckets not full yet)
    clock[0] += 2.0
    # Both rate limits and the budget without spend go; the budget with spend stays all day.
    assert gate.expire_idle() == 3
    assert [i.scope for i in gate.budget_instances()] == [(("tenant", "spender"),)]
    assert gate.gate.limit_count() == 0
    assert gate.gate.budget_count() == 1
    with pytest.raises(QuotaExceededError) as refused:
        await gate.reserve(spender, model, 10, 0.5)
    assert refused.value.kind == "budget"

    clock[0] += 86_400.0  # the next day: nothing is left to forget
    assert gate.expire_idle() == 2
    assert gate.gate.budget_count() == 0
    with pytest.raises(CoreError):
        gate.gate.budget_state(spender_budget, clock[0])  # the freed id names nothing
    with await gate.reserve(spender, model, 10, 0.5) as held:  # a new day's budget
        held.settle(10, 0.5)


async def test_a_full_table_refuses_new_scopes_rather_than_forget_spend() -> None:
    clock = [FEB]
    gate = _gate(clock, max_scopes=4)
    model = parse_config(one_model_config("http://x/v1")).models[0]
    for name in ("a", "b"):
        with await gate.reserve(RequestScope(name, ""), model, 10, 0.25) as held:
            held.settle(10, 0.25)
    with pytest.raises(QuotaExceededError) as refused:
        await gate.reserve(RequestScope("c", ""), model, 10, 0.25)
    assert refused.value.kind == "scopes"
    assert "max_scopes=4" in str(refused.value)
    assert len(gate.scopes) == 4
    # A minute on, the rate limits' buckets are full again: they make room; the budgets stay.
    clock[0] += 61.0
    with await gate.reserve(RequestScope("c", ""), model, 10, 0.25) as held:
        held.settle(10, 0.25)
    spent = {
        i.scope[0][1]: gate.gate.budget_state(i.gate_id, clock[0]).spent_usd
        for i in gate.budget_instances()
    }
    assert spent == {"a": 0.25, "b": 0.25, "c": 0.25}


async def _round_trips(client: Redis) -> int:
    """Commands clients sent (scripts, not the commands they run inside Redis)."""
    stats = await client.info("commandstats")
    return sum(
        int(stat["calls"])
        for name, stat in stats.items()
        if name in ("cmdstat_evalsha", "cmdstat_eval", "cmdstat_script|load")
    )


async def test_shared_budgets_of_random_tenants_bound_redis_traffic(
    openai_server: OpenAIServer, redis_server: RedisServer, redis_client: Redis
) -> None:
    config = _config(
        openai_server.base_url,
        # Concurrency only: nothing to share, and free once the call is over.
        limits=[{"name": "per-tenant", "match": {"tenant": "*"}, "concurrency": 4}],
        budgets=[
            {"name": "per-tenant", "match": {"tenant": "*"}, "window": "day", "limit_usd": 0.05}
        ],
        # Rounds are run by hand below; leases are topped up on demand meanwhile.
        shared_state={"redis_url": redis_server.url, "sync_interval_s": 3600, "slice_usd": 0.01},
    )
    async with running_sidecar(config, ENV) as running:
        shared = running.sidecar.engine.gate.shared
        assert shared is not None
        victim = "victim"
        refusal = None
        for _ in range(50):
            try:
                await running.stub.Chat(_chat(victim))
            except grpc.aio.AioRpcError as error:
                refusal = error
                break
        assert refusal is not None, "the victim's budget never ran out"
        assert refusal.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "budget" in (refusal.details() or "")

        results = await _in_batches(
            [partial(running.stub.Chat, _chat(_random_tenant())) for _ in range(300)], size=20
        )
        assert all(isinstance(r, pb.ChatResponse) for r in results), [
            r for r in results if not isinstance(r, pb.ChatResponse)
        ][:2]
        assert _instances(running) <= MAX_SCOPES
        assert max(running.sidecar.engine.gate.gate.rule_slots()) <= MAX_SCOPES
        gate = running.sidecar.engine.gate
        assert all(dict(i.scope)["tenant"] != victim for i in gate.budget_instances())

        await shared.sync()  # reports what the freed instances still held
        before = await _round_trips(redis_client)
        assert await shared.sync()
        per_round = await _round_trips(redis_client) - before
        # One lease script per live budget instance: at most the cap, not one per tenant seen.
        assert 0 < per_round <= MAX_SCOPES

        # The victim's instance was freed and is made again: its spend came back from Redis.
        with pytest.raises(grpc.aio.AioRpcError) as again:
            await running.stub.Chat(_chat(victim))
        assert again.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "budget" in (again.value.details() or "")


async def test_reloads_share_one_bound(openai_server: OpenAIServer, tmp_path: Path) -> None:
    """Every config's gate makes instances in the same Rust gate: a reload neither resets the cap
    nor leaves the previous config's instances behind for ever."""
    config = _config(openai_server.base_url)
    async with running_sidecar(config, ENV) as running:
        for round_ in range(3):
            routes = [partial(running.stub.Route, _route(_random_tenant())) for _ in range(300)]
            results = await _in_batches(routes)
            assert all(isinstance(r, pb.RouteDecision) for r in results)
            assert _instances(running) <= MAX_SCOPES
            assert max(running.sidecar.engine.gate.gate.rule_slots()) <= MAX_SCOPES
            # The next config renames the rate limit: the old one's instances belong to no rule.
            config["limits"][0]["name"] = f"per-tenant-{round_}"
            path = tmp_path / f"config-{round_}.yaml"
            path.write_text(yaml.safe_dump(config), encoding="utf-8")
            assert (await running.sidecar.reload(path)).ok
        assert len(running.sidecar.engine.gate.scopes) <= MAX_SCOPES


def test_state_config_is_checked() -> None:
    base = _config("http://127.0.0.1:9/v1")
    for state, expected in (
        ({"max_scopes": 0}, "server.state.max_scopes: must be >= 1"),
        ({"idle_expiry_s": 0}, "server.state.idle_expiry_s: must be > 0"),
        ({"max_scope": 5}, "server.state.max_scope: unknown key"),
        (
            {"max_scopes": 2},
            "server.state.max_scopes: must be >= the number of limits and budgets (3)",
        ),
    ):
        with pytest.raises(ConfigError) as refused:
            parse_config({**base, "server": {"state": state}})
        assert any(error.startswith(expected) for error in refused.value.errors), refused.value


def test_each_gate_sharing_an_instance_forgets_it_when_freed() -> None:
    """After a reload the old and the new config's gates both cache a carried instance; whatever
    one of them drops from its own cache, freeing the instance purges both."""
    clock = [FEB]
    config = parse_config(
        {
            **one_model_config("http://127.0.0.1:9/v1"),
            "server": {"state": {"max_scopes": 2, "idle_expiry_s": 60}},
            "limits": [{"name": "fixed", "match": {"tenant": "t"}, "rpm": 600}],
        }
    )
    model = config.models[0]
    old = TokenGate(config, clock=lambda: clock[0])
    (carried,), _ = old.ids_for(RequestScope("t", ""), model)
    new = TokenGate(config, old.gate, clock=lambda: clock[0])
    new.carry_over(old)
    assert new.ids_for(RequestScope("t", ""), model) == ([carried], [])
    for name in ("u0", "u1"):  # the old gate's cache (2 answers) drops its answer for "t"
        old.ids_for(RequestScope(name, ""), model)
    clock[0] += 61.0
    assert new.expire_idle() == 1
    (fresh,), _ = new.ids_for(RequestScope("t", ""), model)
    assert fresh != carried
    assert new.gate.limit_state(fresh, clock[0]).requests_available == 600


async def test_a_scope_refused_for_want_of_room_leaves_nothing_pinned() -> None:
    clock = [FEB]
    gate = _gate(clock, max_scopes=3)
    model = parse_config(one_model_config("http://x/v1")).models[0]
    with await gate.reserve(RequestScope("a", ""), model, 10, 0.25) as held:
        held.settle(10, 0.25)
    # "b" gets its rate limit, then finds no room for its budget: refused.
    with pytest.raises(QuotaExceededError) as refused:
        await gate.reserve(RequestScope("b", ""), model, 10, 0.25)
    assert refused.value.kind == "scopes"
    # A minute on, the unused rate limits can go; the refused answer must not keep "b"'s pinned,
    # or "c" would find only "a"'s budget (with spend) left to free, and be refused too.
    clock[0] += 61.0
    with await gate.reserve(RequestScope("c", ""), model, 10, 0.25) as held:
        held.settle(10, 0.25)
    assert len(gate.scopes) <= 3
