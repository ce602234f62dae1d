"""OpenAICompatAdapter against the OpenAI loopback server, over real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
import pytest_asyncio

from switchpoint.errors import ErrorClass, ProviderError
from switchpoint.providers import create_adapter
from switchpoint.providers.base import ChatMessage, ProviderAdapter, ProviderRequest, SentMark
from tests.providers.fixtures import (
    OPENAI_TEST_KEY,
    collect_stream,
    expect_failure,
    leaked_fragments,
    openai_adapter,
    openai_server,
)
from tests.providers.openai_server import (
    LLAMA_CPP_CONTEXT_ERROR,
    VLLM_CONTEXT_ERROR,
    OpenAIServer,
    context_length_error,
    openai_error,
)
from tests.providers.script import error, garbage, hang, reset, stream_cut, stream_error
from tests.support.waiting import wait_until

__all__ = ["openai_adapter", "openai_server"]  # fixtures, imported for pytest to find

MODEL = "gpt-4o-mini"
REQUEST = ProviderRequest(
    upstream_model=MODEL,
    messages=[
        ChatMessage("system", "You answer briefly."),
        ChatMessage("user", "first question"),
        ChatMessage("assistant", "first answer"),
        ChatMessage("user", "tell me about routing"),
    ],
)
ANSWER = f"[{MODEL}] tell me about routing"
ANSWER_TOKENS = [f"[{MODEL}] ", "tell ", "me ", "about ", "routing"]
INPUT_WORDS = 3 + 2 + 2 + 4  # the server counts words across all messages


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


# Error classes from OpenAI's own error bodies


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (400, ErrorClass.INVALID_REQUEST),
        (401, ErrorClass.AUTH),
        (403, ErrorClass.AUTH),
        (404, ErrorClass.NOT_FOUND),
        (408, ErrorClass.TIMEOUT),
        (409, ErrorClass.INVALID_REQUEST),
        (422, ErrorClass.INVALID_REQUEST),
        (429, ErrorClass.RATE_LIMITED),
        (500, ErrorClass.SERVER_ERROR),
        (502, ErrorClass.SERVER_ERROR),
        (503, ErrorClass.SERVER_ERROR),
        (504, ErrorClass.SERVER_ERROR),
        (529, ErrorClass.OVERLOADED),
    ],
)
@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
async def test_http_status_classes(
    openai_server: OpenAIServer,
    openai_adapter: ProviderAdapter,
    status: int,
    expected: ErrorClass,
    stream: bool,
) -> None:
    openai_server.script.push(error(status))
    failure = await expect_failure(openai_adapter, REQUEST, stream=stream)
    assert failure.error_class is expected
    assert failure.status == status
    assert failure.provider == "openai-loopback"
    assert f"HTTP {status}" in str(failure)


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (400, context_length_error(), ErrorClass.CONTEXT_WINDOW),
        (
            400,
            openai_error("flagged", code="content_policy_violation"),
            ErrorClass.CONTENT_POLICY,
        ),
        (
            429,
            openai_error("You exceeded your quota", "insufficient_quota", "insufficient_quota"),
            ErrorClass.AUTH,
        ),
        (400, VLLM_CONTEXT_ERROR, ErrorClass.CONTEXT_WINDOW),
        (400, LLAMA_CPP_CONTEXT_ERROR, ErrorClass.CONTEXT_WINDOW),
        # A proxy's HTML page in front of the provider.
        (502, "<html><body><h1>502 Bad Gateway</h1></body></html>", ErrorClass.SERVER_ERROR),
    ],
    ids=["context_length", "content_policy", "insufficient_quota", "vllm", "llama_cpp", "html"],
)
async def test_error_bodies_refine_the_class(
    openai_server: OpenAIServer,
    openai_adapter: ProviderAdapter,
    status: int,
    body: object,
    expected: ErrorClass,
) -> None:
    openai_server.script.push(error(status, body))
    failure = await expect_failure(openai_adapter, REQUEST)
    assert failure.error_class is expected


async def test_the_provider_message_and_labels_reach_the_error(
    openai_server: OpenAIServer, openai_adapter: ProviderAdapter
) -> None:
    openai_server.script.push(error(400, context_length_error()))
    failure = await expect_failure(openai_adapter, REQUEST)
    assert "context_length_exceeded" in failure.detail
    assert "maximum context length is 8192 tokens" in failure.detail


async def test_long_messages_are_cut(
    openai_server: OpenAIServer, openai_adapter: ProviderAdapter
) -> None:
    openai_server.script.push(error(500, openai_error("x" * 5000, "server_error")))
    failure = await expect_failure(openai_adapter, REQUEST)
    assert len(failure.detail) <= 300
    assert failure.detail.endswith("...")


# Retry-After


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "7"}, 7.0),
        ({"retry-after": "1.5"}, 1.5),
        ({"retry-after-ms": "250"}, 0.25),
        ({"retry-after-ms": "250", "retry-after": "1"}, 0.25),  # the precise one wins
        ({"retry-after": "soon"}, None),
        ({"retry-after": "-3"}, None),
        ({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0.0),  # in the past: retry now
        ({}, None),
    ],
)
async def test_retry_after_forms(
    openai_server: OpenAIServer,
    openai_adapter: ProviderAdapter,
    headers: dict[str, str],
    expected: float | None,
) -> None:
    openai_server.script.push(error(429, headers=headers))
    failure = await expect_failure(openai_adapter, REQUEST)
    assert failure.retry_after_s == expected


async def test_retry_after_as_an_http_date(
    openai_server: OpenAIServer, openai_adapter: ProviderAdapter
) -> None:
    when = datetime.now(UTC) + timedelta(seconds=30)
    openai_server.script.push(error(503, retry_after=format_datetime(when, usegmt=True)))
    failure = await expect_failure(openai_adapter, REQUEST, stream=True)
    assert failure.retry_after_s is not None
    assert 27.0 <= failure.retry_after_s <= 30.0


# The API key never appears in an error


async def test_a_rejected_key_is_not_echoed() -> None:
    wrong_key = "sk-WRONG-a1b2c3d4e5f6a7b8c9d0-not-the-right-one"
    with OpenAIServer(api_key=OPENAI_TEST_KEY) as server:
        adapter = create_adapter("openai-loopback", "openai", server.base_url, wrong_key)
        try:
            failure = await expect_failure(adapter, REQUEST)
        finally:
            await adapter.aclose()
    assert failure.error_class is ErrorClass.AUTH
    assert "Incorrect API key provided" in failure.detail  # the server did echo it
    assert leaked_fragments(str(failure), wrong_key) == []
    assert "Bearer" not in str(failure)


@pytest.mark.parametrize(
    "leak",
    [
        OPENAI_TEST_KEY,
        OPENAI_TEST_KEY[:12] + "*" * 30 + OPENAI_TEST_KEY[-4:],  # OpenAI's masked echo
        f"headers: {{'Authorization': 'Bearer {OPENAI_TEST_KEY}'}}",
    ],
    ids=["whole", "masked", "header_dump"],
)
async def test_the_key_is_scrubbed_from_error_bodies(
    openai_server: OpenAIServer, openai_adapter: ProviderAdapter, leak: str
) -> None:
    openai_server.script.push(error(500, openai_error(f"upstream said: {leak}", "server_error")))
    failure = await expect_failure(openai_adapter, REQUEST)
    assert "upstream said" in failure.detail
    assert "[redacted]" in failure.detail
    assert leaked_fragments(str(failure), OPENAI_TEST_KEY) == []


async def test_the_key_is_scrubbed_from_garbage_and_stream_errors(
    openai_server: OpenAIServer, openai_adapter: ProviderAdapter
) -> None:
    openai_server.script.push(
        error(200, f"<html>{OPENAI_TEST_KEY}</html>"),
        stream_error(1, body=openai_error(f"key {OPENAI_TEST_KEY} throttled", "rate_limit_error")),
    )
    not_json = await expect_failure(openai_adapter, REQUEST)
    mid_stream = await expect_failure(openai_adapter, REQUEST, stream=True)
    for failure in (not_json, mid_stream):
        assert leaked_fragments(str(failure), OPENAI_TEST_KEY) == []
    assert mid_stream.error_class is ErrorClass.RATE_LIMITED


# Bodies that break the protocol


async def test_garbage_is_a_bad_response(
    openai_server: OpenAIServer, openai_adapter: ProviderAdapter
) -> None:
    openai_server.script.push(garbage(), garbage())
    failure = await expect_failure(openai_adapter, REQUEST)
    assert failure.error_class is ErrorClass.BAD_RESPONSE
    assert "response is not JSON" in failure.detail
    streamed = await expect_failure(openai_adapter, REQUEST, stream=True)
    assert streamed.error_class is ErrorClass.BAD_RESPONSE
    assert "stream chunk is not JSON" in streamed.detail


@pytest.mark.parametrize(
    ("body", "what"),
    [
        ([1, 2], "response is not a JSON object"),
        ({"choices": []}, "missing choices[0]"),
        ({"choices": [{"message": {"role": "assistant"}}]}, "missing choices[0].message.content"),
        ({"choices": [{"message": {"content": 42}}]}, "choices[0].message.content is not a string"),
        (
            {"choices": [{"message": {"content": "hi"}}], "usage": {"prompt_tokens": "3"}},
            "usage.prompt_tokens is not a token count",
        ),
    ],
)
async def test_ill_shaped_answers_name_what_was_wrong(
    openai_server: OpenAIServer, openai_adapter: ProviderAdapter, body: object, what: str
) -> None:
    openai_server.script.push(error(200, body))
    failure = await expect_failure(openai_adapter, REQUEST)
    assert failure.error_class is ErrorClass.BAD_RESPONSE
    assert what in failure.detail


async def test_null_content_is_an_empty_answer(
    openai_server: OpenAIServer, openai_adapter: ProviderAdapter
) -> None:
    body = {
        "choices": [{"message": {"content": None, "refusal": "no"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1},
    }
    openai_server.script.push(error(200, body))
    completion = await openai_adapter.complete(REQUEST, timeout_s=None)
    assert (completion.content, completion.output_tokens) == ("", 1)


async def test_an_error_body_with_status_200_is_still_an_error(
    openai_server: OpenAIServer, openai_adapter: ProviderAdapter
) -> None:
    openai_server.script.push(error(200, openai_error("model is loading", "server_error")))
    failure = await expect_failure(openai_adapter, REQUEST)
    assert failure.error_class is ErrorClass.SERVER_ERROR


async def test_a_json_answer_to_a_stream_request_is_not_an_empty_stream(
    openai_server: OpenAIServer, openai_adapter: ProviderAdapter
) -> None:
    # A server that ignored `stream: true` and answered one JSON completion.
    openai_server.script.push(error(200, {"choices": [{"message": {"content": "hi"}}]}))
    failure = await expect_failure(openai_adapter, REQUEST, stream=True)
    assert failure.error_class is ErrorClass.BAD_RESPONSE
    assert "expected an event stream" in failure.detail


async def test_an_unencodable_request_fails_before_sending(
    openai_server: OpenAIServer, openai_adapter: ProviderAdapter
) -> None:
    request = ProviderRequest(MODEL, REQUEST.messages, temperature=float("nan"))
    with pytest.raises(ProviderError) as caught:
        await openai_adapter.complete(request, timeout_s=None)
    assert caught.value.error_class is ErrorClass.INVALID_REQUEST
    assert openai_server.requests == []


# Broken connections, timeouts and streams that die


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
async def test_a_reset_connection_is_connect(
    openai_server: OpenAIServer, openai_adapter: ProviderAdapter, stream: bool
) -> None:
    openai_server.script.push(reset())
    failure = await expect_failure(openai_adapter, REQUEST, stream=stream)
    assert failure.error_class is ErrorClass.CONNECT


async def test_a_body_cut_mid_way_is_connect(
    openai_server: OpenAIServer, openai_adapter: ProviderAdapter
) -> None:
    openai_server.script.push(stream_cut(2))  # non-streamed: half the JSON, then a reset
    failure = await expect_failure(openai_adapter, REQUEST)
    assert failure.error_class is ErrorClass.CONNECT


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
async def test_silence_past_the_per_call_timeout_is_timeout(
    openai_server: OpenAIServer, openai_adapter: ProviderAdapter, stream: bool
) -> None:
    openai_server.script.push(hang(5.0))
    failure = await expect_failure(openai_adapter, REQUEST, stream=stream, timeout_s=0.3)
    assert failure.error_class is ErrorClass.TIMEOUT


async def test_the_per_call_timeout_overrides_the_adapter_default(
    openai_server: OpenAIServer,
) -> None:
    adapter = create_adapter(
        "openai-loopback", "openai", openai_server.base_url, OPENAI_TEST_KEY, timeout_s=0.2
    )
    try:
        openai_server.script.push(hang(0.6), hang(0.6))
        with pytest.raises(ProviderError) as caught:
            await adapter.complete(REQUEST, timeout_s=None)  # the adapter's 0.2 s
        assert caught.value.error_class is ErrorClass.TIMEOUT
        completion = await adapter.complete(REQUEST, timeout_s=5.0)
        assert completion.content == ANSWER
    finally:
        await adapter.aclose()


async def test_a_stream_that_stalls_mid_way_times_out_after_its_deltas(
    openai_server: OpenAIServer, openai_adapter: ProviderAdapter
) -> None:
    openai_server.script.push(hang(5.0, after_chunks=2))
    result = await collect_stream(openai_adapter, REQUEST, timeout_s=0.3)
    assert result.deltas == ANSWER_TOKENS[:2]
    assert result.end is None
    assert result.error is not None
    assert result.error.error_class is ErrorClass.TIMEOUT


@pytest.mark.parametrize("abort", [False, True], ids=["clean_end", "reset"])
async def test_a_stream_cut_mid_way_raises_after_its_deltas(
    openai_server: OpenAIServer, openai_adapter: ProviderAdapter, abort: bool
) -> None:
    openai_server.script.push(stream_cut(3, abort=abort))
    result = await collect_stream(openai_adapter, REQUEST)
    assert result.deltas == ANSWER_TOKENS[:3]
    assert result.end is None  # a truncated stream never ends "successfully"
    assert result.error is not None
    assert result.error.error_class is ErrorClass.CONNECT


async def test_an_error_chunk_mid_stream_is_classified(
    openai_server: OpenAIServer, openai_adapter: ProviderAdapter
) -> None:
    openai_server.script.push(stream_error(2, status=500))
    result = await collect_stream(openai_adapter, REQUEST)
    assert result.deltas == ANSWER_TOKENS[:2]
    assert result.end is None
    assert result.error is not None
    assert result.error.error_class is ErrorClass.SERVER_ERROR
    assert result.error.status is None  # the HTTP status was 200
