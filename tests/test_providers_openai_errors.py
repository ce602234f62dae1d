"""OpenAICompatAdapter against the OpenAI loopback server, over real HTTP on 127.0.0.1: error
classes, Retry-After, key scrubbing, broken bodies, connections and streams."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from switchpoint.errors import ErrorClass, ProviderError
from switchpoint.providers import create_adapter
from switchpoint.providers.base import ProviderAdapter, ProviderRequest
from tests.providers.fixtures import (
    OPENAI_TEST_KEY,
    collect_stream,
    expect_failure,
    leaked_fragments,
    openai_adapter,
    openai_server,
)
from tests.providers.openai_request import ANSWER, ANSWER_TOKENS, MODEL, REQUEST
from tests.providers.openai_server import (
    LLAMA_CPP_CONTEXT_ERROR,
    VLLM_CONTEXT_ERROR,
    OpenAIServer,
    context_length_error,
    openai_error,
)
from tests.providers.script import error, garbage, hang, reset, stream_cut, stream_error

__all__ = ["openai_adapter", "openai_server"]  # fixtures, imported for pytest to find


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
