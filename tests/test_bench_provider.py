"""The loopback provider behind `switchpoint bench`'s Chat figures: what the adapter expects."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import grpc
import httpx
import pytest
import pytest_asyncio

from switchpoint.bench.provider import ANSWER, FixedLatencyProvider, sidecar_process
from switchpoint.errors import ErrorClass, ProviderError
from switchpoint.providers import create_adapter
from switchpoint.providers.base import ChatMessage, ProviderAdapter, ProviderRequest
from switchpoint.v1 import router_pb2 as pb
from switchpoint.v1 import router_pb2_grpc

DELAY_S = 0.02
REQUEST = ProviderRequest(upstream_model="bench-model", messages=(ChatMessage("user", "hi"),))


@pytest_asyncio.fixture
async def provider() -> AsyncIterator[tuple[FixedLatencyProvider, int]]:
    server = FixedLatencyProvider(DELAY_S)
    port = await server.start()
    try:
        yield server, port
    finally:
        await server.close()


def _adapter(base_url: str) -> ProviderAdapter:
    return create_adapter("bench", "openai", base_url, None, timeout_s=5.0)


async def test_completions_arrive_after_the_delay_over_one_kept_alive_connection(
    provider: tuple[FixedLatencyProvider, int],
) -> None:
    server, port = provider
    adapter = _adapter(f"http://127.0.0.1:{port}/v1")
    try:
        began = time.perf_counter()
        first = await adapter.complete(REQUEST, timeout_s=5.0)
        assert time.perf_counter() - began >= DELAY_S
        assert (first.content, first.finish_reason) == (ANSWER, "stop")
        assert (first.input_tokens, first.output_tokens) == (12, 1)
        for _ in range(3):
            assert (await adapter.complete(REQUEST, timeout_s=5.0)).content == ANSWER
    finally:
        await adapter.aclose()
    assert server.connections == 1


async def test_other_paths_get_openais_404_and_a_body_without_a_model_a_400(
    provider: tuple[FixedLatencyProvider, int],
) -> None:
    _, port = provider
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        missing = await client.post("/v1/embeddings", json={"model": "m", "input": "hi"})
        no_model = await client.post("/v1/chat/completions", json={"messages": []})
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "unknown_url"
    assert no_model.status_code == 400
    assert "model" in no_model.json()["error"]["message"]


async def test_closing_ends_connections_a_client_keeps_open(
    provider: tuple[FixedLatencyProvider, int],
) -> None:
    server, port = provider
    adapter = _adapter(f"http://127.0.0.1:{port}/v1")
    try:
        await adapter.complete(REQUEST, timeout_s=5.0)
        await server.close()  # the adapter still holds its idle connection
        with pytest.raises(ProviderError) as caught:
            await adapter.complete(REQUEST, timeout_s=5.0)
        assert caught.value.error_class in (ErrorClass.CONNECT, ErrorClass.BAD_RESPONSE)
    finally:
        await adapter.aclose()


async def test_a_sidecar_that_cannot_start_says_why() -> None:
    with pytest.raises(RuntimeError, match=r"(?s)did not start.*models"):
        async with sidecar_process({"providers": {}}):
            pass


async def test_the_sidecar_process_serves_chat_against_the_provider(
    provider: tuple[FixedLatencyProvider, int],
) -> None:
    server, port = provider
    config = {
        "providers": {"p": {"kind": "openai", "base_url": f"http://127.0.0.1:{port}/v1"}},
        "models": [
            {
                "name": "m",
                "provider": "p",
                "context_window": 4096,
                "quality": 0.5,
                "price": {"input_per_mtok": 1.0, "output_per_mtok": 1.0},
                "latency_prior": {"ttft_ms": 100, "tpot_ms": 10},
            }
        ],
    }
    async with (
        sidecar_process(config) as sidecar_port,
        grpc.aio.insecure_channel(f"127.0.0.1:{sidecar_port}") as channel,
    ):
        reply = await router_pb2_grpc.RouterStub(channel).Chat(
            pb.ChatRequest(messages=[pb.Message(role="user", content="hi")])
        )
    assert (reply.content, reply.model) == (ANSWER, "m")
    assert server.connections == 1
