"""The OpenAI-compatible HTTP front through the official `openai` client, against a real sidecar
(gRPC and HTTP in one process) calling a loopback OpenAI provider."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import openai  # type: ignore[import-not-found,unused-ignore]
import pytest
import pytest_asyncio

from switchpoint.v1 import router_pb2 as pb
from tests.providers.fixtures import OPENAI_TEST_KEY
from tests.providers.openai_server import OpenAIServer
from tests.providers.script import error
from tests.sidecar_harness import (
    RunningSidecar,
    one_model_config,
    routing_config,
    running_sidecar,
    user,
)

ENV = {"T_OAI": OPENAI_TEST_KEY}


def _config(server: OpenAIServer) -> dict[str, Any]:
    config = one_model_config(server.base_url, api_key_env="T_OAI", per_mtok=1.0)
    config["providers"]["oai"]["retry"] = {"max_retries": 0}
    config["routing"] = {"stages": {"chat": {"models": ["gpt"]}}}
    return config


@pytest_asyncio.fixture
async def running(openai_server: OpenAIServer) -> AsyncIterator[RunningSidecar]:
    async with running_sidecar(_config(openai_server), ENV, http=True) as running:
        yield running


def _client(running: RunningSidecar, key: str = "unused") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=f"http://127.0.0.1:{running.sidecar.http_port}/v1", api_key=key, max_retries=0
    )


async def test_chat_completion_through_the_sdk(running: RunningSidecar) -> None:
    async with _client(running) as client:
        answer = await client.chat.completions.with_raw_response.create(
            model="gpt", messages=[{"role": "user", "content": "hello"}], max_tokens=20
        )
    completion = answer.parse()
    assert completion.model == "gpt"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.total_tokens > 0
    assert answer.headers["x-switchpoint-model"] == "gpt"
    assert answer.headers["x-switchpoint-level"] == "override"
    assert answer.headers["x-switchpoint-request-id"] == completion.id


@pytest.mark.parametrize(
    "model", ["switchpoint/auto", "switchpoint/balanced", "switchpoint/stage/chat"]
)
async def test_virtual_models_route(running: RunningSidecar, model: str) -> None:
    async with _client(running) as client:
        completion = await client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hello"}]
        )
    assert completion.model == "gpt"


async def test_streaming_with_usage(running: RunningSidecar) -> None:
    async with _client(running) as client:
        stream = await client.chat.completions.create(
            model="gpt",
            messages=[{"role": "user", "content": "tell me more"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [c async for c in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop"
    assert finishes.count("stop") == 1
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens > 0


async def test_errors_are_the_sdks_own_types(
    running: RunningSidecar, openai_server: OpenAIServer
) -> None:
    async with _client(running) as client:
        with pytest.raises(openai.NotFoundError) as missing:
            await client.chat.completions.create(
                model="nope", messages=[{"role": "user", "content": "x"}]
            )
        assert missing.value.code == "model_not_found"
        with pytest.raises(openai.BadRequestError) as bad:
            await client.chat.completions.create(
                model="gpt", messages=[{"role": "user", "content": "x"}], n=2
            )
        assert "n:" in bad.value.message
        with pytest.raises(openai.BadRequestError) as tools:
            await client.chat.completions.create(
                model="gpt",
                messages=[{"role": "user", "content": "x"}],
                tools=[{"type": "function", "function": {"name": "f"}}],
            )
        assert "tools" in tools.value.message
        openai_server.script.push(error(429, retry_after=7))
        with pytest.raises(openai.RateLimitError) as provider_limited:
            await client.chat.completions.create(
                model="gpt", messages=[{"role": "user", "content": "x"}]
            )
        # The provider's own delay, passed on.
        assert provider_limited.value.response.headers["retry-after"] == "7"


async def test_models_list(running: RunningSidecar) -> None:
    async with _client(running) as client:
        models = await client.models.list()
    names = [m.id for m in models.data]
    assert names[0] == "gpt"
    assert models.data[0].owned_by == "oai"
    assert "switchpoint/auto" in names
    assert "switchpoint/balanced" in names
    assert "switchpoint/stage/chat" in names


@pytest.mark.parametrize(
    ("model", "routing"),
    [
        ("switchpoint/auto", {}),
        ("switchpoint/thrifty", {"strategy": "thrifty"}),
        ("switchpoint/stage/architecture", {"stage": "architecture"}),
        ("cheap", {"models": ["cheap"]}),
    ],
)
async def test_grpc_and_http_decide_alike(
    openai_server: OpenAIServer, model: str, routing: dict[str, Any]
) -> None:
    config = routing_config(openai_server.base_url)
    config["providers"]["openai"]["api_key_env"] = "T_OAI"
    async with running_sidecar(config, ENV, http=True) as running:
        # Route calls no provider, so nothing it does changes the next decision.
        decided = await running.stub.Route(
            pb.RouteRequest(messages=user("same"), routing=pb.RoutingOptions(**routing))
        )
        async with _client(running) as client:
            answer = await client.chat.completions.with_raw_response.create(
                model=model, messages=[{"role": "user", "content": "same"}]
            )
    assert answer.headers["x-switchpoint-model"] == decided.model
    level = pb.DecisionLevel.Name(decided.level).removeprefix("DECISION_LEVEL_").lower()
    assert answer.headers["x-switchpoint-level"] == level
    candidates = [c.model for c in decided.candidates]
    assert len(candidates) > 1 or model == "cheap"
    assert answer.headers["x-switchpoint-candidates"].split(",") == candidates


async def test_a_rate_limit_is_the_sdks_rate_limit_error_with_retry_after(
    openai_server: OpenAIServer,
) -> None:
    config = _config(openai_server)
    config["limits"] = [{"name": "tenant-rpm", "match": {"tenant": "*"}, "rpm": 2}]
    async with running_sidecar(config, ENV, http=True) as running, _client(running) as client:
        headers = {"x-switchpoint-tenant": "acme"}
        for _ in range(2):
            await client.chat.completions.create(
                model="gpt", messages=[{"role": "user", "content": "x"}], extra_headers=headers
            )
        with pytest.raises(openai.RateLimitError) as limited:
            await client.chat.completions.create(
                model="gpt", messages=[{"role": "user", "content": "x"}], extra_headers=headers
            )
    assert "tenant-rpm[tenant=acme]" in limited.value.message
    # One request refills in 60/2 s: a whole number of seconds, never 0.
    assert 1 <= int(limited.value.response.headers["retry-after"]) <= 30
