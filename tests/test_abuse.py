"""Bad input through the running server: oversize requests are refused by `server.limits` with
the limit named and the client's strings cut; large prompts of every shape are routed on worker
threads while small calls go on being served (asserted by order of completion); a caller that
gives up stops its work; SIGTERM ends a sidecar busy with a large request."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from switchpoint import offload as offload_module
from switchpoint.cache.guard import MAX_GUARDED_CHARS
from switchpoint.offload import OFFLOAD_ABOVE_BYTES, Offload
from switchpoint.providers.base import ChatMessage
from switchpoint.v1 import router_pb2 as pb
from tests.providers.fixtures import OPENAI_TEST_KEY
from tests.providers.openai_server import OpenAIServer
from tests.providers.script import hang
from tests.sidecar_harness import RunningSidecar, running_sidecar, user, with_changes
from tests.support.serve_process import free_port, serving, write_config
from tests.support.token_counts import COUNTER

MIB = 1024 * 1024
# Limits raised so that megabyte prompts reach the counting (16 MiB: the SIGTERM case).
RAISED = {
    "max_message_bytes": 64 * MIB,
    "messages": 500_000,
    "message_bytes": 32 * MIB,
    "prompt_bytes": 32 * MIB,
}
PROVIDER_ENV = {"T_OAI": OPENAI_TEST_KEY}
# Waiting for the server to pick a request up: polls of the in-process sidecar, not a timing.
POLL_S = 0.002
POLLS = 5000


def _config(limits: dict[str, int] | None = None, **server: Any) -> dict[str, Any]:
    """One model counted with o200k_base (the exact BPE count) and a window no prompt here fills;
    no provider is reached by Route."""
    return {
        "server": {"limits": limits or {}, **server},
        "providers": {"oai": {"kind": "openai", "base_url": "http://127.0.0.1:9/v1"}},
        "models": [
            {
                "name": "gpt",
                "provider": "oai",
                "tokenizer": "o200k_base",
                "context_window": 100_000_000,
                "quality": 0.5,
                "price": {"input_per_mtok": 1.0, "output_per_mtok": 1.0},
                "latency_prior": {"ttft_ms": 100, "tpot_ms": 10},
            }
        ],
    }


def _counting_config(limits: dict[str, int] | None = None, **server: Any) -> dict[str, Any]:
    """`_config`, where every large prompt here must be counted exactly: beside "gpt", models
    whose context windows lie between the bounds a one-pass reading gives every shape below
    (docs/routing.md), so routing cannot tell them apart without the count. They rank below
    "gpt" whatever they are."""
    narrow = {
        "provider": "oai",
        "tokenizer": "o200k_base",
        "quality": 0.0,
        "price": {"input_per_mtok": 100.0, "output_per_mtok": 100.0},
        "latency_prior": {"ttft_ms": 10_000, "tpot_ms": 100},
    }
    config = _config(limits, **server)
    config["models"] += [
        {**narrow, "name": f"narrow-{window}", "context_window": window}
        for window in (1_000, 5_000, 50_000, 500_000, 1_000_000, 2_500_000, 3_000_000)
    ]
    return config


def _with_provider(config: dict[str, Any], openai: OpenAIServer) -> dict[str, Any]:
    provider = {"kind": "openai", "base_url": openai.base_url, "api_key_env": "T_OAI"}
    return with_changes(config, providers={"oai": provider})


def _route(text: str = "hello", **routing: Any) -> pb.RouteRequest:
    return pb.RouteRequest(messages=user(text), routing=pb.RoutingOptions(**routing))


def _offload(sidecar: RunningSidecar) -> Offload:
    offload = sidecar.sidecar.offload
    assert offload is not None
    return offload


async def _until(condition: Callable[[], bool]) -> None:
    for _ in range(POLLS):
        if condition():
            return
        await asyncio.sleep(POLL_S)
    raise AssertionError("the server never got there")


# -- limits -----------------------------------------------------------------------------------


def _many_messages(n: int) -> list[pb.Message]:
    return [pb.Message(role="user", content="hi") for _ in range(n)]


OVERSIZE = [
    pytest.param(
        {"messages": user("a" * 300_000)},
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "messages[0].content: 300000 bytes exceeds server.limits.message_bytes (262144)",
        id="message",
    ),
    pytest.param(
        {"messages": [pb.Message(role="user", content="a" * 200_000)] * 3},
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "messages: 600000 bytes exceeds server.limits.prompt_bytes (524288)",
        id="prompt",
    ),
    pytest.param(
        {"messages": _many_messages(20_000)},
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "messages: 20000 messages exceeds server.limits.messages (1024)",
        id="messages",
    ),
    pytest.param(
        {"routing": pb.RoutingOptions(tenant="t" * 1_000_000)},
        grpc.StatusCode.INVALID_ARGUMENT,
        "routing.tenant: 1000000 bytes exceeds server.limits.name_bytes (128)",
        id="tenant",
    ),
    pytest.param(
        {"routing": pb.RoutingOptions(stage="s" * 1_000_000)},
        grpc.StatusCode.INVALID_ARGUMENT,
        "routing.stage: 1000000 bytes exceeds server.limits.name_bytes (128)",
        id="stage",
    ),
    pytest.param(
        {"routing": pb.RoutingOptions(models=["m" * 1_000_000])},
        grpc.StatusCode.INVALID_ARGUMENT,
        "routing.models[0]: 1000000 bytes exceeds server.limits.name_bytes (128)",
        id="model",
    ),
    pytest.param(
        {"routing": pb.RoutingOptions(models=["gpt"] * 65)},
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "routing.models: 65 items exceeds server.limits.list_items (64)",
        id="models",
    ),
]
# Route requests carry no id.
CHAT_ONLY = [
    pytest.param(
        {"request_id": "r" * 1_000_000},
        grpc.StatusCode.INVALID_ARGUMENT,
        "request_id: 1000000 bytes exceeds server.limits.name_bytes (128)",
        id="request_id",
    ),
]


async def _call(sidecar: RunningSidecar, rpc: str, fields: dict[str, Any]) -> None:
    fields = {"messages": user("hello"), **fields}
    if rpc == "Route":
        await sidecar.stub.Route(pb.RouteRequest(**fields))
    elif rpc == "Chat":
        await sidecar.stub.Chat(pb.ChatRequest(**fields))
    else:
        async for _ in sidecar.stub.ChatStream(pb.ChatRequest(**fields)):
            pass


async def _refused(rpc: str, fields: dict[str, Any]) -> grpc.aio.AioRpcError:
    async with running_sidecar(_config()) as sidecar:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await _call(sidecar, rpc, fields)
        # The server still answers, and nothing it refused reached a worker.
        assert (await sidecar.stub.Route(_route())).candidates[0].model == "gpt"
        assert _offload(sidecar).in_flight == 0
    return refused.value


@pytest.mark.parametrize("rpc", ["Route", "Chat", "ChatStream"])
@pytest.mark.parametrize(("fields", "code", "message"), OVERSIZE)
async def test_oversize_input_is_refused_naming_the_limit(
    rpc: str, fields: dict[str, Any], code: grpc.StatusCode, message: str
) -> None:
    refused = await _refused(rpc, fields)
    assert (refused.code(), refused.details()) == (code, message)


@pytest.mark.parametrize("rpc", ["Chat", "ChatStream"])
@pytest.mark.parametrize(("fields", "code", "message"), CHAT_ONLY)
async def test_oversize_ids_are_refused_naming_the_limit(
    rpc: str, fields: dict[str, Any], code: grpc.StatusCode, message: str
) -> None:
    refused = await _refused(rpc, fields)
    assert (refused.code(), refused.details()) == (code, message)


async def test_a_client_string_in_an_error_is_cut() -> None:
    async with running_sidecar(_config()) as sidecar:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await sidecar.stub.Route(
                pb.RouteRequest(messages=[pb.Message(role="r" * 100, content="hi")])
            )
    details = refused.value.details() or ""
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("messages[0].role: must be one of system, user, assistant")
    assert f"'{'r' * 64}…'" in details
    assert "r" * 65 not in details


async def test_a_message_over_the_grpc_limit_is_refused_before_parsing() -> None:
    async with running_sidecar(_config({"max_message_bytes": 64 * 1024})) as sidecar:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await sidecar.stub.Route(_route("a" * 100_000))
        assert (await sidecar.stub.Route(_route())).candidates
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "65536" in (refused.value.details() or "")


async def test_calls_beyond_the_concurrent_rpc_limit_are_refused_at_once(
    openai_server: OpenAIServer,
) -> None:
    config = _with_provider(_config({"max_concurrent_rpcs": 2}), openai_server)
    async with running_sidecar(config, PROVIDER_ENV) as sidecar:
        openai_server.script.push(hang(10.0), hang(10.0))
        chat = pb.ChatRequest(messages=user("hello"))
        held = [asyncio.ensure_future(sidecar.stub.Chat(chat)) for _ in range(2)]
        await _until(lambda: len(openai_server.requests) == 2)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await sidecar.stub.Route(_route())
        for call in held:
            call.cancel()
        await asyncio.gather(*held, return_exceptions=True)
        # The held calls ended: the slots are free again.
        for _ in range(POLLS):
            try:
                assert (await sidecar.stub.Route(_route())).candidates
                break
            except grpc.aio.AioRpcError:
                await asyncio.sleep(POLL_S)
        else:
            raise AssertionError("the freed slots were never served")
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


# -- large work off the loop ------------------------------------------------------------------


async def _small_beats_big(sidecar: RunningSidecar, big: Awaitable[Any]) -> Any:
    """Starts `big`, waits until a worker thread computes it, then makes a small Route call: the
    small call must finish first. Returns what `big` gave."""
    offload = _offload(sidecar)
    big_call = asyncio.ensure_future(big)
    await _until(lambda: offload.running > 0 or big_call.done())
    assert not big_call.done(), "the large request was not routed on a worker thread"
    small = await sidecar.stub.Route(_route("hi"))
    assert small.candidates[0].model == "gpt"
    assert not big_call.done(), "the small call waited for the large one"
    return await big_call


# Each shape with its size in MiB: enough for a few hundred milliseconds of counting (release
# build), far longer than a small call takes even on a loaded machine.
SHAPES = {
    "one letter": ("a", 2),
    "digits": ("7", 4),
    "emoji": ("\N{GRINNING FACE}", 2),
    "whitespace": (" \n", 2),
    "x Bob": ("x Bob ", 8),
}


@pytest.mark.parametrize(("unit", "mib"), SHAPES.values(), ids=SHAPES.keys())
async def test_megabyte_prompts_do_not_hold_small_calls(unit: str, mib: int) -> None:
    # The closing word: a prompt of whitespace alone is refused as empty.
    text = unit * (mib * MIB // len(unit.encode())) + "end"
    async with running_sidecar(_counting_config(RAISED)) as sidecar:
        decision = await _small_beats_big(sidecar, sidecar.stub.Route(_route(text)))
    assert decision.candidates[0].model == "gpt"
    assert decision.estimated_input_tokens > 0


async def test_hundreds_of_thousands_of_messages_do_not_hold_small_calls() -> None:
    request = pb.RouteRequest(messages=_many_messages(400_000))
    async with running_sidecar(_counting_config(RAISED)) as sidecar:
        decision = await _small_beats_big(sidecar, sidecar.stub.Route(request))
    # Three tokens of framing and one each for "user" and "hi" per message, three for the reply.
    assert decision.estimated_input_tokens == 400_000 * 5 + 3


async def test_a_large_chat_is_decided_off_the_loop(openai_server: OpenAIServer) -> None:
    config = _with_provider(_counting_config(RAISED), openai_server)
    request = pb.ChatRequest(messages=user("a" * (2 * MIB)))
    async with running_sidecar(config, PROVIDER_ENV) as sidecar:
        reply = await _small_beats_big(sidecar, sidecar.stub.Chat(request))
    assert reply.model == "gpt"


async def test_a_guarded_cache_lookup_of_a_long_text_does_not_hold_small_calls(
    openai_server: OpenAIServer,
) -> None:
    config = with_changes(
        _with_provider(_counting_config(RAISED), openai_server), cache={"enabled": True}
    )
    text = "x Bob " * (MIB // 6)
    request = pb.ChatRequest(messages=user(text), cache=pb.CacheControl(threshold=0.01))
    async with running_sidecar(config, PROVIDER_ENV) as sidecar:
        first = await _small_beats_big(sidecar, sidecar.stub.Chat(request))
        # Routed on the count the first call left behind, and answered by the exact layer: short.
        again = await sidecar.stub.Chat(request)
    assert not first.cache.hit
    # Too long for the semantic layer (the guard could not vouch for a neighbour): exact only.
    assert (again.cache.hit, again.cache.kind) == (True, "exact")


async def test_the_guard_compares_texts_up_to_its_bound(openai_server: OpenAIServer) -> None:
    config = with_changes(_with_provider(_config(), openai_server), cache={"enabled": True})
    stored = "x Bob " * (MAX_GUARDED_CHARS // 6 - 1)
    # Embedded next to the stored text at any threshold, but with another name in it.
    asked = stored[:-6] + "x Ann "
    async with running_sidecar(config, PROVIDER_ENV) as sidecar:
        await sidecar.stub.Chat(pb.ChatRequest(messages=user(stored)))
        reply = await sidecar.stub.Chat(
            pb.ChatRequest(messages=user(asked), cache=pb.CacheControl(threshold=0.01))
        )
        stats = await sidecar.stub.GetStats(pb.StatsRequest())
    assert not reply.cache.hit
    assert stats.cache.guard_rejections == 1


async def test_only_a_long_count_leaves_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """A prompt of up to OFFLOAD_ABOVE_BYTES is routed on the loop unless it needs an exact count
    of more than COUNT_ON_LOOP_BYTES: then it is asked again on a worker thread."""
    # Time is the other bound; here only bytes decide (the next test spends the time).
    monkeypatch.setattr(offload_module, "COUNT_ON_LOOP_S", 60.0)
    # 100 KB: between 20k and 100k tokens; 8 KB: between 1.6k and 8k.
    far = _route("word " * (100 * 1024 // 5), models=["gpt", "narrow-1000"])
    near = _route("word " * (100 * 1024 // 5), models=["gpt", "narrow-50000"])
    short = _route("word " * (8 * 1024 // 5), models=["gpt", "narrow-5000"])
    assert len(near.SerializeToString()) <= OFFLOAD_ABOVE_BYTES
    async with running_sidecar(_counting_config(RAISED)) as sidecar:
        offload = _offload(sidecar)
        for request, counted_on_a_worker in ((far, False), (short, False), (near, True)):
            started = offload.started
            decision = await sidecar.stub.Route(request)
            assert decision.candidates[0].model == "gpt"
            assert (offload.started > started) == counted_on_a_worker, request.routing
            estimated = any("estimated at" in reason for reason in decision.reasons)
            assert estimated == (request is far)


async def test_a_count_past_the_loops_time_is_finished_on_a_worker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Within COUNT_ON_LOOP_BYTES, but its time spent (none allowed here): the count stops at its
    first look at the clock and the request is routed again on a worker thread, with the same
    answer."""
    monkeypatch.setattr(offload_module, "COUNT_ON_LOOP_S", 0.0)
    text = "word " * (20 * 1024 // 5)  # 4k to 20k tokens: counted, "narrow-5000" lies between
    async with running_sidecar(_counting_config(RAISED)) as sidecar:
        offload = _offload(sidecar)
        decision = await sidecar.stub.Route(_route(text, models=["gpt", "narrow-5000"]))
        assert offload.started == 1
    assert decision.candidates[0].model == "gpt"
    assert decision.estimated_input_tokens == COUNTER.count_messages(
        [ChatMessage("user", text)], "o200k_base"
    )


async def test_a_caller_that_gives_up_stops_its_work() -> None:
    async with running_sidecar(_counting_config(RAISED)) as sidecar:
        offload = _offload(sidecar)
        # Seconds of counting each, on both workers; the callers give up once they run.
        huge = _route("a" * (16 * MIB))
        calls = [asyncio.ensure_future(sidecar.stub.Route(huge)) for _ in range(2)]
        await _until(lambda: offload.running == 2)
        for call in calls:
            call.cancel()
        await _until(lambda: offload.running == 0)
        # Both ended by their stop, not by finishing; the pool serves the next large request.
        assert offload.ended_by_stop == 2
        decision = await sidecar.stub.Route(_route("a" * (256 * 1024)))
        with pytest.raises(grpc.aio.AioRpcError) as late:
            await sidecar.stub.Route(huge, timeout=1.0)
        await _until(lambda: offload.running == 0)
    assert decision.candidates[0].model == "gpt"
    assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert offload.ended_by_stop == 3


async def test_sigterm_ends_a_sidecar_busy_with_a_large_request(tmp_path: Path) -> None:
    port = free_port()
    grace_s = 1.0
    config = _counting_config(
        RAISED, grpc_address=f"127.0.0.1:{port}", graceful_stop_s=grace_s, reload_poll_s=None
    )
    path = tmp_path / "switchpoint.yaml"
    write_config(path, config)
    async with serving(path, port) as process:
        # Without a deadline: only the stop can end this work (tens of seconds of counting).
        busy = asyncio.ensure_future(process.stub.Route(_route("a" * (32 * MIB))))
        # Let the request arrive before the signal; the test asserts the exit, not a time.
        await asyncio.sleep(1.0)
        assert not busy.done()
        process.signal(signal.SIGTERM)
        code = await process.exit_code(timeout_s=grace_s + 8.0)
        with pytest.raises(grpc.aio.AioRpcError):
            await busy
    assert code == 0, "".join(process.output)
