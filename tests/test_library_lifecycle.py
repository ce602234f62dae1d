"""The library's life: two routers (and a router beside a sidecar) sharing one budget through real
Redis, leases returned when they close; a close with calls in flight lets them finish, or ends
them with DeadlineExceededError after the grace, leaving no reservation behind; and SyncRouter
from plain code."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from switchpoint import DeadlineExceededError, QuotaExceededError, Router, SyncRouter
from switchpoint.v1 import router_pb2 as pb
from tests.providers.fixtures import OPENAI_TEST_KEY
from tests.providers.openai_server import OpenAIServer
from tests.providers.script import echo_answer, hang
from tests.redis_server import RedisServer
from tests.sidecar_harness import one_model_config, running_sidecar, user
from tests.support.waiting import wait_until
from tests.test_shared_budget_rpc import LIMIT_USD, SLICE_USD, _committed_usd
from tests.test_shared_budget_rpc import _config as shared_config

ENV = {"K": OPENAI_TEST_KEY}
HELLO = [{"role": "user", "content": "hello there"}]


async def _spend(router: Router, calls: int) -> list[float]:
    """The cost of each of `calls` concurrent chats that were served; the others were refused by
    the budget (anything else fails the test)."""
    results = await asyncio.gather(
        *(router.chat(HELLO, model="gpt", max_tokens=10) for _ in range(calls)),
        return_exceptions=True,
    )
    for result in results:
        if isinstance(result, BaseException) and not isinstance(result, QuotaExceededError):
            raise result
    return [r.cost_usd for r in results if not isinstance(r, BaseException)]


async def test_two_library_instances_hold_one_budget_through_redis(
    openai_server: OpenAIServer, redis_server: RedisServer
) -> None:
    openai_server.script.default = hang(0.05)
    routers = [
        Router.from_config(shared_config(openai_server, redis_server.url, f"lib{i}"), environ=ENV)
        for i in range(2)
    ]
    served: list[float] = []
    async with routers[0], routers[1]:
        for _ in range(40):
            rounds = await asyncio.gather(*(_spend(r, 40) for r in routers))
            batch = [cost for costs in rounds for cost in costs]
            served += batch
            if not batch:
                break  # both refused everything: the shared pool is spent
            await asyncio.sleep(0.15)  # let leases sync so the next round sees the pool
        shared_state = routers[0].stats().shared_state
    total = sum(served)
    assert total > LIMIT_USD - 2 * SLICE_USD, "the shared budget was not used up"
    assert total <= LIMIT_USD + 2 * SLICE_USD
    assert shared_state == "ok"
    # Closed: each router reported its spend and gave its unused lease back.
    assert await _committed_usd(redis_server) == pytest.approx(total, abs=1e-6)


async def test_a_library_router_and_a_sidecar_share_one_budget(
    openai_server: OpenAIServer, redis_server: RedisServer
) -> None:
    config: dict[str, Any] = shared_config(openai_server, redis_server.url, "lib")
    sidecar_config = shared_config(openai_server, redis_server.url, "sidecar")
    request = pb.ChatRequest(
        messages=user("hello there"),
        routing=pb.RoutingOptions(models=["gpt"]),
        params=pb.GenerationParams(max_tokens=10),
    )
    async with (
        Router.from_config(config, environ=ENV) as router,
        running_sidecar(sidecar_config, ENV) as sidecar,
    ):
        by_sidecar = await sidecar.stub.Chat(request)
        by_library = await router.chat(HELLO, model="gpt", max_tokens=10)
    assert await _committed_usd(redis_server) == pytest.approx(
        by_sidecar.cost_usd + by_library.cost_usd, abs=1e-6
    )


def _budgeted(openai: OpenAIServer) -> dict[str, Any]:
    return {
        **one_model_config(openai.base_url, api_key_env="K"),
        "budgets": [{"name": "daily", "window": "day", "limit_usd": 100.0}],
    }


async def test_close_lets_calls_in_flight_finish_and_refuses_new_ones(
    openai_server: OpenAIServer,
) -> None:
    openai_server.script.default = hang(0.3)
    router = Router.from_config(_budgeted(openai_server), environ=ENV)
    await router.start()
    gate = router._parts.live.engine.gate
    calls = [asyncio.ensure_future(router.chat(HELLO, max_tokens=10)) for _ in range(5)]
    streams = [asyncio.ensure_future(_collect(router)) for _ in range(2)]
    await wait_until(lambda: len(openai_server.requests) == 7)
    closing = asyncio.ensure_future(router.close(grace_s=30))
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="closing"):
        await router.chat(HELLO)
    results = await asyncio.gather(*calls)
    texts = await asyncio.gather(*streams)
    # A second close (as `async with` would make after an explicit one) waits for the first.
    await router.close()
    assert router.state == "closed"
    await closing
    assert [r.content for r in results] == [echo_answer("gpt", "hello there")] * 5
    assert texts == [echo_answer("gpt", "hello there")] * 2
    assert router.state == "closed"
    assert gate.gate.outstanding() == 0


async def _collect(router: Router) -> str:
    return "".join([c.delta async for c in router.stream(HELLO, max_tokens=10)])


async def test_calls_past_the_grace_end_with_deadline_exceeded_and_leak_nothing(
    openai_server: OpenAIServer,
) -> None:
    openai_server.script.default = hang(30)
    router = Router.from_config(_budgeted(openai_server), environ=ENV)
    await router.start()
    gate = router._parts.live.engine.gate
    calls = [asyncio.ensure_future(router.chat(HELLO, max_tokens=10)) for _ in range(3)]
    streams = [asyncio.ensure_future(_collect(router)) for _ in range(2)]
    await wait_until(lambda: len(openai_server.requests) == 5)
    assert gate.gate.outstanding() == 5
    await router.close(grace_s=0.05)
    outcomes = await asyncio.gather(*calls, *streams, return_exceptions=True)
    assert all(isinstance(o, DeadlineExceededError) for o in outcomes), outcomes
    assert "router closed" in str(outcomes[0])
    # Every reservation was released (a call cut after reaching its provider is charged as the
    # engine charges any cancelled call; none is left reserved).
    assert gate.gate.outstanding() == 0
    instance = next(iter(gate.budget_instances()))
    assert gate.gate.budget_state(instance.gate_id, gate.now()).reserved_usd == 0.0


def test_sync_router_serves_plain_code(openai_server: OpenAIServer) -> None:
    config = one_model_config(openai_server.base_url, api_key_env="K")
    with SyncRouter.from_config(config, environ=ENV) as router:
        decision = router.route(HELLO)
        result = router.chat(HELLO, max_tokens=10)
        chunks = list(router.stream(HELLO, max_tokens=10))
        requests = router.stats().models[0].requests
    assert decision.model == "gpt"
    assert result.content == echo_answer("gpt", "hello there")
    assert "".join(c.delta for c in chunks) == result.content
    assert chunks[-1].done
    assert requests == 2  # the chat and the stream; a route calls no provider
    with pytest.raises(RuntimeError, match="closed"):
        router.chat(HELLO)


async def test_sync_router_refuses_to_block_an_event_loop(openai_server: OpenAIServer) -> None:
    router = SyncRouter.from_config(one_model_config(openai_server.base_url, api_key_env="K"))
    with pytest.raises(RuntimeError, match=r"inside a running event loop.*switchpoint.Router"):
        router.start()
    with pytest.raises(RuntimeError, match="not started"):
        router.chat(HELLO)


async def test_a_stream_its_consumer_stopped_reading_does_not_hold_close_up(
    openai_server: OpenAIServer,
) -> None:
    router = Router.from_config(_budgeted(openai_server), environ=ENV)
    await router.start()
    gate = router._parts.live.engine.gate
    stream = router.stream(HELLO, max_tokens=10)
    first = await anext(stream)  # then left unread
    await router.close(grace_s=0.05)
    assert router.state == "closed"
    assert first.decision is not None
    with pytest.raises(DeadlineExceededError, match="router closed"):
        await anext(stream)
    assert gate.gate.outstanding() == 0
