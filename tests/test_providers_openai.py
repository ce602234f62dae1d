"""OpenAICompatAdapter against the OpenAI loopback server, over real HTTP on 127.0.0.1: successful
calls and connections (errors: test_providers_openai_errors.py)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
import pytest_asyncio

from switchpoint.errors import ErrorClass
from switchpoint.providers import create_adapter
from switchpoint.providers.base import ChatMessage, ProviderAdapter, ProviderRequest, SentMark
from tests.providers.fixtures import (
    OPENAI_TEST_KEY,
    collect_stream,
    expect_failure,
    openai_adapter,
    openai_server,
)
from tests.providers.openai_request import ANSWER, ANSWER_TOKENS, INPUT_WORDS, MODEL, REQUEST
from tests.providers.openai_server import (
    OpenAIServer,
)
from tests.providers.script import hang, reset
from tests.support.waiting import wait_until

__all__ = ["openai_adapter", "openai_server"]  # fixtures, imported for pytest to find


@pytest_asyncio.fixture
async def keyless_server_and_adapter() -> AsyncIterator[tuple[OpenAIServer, ProviderAdapter]]:
    """A local-style server that reports no usage, and an adapter without a key."""
    with OpenAIServer(reports_usage=False) as server:
        adapter = create_adapter("local", "openai", server.base_url, None)
        try:
            yield server, adapter
        finally:
            await adapter.aclose()


def closed_port() -> int:
    """A loopback port nothing listens on (it was free a moment ago)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


# Successful calls


async def test_complete_returns_text_finish_reason_and_reported_usage(
    openai_adapter: ProviderAdapter,
) -> None:
    completion = await openai_adapter.complete(REQUEST, timeout_s=None)
    assert completion.content == ANSWER
    assert completion.finish_reason == "stop"
    assert (completion.input_tokens, completion.output_tokens) == (INPUT_WORDS, 5)


async def test_complete_sends_the_openai_request_body_and_bearer_key(
    openai_server: OpenAIServer, openai_adapter: ProviderAdapter
) -> None:
    request = ProviderRequest(
        upstream_model=MODEL,
        messages=[ChatMessage("system", "sys"), ChatMessage("user", "hi")],
        max_tokens=64,
        temperature=0.2,
        top_p=0.9,
        stop=["\n\n", "END"],
        extra_body={"seed": 7, "temperature": 1.5, "model": "hijack", "stream": True},
    )
    await openai_adapter.complete(request, timeout_s=None)

    [sent] = openai_server.requests
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["authorization"] == f"Bearer {OPENAI_TEST_KEY}"
    assert sent.headers["content-type"] == "application/json"
    assert sent.body == {
        "seed": 7,  # extra_body merged in...
        "model": MODEL,  # ...but it cannot replace protocol fields
        "messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": "hi"}],
        "max_tokens": 64,
        "temperature": 0.2,  # the request's own parameter wins over extra_body's
        "top_p": 0.9,
        "stop": ["\n\n", "END"],
    }


async def test_unset_parameters_are_not_sent(
    openai_server: OpenAIServer, openai_adapter: ProviderAdapter
) -> None:
    await openai_adapter.complete(REQUEST, timeout_s=None)
    body = openai_server.requests[0].body
    assert isinstance(body, dict)
    assert set(body) == {"model", "messages"}


async def test_stream_yields_one_delta_per_token_then_usage(
    openai_server: OpenAIServer, openai_adapter: ProviderAdapter
) -> None:
    result = await collect_stream(openai_adapter, REQUEST)
    assert result.error is None
    assert result.deltas == ANSWER_TOKENS
    assert result.end is not None
    assert result.end.finish_reason == "stop"
    assert (result.end.input_tokens, result.end.output_tokens) == (INPUT_WORDS, 5)

    [sent] = openai_server.requests
    assert isinstance(sent.body, dict)
    assert sent.body["stream"] is True
    assert sent.body["stream_options"] == {"include_usage": True}
    assert sent.headers["accept"] == "text/event-stream"


async def test_max_tokens_cut_is_reported_as_length(openai_adapter: ProviderAdapter) -> None:
    request = ProviderRequest(MODEL, REQUEST.messages, max_tokens=2)
    completion = await openai_adapter.complete(request, timeout_s=None)
    assert (completion.content, completion.finish_reason) == (f"[{MODEL}] tell ", "length")
    result = await collect_stream(openai_adapter, request)
    assert result.end is not None
    assert (result.end.finish_reason, result.end.output_tokens) == ("length", 2)


async def test_without_a_key_no_authorization_header_is_sent(
    keyless_server_and_adapter: tuple[OpenAIServer, ProviderAdapter],
) -> None:
    server, adapter = keyless_server_and_adapter
    await adapter.complete(REQUEST, timeout_s=None)
    assert "authorization" not in server.requests[0].headers


