"""Server-sent events, parsed line by line as the WHATWG HTML spec describes them.

Both streaming adapters read their provider's `text/event-stream` through this one parser, fed by
httpx's `Response.aiter_lines()` (which already splits on CRLF, CR and LF and drops the line ends).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator
from dataclasses import dataclass

import httpx

_BYTE_ORDER_MARK = "\ufeff"


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    """One dispatched event: its type (`message` when the stream names none), data and last id."""

    event: str
    data: str
    id: str | None = None


class SSEDecoder:
    """Turns lines into events; keeps the half-built event between lines."""

    def __init__(self) -> None:
        self._event_type = ""
        self._data_lines: list[str] = []
        self._last_id: str | None = None
        self._first_line = True

    def feed(self, line: str) -> ServerSentEvent | None:
        """Consume one line (without its line end); return the event a blank line completes."""
        if self._first_line:
            self._first_line = False
            line = line.removeprefix(_BYTE_ORDER_MARK)
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None  # a comment: servers send these as keep-alives
        name, colon, value = line.partition(":")
        if colon:
            value = value.removeprefix(" ")
        self._apply_field(name, value)
        return None

    def _apply_field(self, name: str, value: str) -> None:
        if name == "event":
            self._event_type = value
        elif name == "data":
            self._data_lines.append(value)
        elif name == "id" and "\0" not in value:
            # Per spec the last event id persists across events until the stream sets another.
            self._last_id = value
        # `retry` only matters to clients that reconnect, which we never do; other fields are
        # ignored, as the spec requires.

    def _dispatch(self) -> ServerSentEvent | None:
        data_lines, event_type = self._data_lines, self._event_type
        self._data_lines, self._event_type = [], ""
        if not data_lines:
            return None  # a blank line with no data before it dispatches nothing
        return ServerSentEvent(event_type or "message", "\n".join(data_lines), self._last_id)


async def iter_events(lines: AsyncIterable[str]) -> AsyncGenerator[ServerSentEvent, None]:
    """The events of a stream of lines.

    An event the stream ends in the middle of (no blank line after it) is discarded, as the spec
    says: a cut stream must not hand a half-received event to the adapter.
    """
    decoder = SSEDecoder()
    async for line in lines:
        event = decoder.feed(line)
        if event is not None:
            yield event


async def drain(events: AsyncIterator[ServerSentEvent]) -> None:
    """Read a stream to its end once its terminal event has arrived.

    httpx returns a connection to the keep-alive pool only when the response body was read to the
    end; closing it early would cost a new connection (and TLS handshake) on the next call. The
    answer is already complete at this point, so a transport failure while draining only means
    the connection is not reused: it is not an error of the call.
    """
    try:
        async for _ in events:
            pass
    except httpx.HTTPError:
        return
