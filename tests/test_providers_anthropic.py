"""AnthropicAdapter against the Anthropic loopback server, over real HTTP on 127.0.0.1."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from switchpoint.errors import ErrorClass
from switchpoint.providers import create_adapter
from switchpoint.providers.anthropic import finish_reason_of
from switchpoint.providers.base import ChatMessage, ProviderAdapter, ProviderRequest
from tests.providers.anthropic_server import (
    AnthropicServer,
    anthropic_error,
    prompt_too_long_error,
)
from tests.providers.fixtures import (
    ANTHROPIC_TEST_KEY,
    anthropic_adapter,
    anthropic_server,
    collect_stream,
    expect_failure,
    leaked_fragments,
)
from tests.providers.script import error, garbage, hang, reset, stream_cut, stream_error

__all__ = ["anthropic_adapter", "anthropic_server"]  # fixtures, imported for pytest to find

MODEL = "claude-3-5-haiku-latest"
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
INPUT_WORDS = 3 + 2 + 2 + 4  # the server counts the system prompt and every message


def message(content: list[dict[str, object]], **fields: object) -> dict[str, object]:
    """A 200 Messages body with the given content blocks."""
    body: dict[str, object] = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": MODEL,
        "content": content,
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 10, "output_tokens": 3},
    }
    return body | fields


# Successful calls


async def test_complete_returns_text_finish_reason_and_usage(
    anthropic_adapter: ProviderAdapter,
) -> None:
    completion = await anthropic_adapter.complete(REQUEST, timeout_s=None)
    assert completion.content == ANSWER
    assert completion.finish_reason == "stop"  # end_turn, in the shared vocabulary
    assert (completion.input_tokens, completion.output_tokens) == (INPUT_WORDS, 5)


async def test_complete_sends_the_messages_request(
    anthropic_server: AnthropicServer, anthropic_adapter: ProviderAdapter
) -> None:
    request = ProviderRequest(
        upstream_model=MODEL,
        messages=[
            ChatMessage("system", "Be brief."),
            ChatMessage("user", "hi"),
            ChatMessage("assistant", "hello"),
            ChatMessage("system", "Be kind."),
            ChatMessage("user", "again"),
        ],
        temperature=0.3,
        top_p=0.8,
        stop=["STOP"],
        extra_body={"top_k": 5, "temperature": 1.0, "system": "hijack", "stream": True},
    )
    await anthropic_adapter.complete(request, timeout_s=None)

    [sent] = anthropic_server.requests
    assert sent.path == "/v1/messages"
    assert sent.headers["x-api-key"] == ANTHROPIC_TEST_KEY
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert sent.headers["content-type"] == "application/json"
    assert "authorization" not in sent.headers
    assert sent.body == {
        "top_k": 5,  # extra_body merged in, but it cannot replace protocol fields
        "model": MODEL,
        "system": "Be brief.\n\nBe kind.",  # every system message, top-level, in order
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "again"},
        ],
        "max_tokens": 1024,  # required by Anthropic: the adapter's default
        "temperature": 0.3,  # the request's own parameter wins over extra_body's
        "top_p": 0.8,
        "stop_sequences": ["STOP"],
    }


async def test_max_tokens_comes_from_the_request_then_the_config_then_the_default(
    anthropic_server: AnthropicServer,
) -> None:
    adapter = create_adapter(
        "anthropic-loopback",
        "anthropic",
        anthropic_server.base_url,
        ANTHROPIC_TEST_KEY,
        anthropic_default_max_tokens=77,
    )
    try:
        await adapter.complete(REQUEST, timeout_s=None)
        config_request = ProviderRequest(MODEL, REQUEST.messages, extra_body={"max_tokens": 300})
        await adapter.complete(config_request, timeout_s=None)
        own_request = ProviderRequest(
            MODEL, REQUEST.messages, max_tokens=12, extra_body={"max_tokens": 300}
        )
        await adapter.complete(own_request, timeout_s=None)
    finally:
        await adapter.aclose()
    sent = [r.body["max_tokens"] for r in anthropic_server.requests if isinstance(r.body, dict)]
    assert sent == [77, 300, 12]


async def test_stream_yields_text_deltas_then_usage(
    anthropic_server: AnthropicServer, anthropic_adapter: ProviderAdapter
) -> None:
    result = await collect_stream(anthropic_adapter, REQUEST)
    assert result.error is None
    assert result.deltas == ANSWER_TOKENS
    assert result.end is not None
    assert result.end.finish_reason == "stop"
    assert (result.end.input_tokens, result.end.output_tokens) == (INPUT_WORDS, 5)

    [sent] = anthropic_server.requests
    assert isinstance(sent.body, dict)
    assert sent.body["stream"] is True
    assert sent.body["system"] == "You answer briefly."
    assert sent.headers["accept"] == "text/event-stream"


async def test_max_tokens_stop_is_reported_as_length(anthropic_adapter: ProviderAdapter) -> None:
    request = ProviderRequest(MODEL, REQUEST.messages, max_tokens=2)
    completion = await anthropic_adapter.complete(request, timeout_s=None)
    assert (completion.content, completion.finish_reason) == (f"[{MODEL}] tell ", "length")
    result = await collect_stream(anthropic_adapter, request)
    assert result.end is not None
    assert (result.end.finish_reason, result.end.output_tokens) == ("length", 2)


@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("pause_turn", "pause_turn"),  # unknown to the mapping: passed through
        (None, "stop"),
    ],
)
def test_stop_reasons_map_to_finish_reasons(stop_reason: str | None, finish_reason: str) -> None:
    assert finish_reason_of(stop_reason) == finish_reason


async def test_text_blocks_are_joined_and_other_blocks_skipped(
    anthropic_server: AnthropicServer, anthropic_adapter: ProviderAdapter
) -> None:
    blocks: list[dict[str, object]] = [
        {"type": "thinking", "thinking": "hmm", "signature": "x"},
        {"type": "text", "text": "Hello, "},
        {"type": "tool_use", "id": "t1", "name": "f", "input": {}},
        {"type": "text", "text": "world."},
    ]
    anthropic_server.script.push(error(200, message(blocks, stop_reason="stop_sequence")))
    completion = await anthropic_adapter.complete(REQUEST, timeout_s=None)
    assert completion.content == "Hello, world."
    assert completion.finish_reason == "stop"


async def test_cached_prompt_tokens_count_as_input(
    anthropic_server: AnthropicServer, anthropic_adapter: ProviderAdapter
) -> None:
    usage = {
        "input_tokens": 5,
        "cache_creation_input_tokens": 100,
        "cache_read_input_tokens": 1000,
        "output_tokens": 7,
    }
    anthropic_server.script.push(error(200, message([{"type": "text", "text": "x"}], usage=usage)))
    completion = await anthropic_adapter.complete(REQUEST, timeout_s=None)
    assert (completion.input_tokens, completion.output_tokens) == (1105, 7)


# Connections


async def test_sequential_calls_reuse_one_keep_alive_connection(
    anthropic_server: AnthropicServer, anthropic_adapter: ProviderAdapter
) -> None:
    await anthropic_adapter.complete(REQUEST, timeout_s=None)
    assert (await collect_stream(anthropic_adapter, REQUEST)).end is not None
    await anthropic_adapter.complete(REQUEST, timeout_s=None)
    assert len(anthropic_server.requests) == 3
    assert len({sent.client_port for sent in anthropic_server.requests}) == 1


# Error classes from Anthropic's own error bodies


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (400, ErrorClass.INVALID_REQUEST),
        (401, ErrorClass.AUTH),
        (403, ErrorClass.AUTH),
        (404, ErrorClass.NOT_FOUND),
        (408, ErrorClass.TIMEOUT),
        (413, ErrorClass.INVALID_REQUEST),
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
    anthropic_server: AnthropicServer,
    anthropic_adapter: ProviderAdapter,
    status: int,
    expected: ErrorClass,
    stream: bool,
) -> None:
    anthropic_server.script.push(error(status))
    failure = await expect_failure(anthropic_adapter, REQUEST, stream=stream)
    assert failure.error_class is expected
    assert failure.status == status
    assert failure.provider == "anthropic-loopback"


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (400, prompt_too_long_error(), ErrorClass.CONTEXT_WINDOW),
        (
            400,
            anthropic_error(
                "invalid_request_error",
                "input length and `max_tokens` exceed context limit: 198000 + 4096 > 200000",
            ),
            ErrorClass.CONTEXT_WINDOW,
        ),
        # The error type decides even when the status is a plain 500.
        (500, anthropic_error("overloaded_error", "Overloaded"), ErrorClass.OVERLOADED),
    ],
    ids=["prompt_too_long", "context_limit", "overloaded_as_500"],
)
async def test_error_bodies_refine_the_class(
    anthropic_server: AnthropicServer,
    anthropic_adapter: ProviderAdapter,
    status: int,
    body: object,
    expected: ErrorClass,
) -> None:
    anthropic_server.script.push(error(status, body))
    failure = await expect_failure(anthropic_adapter, REQUEST)
    assert failure.error_class is expected


async def test_the_error_type_and_message_reach_the_error(
    anthropic_server: AnthropicServer, anthropic_adapter: ProviderAdapter
) -> None:
    anthropic_server.script.push(error(529))
    failure = await expect_failure(anthropic_adapter, REQUEST)
    assert failure.detail == "overloaded_error: Overloaded"


@pytest.mark.parametrize(
    ("error_type", "expected"),
    [
        ("overloaded_error", ErrorClass.OVERLOADED),
        ("rate_limit_error", ErrorClass.RATE_LIMITED),
        ("api_error", ErrorClass.SERVER_ERROR),
        ("authentication_error", ErrorClass.AUTH),
        ("invalid_request_error", ErrorClass.INVALID_REQUEST),
        ("some_future_error", ErrorClass.SERVER_ERROR),
    ],
)
async def test_an_error_event_mid_stream_raises_after_the_deltas(
    anthropic_server: AnthropicServer,
    anthropic_adapter: ProviderAdapter,
    error_type: str,
    expected: ErrorClass,
) -> None:
    anthropic_server.script.push(stream_error(2, body=anthropic_error(error_type, "went wrong")))
    result = await collect_stream(anthropic_adapter, REQUEST)
    assert result.deltas == ANSWER_TOKENS[:2]
    assert result.end is None
    assert result.error is not None
    assert result.error.error_class is expected
    assert "went wrong" in result.error.detail


async def test_the_default_error_event_is_overloaded(
    anthropic_server: AnthropicServer, anthropic_adapter: ProviderAdapter
) -> None:
    anthropic_server.script.push(stream_error(0))
    failure = await expect_failure(anthropic_adapter, REQUEST, stream=True)
    assert failure.error_class is ErrorClass.OVERLOADED
    assert failure.status is None


# Retry-After


@pytest.mark.parametrize("status", [429, 529])
async def test_retry_after_seconds(
    anthropic_server: AnthropicServer, anthropic_adapter: ProviderAdapter, status: int
) -> None:
    anthropic_server.script.push(error(status, retry_after=12))
    failure = await expect_failure(anthropic_adapter, REQUEST)
    assert failure.retry_after_s == 12.0


async def test_retry_after_as_an_http_date(
    anthropic_server: AnthropicServer, anthropic_adapter: ProviderAdapter
) -> None:
    when = datetime.now(UTC) + timedelta(seconds=60)
    anthropic_server.script.push(error(429, retry_after=format_datetime(when, usegmt=True)))
    failure = await expect_failure(anthropic_adapter, REQUEST, stream=True)
    assert failure.retry_after_s is not None
    assert 57.0 <= failure.retry_after_s <= 60.0


# The API key never appears in an error


async def test_a_rejected_key_is_auth_and_not_echoed(anthropic_server: AnthropicServer) -> None:
    wrong_key = "sk-ant-api03-WRONGa1b2c3d4e5f6a7b8c9d0"
    adapter = create_adapter(
        "anthropic-loopback", "anthropic", anthropic_server.base_url, wrong_key
    )
    try:
        failure = await expect_failure(adapter, REQUEST)
    finally:
        await adapter.aclose()
    assert failure.error_class is ErrorClass.AUTH
    assert failure.detail == "authentication_error: invalid x-api-key"
    assert leaked_fragments(str(failure), wrong_key) == []


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
async def test_the_key_is_scrubbed_from_error_messages(
    anthropic_server: AnthropicServer, anthropic_adapter: ProviderAdapter, stream: bool
) -> None:
    body = anthropic_error("permission_error", f"key {ANTHROPIC_TEST_KEY} may not use {MODEL}")
    anthropic_server.script.push(
        stream_error(1, status=403, body=body) if stream else error(403, body)
    )
    failure = await expect_failure(anthropic_adapter, REQUEST, stream=stream)
    assert failure.error_class is ErrorClass.AUTH
    assert "may not use" in failure.detail
    assert leaked_fragments(str(failure), ANTHROPIC_TEST_KEY) == []
    assert "x-api-key" not in str(failure)


# Bodies that break the protocol


async def test_garbage_is_a_bad_response(
    anthropic_server: AnthropicServer, anthropic_adapter: ProviderAdapter
) -> None:
    anthropic_server.script.push(garbage(), garbage())
    failure = await expect_failure(anthropic_adapter, REQUEST)
    assert failure.error_class is ErrorClass.BAD_RESPONSE
    assert "response is not JSON" in failure.detail
    streamed = await expect_failure(anthropic_adapter, REQUEST, stream=True)
    assert streamed.error_class is ErrorClass.BAD_RESPONSE
    assert "message_start event is not JSON" in streamed.detail


@pytest.mark.parametrize(
    ("body", "what"),
    [
        ({"type": "message", "usage": {"input_tokens": 1, "output_tokens": 1}}, "missing content"),
        (message([{"type": "text", "text": 5}]), "content[0].text is not a string"),
        (
            message([{"type": "text", "text": "x"}], usage={"input_tokens": 1}),
            "missing usage.output_tokens",
        ),
        (message([{"type": "text", "text": "x"}], usage=None), "missing usage"),
    ],
)
async def test_ill_shaped_answers_name_what_was_wrong(
    anthropic_server: AnthropicServer, anthropic_adapter: ProviderAdapter, body: object, what: str
) -> None:
    anthropic_server.script.push(error(200, body))
    failure = await expect_failure(anthropic_adapter, REQUEST)
    assert failure.error_class is ErrorClass.BAD_RESPONSE
    assert what in failure.detail


# Broken connections, timeouts and streams that die


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
async def test_a_reset_connection_is_connect(
    anthropic_server: AnthropicServer, anthropic_adapter: ProviderAdapter, stream: bool
) -> None:
    anthropic_server.script.push(reset())
    failure = await expect_failure(anthropic_adapter, REQUEST, stream=stream)
    assert failure.error_class is ErrorClass.CONNECT


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
async def test_silence_past_the_per_call_timeout_is_timeout(
    anthropic_server: AnthropicServer, anthropic_adapter: ProviderAdapter, stream: bool
) -> None:
    anthropic_server.script.push(hang(5.0))
    failure = await expect_failure(anthropic_adapter, REQUEST, stream=stream, timeout_s=0.3)
    assert failure.error_class is ErrorClass.TIMEOUT


async def test_a_short_hang_within_the_timeout_still_answers(
    anthropic_server: AnthropicServer, anthropic_adapter: ProviderAdapter
) -> None:
    anthropic_server.script.push(hang(0.2, after_chunks=1))
    result = await collect_stream(anthropic_adapter, REQUEST, timeout_s=5.0)
    assert result.error is None
    assert result.text == ANSWER


@pytest.mark.parametrize("abort", [False, True], ids=["clean_end", "reset"])
async def test_a_stream_cut_mid_way_raises_after_its_deltas(
    anthropic_server: AnthropicServer, anthropic_adapter: ProviderAdapter, abort: bool
) -> None:
    anthropic_server.script.push(stream_cut(3, abort=abort))
    result = await collect_stream(anthropic_adapter, REQUEST)
    assert result.deltas == ANSWER_TOKENS[:3]
    assert result.end is None  # a truncated stream never ends "successfully"
    assert result.error is not None
    assert result.error.error_class is ErrorClass.CONNECT


async def test_a_stream_cut_after_all_text_but_before_message_stop_still_fails(
    anthropic_server: AnthropicServer, anthropic_adapter: ProviderAdapter
) -> None:
    anthropic_server.script.push(stream_cut(len(ANSWER_TOKENS)))
    result = await collect_stream(anthropic_adapter, REQUEST)
    assert result.text == ANSWER
    assert result.end is None
    assert result.error is not None
    assert "before message_stop" in result.error.detail
