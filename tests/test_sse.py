"""The server-sent-events parser both streaming adapters read through."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from switchpoint.providers.sse import ServerSentEvent, SSEDecoder, drain, iter_events


def decode(lines: list[str]) -> list[ServerSentEvent]:
    decoder = SSEDecoder()
    return [event for line in lines if (event := decoder.feed(line)) is not None]


async def lines_of(lines: list[str]) -> AsyncIterator[str]:
    for line in lines:
        yield line


def test_an_event_is_dispatched_by_the_blank_line_after_it() -> None:
    decoder = SSEDecoder()
    assert decoder.feed('data: {"a": 1}') is None
    assert decoder.feed("") == ServerSentEvent("message", '{"a": 1}')


def test_event_type_and_multi_line_data() -> None:
    events = decode(["event: content_block_delta", "data: first", "data: second", ""])
    assert events == [ServerSentEvent("content_block_delta", "first\nsecond")]


def test_event_type_resets_after_each_dispatch() -> None:
    events = decode(["event: ping", "data: {}", "", "data: x", ""])
    assert [event.event for event in events] == ["ping", "message"]


def test_comments_are_skipped_and_a_comment_only_block_dispatches_nothing() -> None:
    events = decode([": keep-alive", "", ": OPENROUTER PROCESSING", "data: x", ": between", ""])
    assert events == [ServerSentEvent("message", "x")]


def test_only_one_space_after_the_colon_is_stripped() -> None:
    events = decode(["data:  two spaces", "", "data:none", ""])
    assert [event.data for event in events] == [" two spaces", "none"]


def test_a_field_without_colon_has_an_empty_value() -> None:
    # "data" alone adds an empty data line: the event is dispatched with empty data.
    assert decode(["data", ""]) == [ServerSentEvent("message", "")]
    assert decode(["data:", "data:", ""]) == [ServerSentEvent("message", "\n")]


def test_blank_lines_without_data_dispatch_nothing() -> None:
    assert decode(["", "", "event: orphan", "", ""]) == []


def test_unknown_fields_and_retry_are_ignored() -> None:
    assert decode(["retry: 3000", "foo: bar", "data: x", ""]) == [ServerSentEvent("message", "x")]


def test_the_last_event_id_persists_and_ids_with_nul_are_ignored() -> None:
    events = decode(["id: 7", "data: a", "", "data: b", "", "id: bad\0id", "data: c", ""])
    assert [event.id for event in events] == ["7", "7", "7"]


def test_a_byte_order_mark_on_the_first_line_is_dropped() -> None:
    assert decode(["\ufeffdata: x", ""]) == [ServerSentEvent("message", "x")]
    # Only on the first line: later it is part of the field name, which is then unknown.
    assert decode(["data: x", "", "\ufeffdata: y", ""]) == [ServerSentEvent("message", "x")]


async def test_an_event_cut_off_by_the_end_of_the_stream_is_discarded() -> None:
    events = [event async for event in iter_events(lines_of(["data: whole", "", "data: half"]))]
    assert events == [ServerSentEvent("message", "whole")]


async def test_httpx_lines_with_crlf_cr_and_lf_endings() -> None:
    body = b'data: {"n": 1}\r\n\r\nevent: e\rdata: 2\r\rdata: 3\n\n'

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})

    async with (
        httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client,
        client.stream("GET", "http://sse.test/") as response,
    ):
        events = [event async for event in iter_events(response.aiter_lines())]
    assert events == [
        ServerSentEvent("message", '{"n": 1}'),
        ServerSentEvent("e", "2"),
        ServerSentEvent("message", "3"),
    ]


async def test_drain_reads_to_the_end() -> None:
    seen: list[str] = []

    async def lines() -> AsyncIterator[str]:
        for line in ["data: a", "", "data: b", "", "data: c", ""]:
            seen.append(line)
            yield line

    events = iter_events(lines())
    first = await anext(events)
    assert first.data == "a"
    await drain(events)
    assert len(seen) == 6


async def test_drain_treats_a_transport_failure_after_the_end_as_harmless() -> None:
    async def lines() -> AsyncIterator[str]:
        yield "data: [DONE]"
        yield ""
        raise httpx.ReadError("connection reset")

    events = iter_events(lines())
    assert (await anext(events)).data == "[DONE]"
    await drain(events)  # must not raise


async def test_drain_does_not_hide_other_errors() -> None:
    async def lines() -> AsyncIterator[str]:
        yield "data: x"
        yield ""
        raise RuntimeError("a bug, not a network failure")

    events = iter_events(lines())
    await anext(events)
    with pytest.raises(RuntimeError, match="a bug"):
        await drain(events)