async def test_missing_usage_is_estimated_from_characters_when_not_streaming(
    keyless_server_and_adapter: tuple[OpenAIServer, ProviderAdapter],
) -> None:
    _, adapter = keyless_server_and_adapter
    completion = await adapter.complete(REQUEST, timeout_s=None)
    prompt_chars = sum(len(m.content) for m in REQUEST.messages)
    assert completion.input_tokens == -(-prompt_chars // 4)
    assert completion.output_tokens == -(-len(ANSWER) // 4)


async def test_missing_stream_usage_is_estimated_from_chunks_and_characters(
    keyless_server_and_adapter: tuple[OpenAIServer, ProviderAdapter],
) -> None:
    _, adapter = keyless_server_and_adapter
    result = await collect_stream(adapter, REQUEST)
    assert result.end is not None
    prompt_chars = sum(len(m.content) for m in REQUEST.messages)
    assert result.end.input_tokens == -(-prompt_chars // 4)
    assert result.end.output_tokens == len(ANSWER_TOKENS)  # one token per content chunk


async def test_a_stream_without_done_is_complete_once_finish_reason_arrived() -> None:
    with OpenAIServer(sends_done=False) as server:
        adapter = create_adapter("lenient", "openai", server.base_url, None)
        try:
            result = await collect_stream(adapter, REQUEST)
        finally:
            await adapter.aclose()
    assert result.error is None
    assert result.end is not None
    assert result.end.output_tokens == 5
    assert result.text == ANSWER


# Connections


async def test_sequential_calls_reuse_one_keep_alive_connection(
    openai_server: OpenAIServer, openai_adapter: ProviderAdapter
) -> None:
    await openai_adapter.complete(REQUEST, timeout_s=None)
    assert (await collect_stream(openai_adapter, REQUEST)).end is not None
    await openai_adapter.complete(REQUEST, timeout_s=None)
    ports = {sent.client_port for sent in openai_server.requests}
    assert len(openai_server.requests) == 3
    assert len(ports) == 1


async def test_after_a_reset_the_next_call_opens_a_new_connection(
    openai_server: OpenAIServer, openai_adapter: ProviderAdapter
) -> None:
    openai_server.script.push(reset())
    await expect_failure(openai_adapter, REQUEST)
    await openai_adapter.complete(REQUEST, timeout_s=None)
    first, second = openai_server.requests
    assert first.client_port != second.client_port


async def test_environment_proxies_are_not_used_for_loopback_providers(
    openai_server: OpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    dead_proxy = f"http://127.0.0.1:{closed_port()}"
    for variable in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(variable, dead_proxy)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    adapter = create_adapter("local", "openai", openai_server.base_url, OPENAI_TEST_KEY)
    try:
        completion = await adapter.complete(REQUEST, timeout_s=None)
    finally:
        await adapter.aclose()
    assert completion.content == ANSWER


async def test_remote_providers_go_through_the_environment_proxy(
    openai_server: OpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The loopback server plays the proxy for a host that does not resolve: the request can only
    # reach it through the proxy setting, and it answers the absolute-form target it does not
    # route ("POST http://provider.invalid/v1/...") with its 404. Directly, the call could not
    # even connect.
    for variable in ("HTTP_PROXY", "http_proxy"):
        monkeypatch.setenv(variable, f"http://127.0.0.1:{openai_server.port}")
    monkeypatch.setenv("NO_PROXY", "exempt.invalid")
    monkeypatch.delenv("no_proxy", raising=False)
    proxied = create_adapter("remote", "openai", "http://provider.invalid/v1", OPENAI_TEST_KEY)
    exempt = create_adapter("exempt", "openai", "http://exempt.invalid/v1", OPENAI_TEST_KEY)
    # httpx's transport runs through a proxy: it marks a request sent as its headers go out.
    proxied_mark, exempt_mark = SentMark(), SentMark()
    try:
        through_proxy = await expect_failure(proxied, replace(REQUEST, sent=proxied_mark))
        direct = await expect_failure(exempt, replace(REQUEST, sent=exempt_mark))
    finally:
        await proxied.aclose()
        await exempt.aclose()
    assert through_proxy.error_class is ErrorClass.NOT_FOUND
    assert direct.error_class is ErrorClass.CONNECT  # NO_PROXY: resolved directly, and fails
    assert (proxied_mark.sent, exempt_mark.sent) == (True, False)


async def test_waiting_for_a_pooled_connection_is_bounded_by_the_call(
    openai_server: OpenAIServer,
) -> None:
    # One connection, held by a call the server keeps waiting: a second call with 0.2 s left
    # gives up waiting for the pool as a timeout, rather than waiting out the provider's default
    # timeout and being served when the first call ends.
    adapter = create_adapter(
        "one-conn", "openai", openai_server.base_url, OPENAI_TEST_KEY, max_connections=1
    )
    openai_server.script.push(hang(1.0))
    try:
        first = asyncio.create_task(adapter.complete(REQUEST, timeout_s=5.0))
        await wait_until(lambda: openai_server.requests)
        failure = await expect_failure(adapter, REQUEST, timeout_s=0.2)
        assert (await first).content == ANSWER
    finally:
        await adapter.aclose()
    assert failure.error_class is ErrorClass.TIMEOUT
    assert len(openai_server.requests) == 1


async def test_refused_connection_is_connect() -> None:
    base_url = f"http://127.0.0.1:{closed_port()}/v1"
    adapter = create_adapter("gone", "openai", base_url, OPENAI_TEST_KEY)
    try:
        failure = await expect_failure(adapter, REQUEST)
    finally:
        await adapter.aclose()
    assert failure.error_class is ErrorClass.CONNECT
    assert failure.provider == "gone"
