"""The priority queue's bounds: at most `routing.queue_max_depth` calls wait per model and none
waits longer than `routing.queue_max_wait_s`, on the queue itself and through the running server."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import pytest

from switchpoint.config import parse_config
from switchpoint.errors import ConfigError
from switchpoint.quota.queue import PriorityQueue, QueueRejected
from switchpoint.quota.scheduler import Scheduler
from switchpoint.request import Priority
from switchpoint.v1 import router_pb2 as pb
from tests.providers.fixtures import OPENAI_TEST_KEY
from tests.providers.openai_server import OpenAIServer
from tests.providers.script import hang
from tests.sidecar_harness import RunningSidecar, one_model_config, running_sidecar, user
from tests.support.queues import FakeClock, enter, hold_slot, release, until
from tests.support.waiting import wait_until

INTERACTIVE = Priority.INTERACTIVE


async def test_a_call_finding_the_queue_full_is_refused_at_once() -> None:
    queue = PriorityQueue("d", 1, max_depth=2)
    holder = await hold_slot(queue)
    waiters = [asyncio.create_task(enter(queue, INTERACTIVE)) for _ in range(2)]
    await until(lambda: queue.depth == 2)
    with pytest.raises(QueueRejected, match=r"routing\.queue_max_depth") as refused:
        await enter(queue, INTERACTIVE)
    assert "'d' already has 2 calls waiting" in str(refused.value)
    assert refused.value.retry_after_s >= 0.0
    await release(holder)
    await asyncio.gather(*waiters)
    stats = queue.snapshot()
    assert (stats.admitted_total, stats.rejected_total, stats.depth, stats.in_flight) == (
        3,
        1,
        0,
        0,
    )


async def test_a_call_without_a_deadline_is_refused_after_the_longest_wait() -> None:
    queue = PriorityQueue("d", 1, max_wait_s=0.05)
    holder = await hold_slot(queue)
    with pytest.raises(QueueRejected, match=r"past routing.queue_max_wait_s \(0.05s\)"):
        await enter(queue, INTERACTIVE)
    # A far deadline does not lift the bound; a nearer one is refused as a deadline.
    with pytest.raises(QueueRejected, match=r"routing\.queue_max_wait_s"):
        await enter(queue, INTERACTIVE, deadline=time.monotonic() + 3600.0)
    still_held = queue.snapshot()
    await release(holder)
    assert (still_held.in_flight, still_held.depth, still_held.rejected_total) == (1, 0, 2)


async def test_a_nearer_deadline_is_refused_as_a_deadline() -> None:
    queue = PriorityQueue("d", 1, max_wait_s=3600.0)
    holder = await hold_slot(queue)
    with pytest.raises(QueueRejected, match="deadline passed") as refused:
        await enter(queue, INTERACTIVE, deadline=time.monotonic() + 0.05)
    await release(holder)
    assert "queue_max_wait_s" not in str(refused.value)


async def test_a_waiter_past_its_longest_wait_is_refused_at_hand_off() -> None:
    clock = FakeClock()
    queue = PriorityQueue("d", 1, max_wait_s=1.0, clock=clock)
    holder = await hold_slot(queue)
    order: list[str] = []
    late = asyncio.create_task(enter(queue, INTERACTIVE, order, "late"))
    await until(lambda: queue.depth == 1)
    clock.advance(2.0)  # past the longest wait before the loop's timer would fire
    await release(holder)
    with pytest.raises(QueueRejected, match=r"routing\.queue_max_wait_s"):
        await late
    assert order == []
    assert queue.snapshot().in_flight == 0


async def test_reloaded_bounds_apply_to_every_queue() -> None:
    scheduler = Scheduler({"a": 1}, max_depth=5, max_wait_s=10.0)
    scheduler.set_bounds(1, 10.0)
    queue = scheduler.queue("a")
    holder = await hold_slot(queue)
    waiter = asyncio.create_task(enter(queue, INTERACTIVE))
    await until(lambda: queue.depth == 1)
    with pytest.raises(QueueRejected, match=r"routing\.queue_max_depth"):
        await enter(queue, INTERACTIVE)
    await release(holder)
    await waiter
    assert queue.snapshot().rejected_total == 1


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError, match="max_depth"):
        PriorityQueue("d", 1, max_depth=0)
    with pytest.raises(ValueError, match="max_wait_s"):
        PriorityQueue("d", 1, max_wait_s=0.0)
    config = one_model_config("http://127.0.0.1:9/v1")
    config["routing"] = {"queue_max_depth": 0, "queue_max_wait_s": -1, "queue_max_age_s": 0}
    with pytest.raises(ConfigError) as caught:
        parse_config(config)
    assert sorted(caught.value.errors) == [
        "routing.queue_max_age_s: must be > 0",
        "routing.queue_max_depth: must be >= 1",
        "routing.queue_max_wait_s: must be > 0",
    ]
    defaults = parse_config(one_model_config("http://127.0.0.1:9/v1")).routing
    assert (defaults.queue_max_depth, defaults.queue_max_wait_s) == (1000, 60.0)


# -- through the running server --------------------------------------------------------------------


def _config(openai: OpenAIServer, **routing: Any) -> dict[str, Any]:
    config = one_model_config(openai.base_url, api_key_env="T_OAI")
    config["models"][0]["max_concurrency"] = 1
    config["routing"] = routing
    return config


def _chat() -> pb.ChatRequest:
    return pb.ChatRequest(messages=user("hi"), routing=pb.RoutingOptions(models=["gpt"]))


async def _refusal(sidecar: RunningSidecar) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await sidecar.stub.Chat(_chat())
    return caught.value


async def test_a_full_queue_refuses_with_resource_exhausted(openai_server: OpenAIServer) -> None:
    openai_server.script.push(hang(10.0))
    config = _config(openai_server, queue_max_depth=1)
    async with running_sidecar(config, {"T_OAI": OPENAI_TEST_KEY}) as sidecar:
        holder = sidecar.stub.Chat(_chat())  # takes gpt's one slot and stalls upstream
        await wait_until(lambda: len(openai_server.requests) == 1)
        queued = sidecar.stub.Chat(_chat())
        queue = sidecar.sidecar.engine.scheduler.queue("gpt")
        await wait_until(lambda: queue.depth == 1)
        refused = await _refusal(sidecar)
        holder.cancel()
        answered = await queued  # the slot passes on to the waiter
        stats = (await sidecar.stub.GetStats(pb.StatsRequest(models=["gpt"]))).models[0]
    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    details = refused.details() or ""
    assert "admission queue of 'gpt' refused the call" in details
    assert "routing.queue_max_depth" in details
    assert answered.model == "gpt"
    assert (stats.queue_rejected, stats.queue_depth, stats.in_flight) == (1, 0, 0)


async def test_a_call_without_a_deadline_does_not_wait_forever(
    openai_server: OpenAIServer,
) -> None:
    openai_server.script.push(hang(10.0))
    config = _config(openai_server, queue_max_wait_s=0.2)
    async with running_sidecar(config, {"T_OAI": OPENAI_TEST_KEY}) as sidecar:
        holder = sidecar.stub.Chat(_chat())
        await wait_until(lambda: len(openai_server.requests) == 1)
        refused = await _refusal(sidecar)  # no deadline: refused after 0.2 s in the queue
        still_waiting_upstream = not holder.done()
        holder.cancel()
        gate_queue = sidecar.sidecar.engine.scheduler.queue("gpt")
        await wait_until(lambda: gate_queue.in_flight == 0)
    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "routing.queue_max_wait_s (0.2s)" in (refused.details() or "")
    assert still_waiting_upstream, "the refusal came from the queue, not from the held call"
    assert len(openai_server.requests) == 1
