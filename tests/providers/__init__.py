"""Loopback servers that play LLM providers over real HTTP, and what they share.

`OpenAIServer` (openai_server.py) and `AnthropicServer` (anthropic_server.py) speak their
provider's exact wire protocol on 127.0.0.1, each run by uvicorn in a background thread with its
own event loop, so adapters (and the whole sidecar) are tested through real sockets, real HTTP
framing and real connection pooling. `LoopbackServer` below is their common machinery: the
thread, the scripted behaviours (script.py) and the request log. Fixtures are in fixtures.py.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from uvicorn.protocols.http.h11_impl import H11Protocol

from tests.support.threaded_uvicorn import ThreadedUvicorn

from .script import (
    Error,
    Garbage,
    Hang,
    Ok,
    RecordedRequest,
    RequestLog,
    Reset,
    Script,
    Step,
    StreamCut,
    StreamError,
    answer_tokens,
    echo_answer,
    word_count,
)

Connections = dict[tuple[str, int], asyncio.Transport]
# Before aborting mid-stream, let the client read what was already sent, so a test sees exactly
# the chunks before the cut.
_FLUSH_BEFORE_ABORT_S = 0.05


@dataclass(frozen=True, slots=True)
class Answer:
    """The answer a step produces for one request, before a provider renders it."""

    model: str
    tokens: list[str]
    truncated: bool  # cut at the request's max_tokens
    input_tokens: int

    @property
    def text(self) -> str:
        return "".join(self.tokens)

    @property
    def output_tokens(self) -> int:
        return len(self.tokens)


def _tracking_protocol(connections: Connections) -> type[H11Protocol]:
    """uvicorn's h11 protocol, registering each connection's transport by the client's address.

    ASGI gives an app no handle on its connection; the `reset` steps need one to abort it.
    """

    class TrackingProtocol(H11Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            if not isinstance(transport, asyncio.Transport):
                raise TypeError(f"expected a stream transport, got {transport!r}")
            super().connection_made(transport)
            host, port = transport.get_extra_info("peername")[:2]
            self.peer = (str(host), int(port))
            connections[self.peer] = transport

        def connection_lost(self, exc: Exception | None) -> None:
            connections.pop(self.peer, None)
            super().connection_lost(exc)

    return TrackingProtocol


def content_text(content: object) -> str:
    """A message's text: a plain string, or the text parts of a list of content blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


class LoopbackServer:
    """A provider on 127.0.0.1:<free port>; use as a context manager (or start()/stop()).

    Subclasses render answers, errors and streams in their provider's wire format; this class
    decides, per request, what to do from the next scripted step.
    """

    api_prefix = ""  # what base_url adds after the host, e.g. "/v1"

    def __init__(self, *, api_key: str | None = None, keep_requests: int | None = None) -> None:
        self.api_key = api_key  # when set, requests must carry it, as the provider requires
        self.script = Script()
        # `keep_requests`: `requests` holds only the latest that many (a soak's memory stays flat).
        self._log = RequestLog(keep_requests)
        self._connections: Connections = {}  # touched only on the server thread
        self._stopping = threading.Event()
        # Requests whose client went away while the server was still holding them (a cancelled
        # or timed-out upstream call): the evidence that cancellation reaches the provider.
        self.disconnects = 0
        self._runner: ThreadedUvicorn | None = None

    # Subclass hooks: the provider's wire format.

    def routes(self) -> list[Route]:
        raise NotImplementedError

    def reject(self, request: Request, body: object) -> Response | None:
        """The provider's answer to a request it would refuse (bad key, bad shape), else None."""
        raise NotImplementedError

    def conversation(self, body: dict[str, object]) -> tuple[list[str], str]:
        """(every message text including system prompts, the last user message's text)."""
        raise NotImplementedError

    def completion_body(self, answer: Answer, body: dict[str, object]) -> dict[str, object]:
        raise NotImplementedError

    def stream_frames(
        self, answer: Answer, body: dict[str, object]
    ) -> tuple[list[str], list[str], list[str]]:
        """(frames before the text, one frame per token, frames after the text)."""
        raise NotImplementedError

    def error_body(self, status: int, request: Request, body: object) -> dict[str, object]:
        """The provider's own error body for `status`."""
        raise NotImplementedError

    def stream_error_frame(self, error_body: object) -> str:
        raise NotImplementedError

    def garbage_frames(self) -> list[str]:
        raise NotImplementedError

    # What tests use.

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far, in order."""
        return self._log.snapshot()

    @property
    def requests_received(self) -> int:
        """How many requests arrived, including those `keep_requests` let go."""
        return self._log.received

    @property
    def port(self) -> int:
        if self._runner is None:
            raise RuntimeError("server is not running")
        return self._runner.port

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.api_prefix}"

    def start(self) -> Self:
        self._runner = ThreadedUvicorn(
            Starlette(routes=self.routes()),
            name=type(self).__name__,
            http=_tracking_protocol(self._connections),
            # A backstop only: steps that wait also stop waiting when the server stops.
            timeout_graceful_shutdown=2,
        )
        self._runner.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._runner is not None:
            self._runner.stop()
            self._runner = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # The request path, on the server thread.

    async def handle(self, request: Request) -> Response:
        raw = await request.body()
        body = _json_or_none(raw)
        self._log.append(
            RecordedRequest(
                path=request.url.path,
                headers={name.lower(): value for name, value in request.headers.items()},
                body=body,
                client_port=request.client.port if request.client else 0,
            )
        )
        rejection = self.reject(request, body)
        if rejection is not None or not isinstance(body, dict):
            return rejection or Response(status_code=400)
        return await self._respond(self.script.next_step(), request, body)

    async def _respond(self, step: Step, request: Request, body: dict[str, object]) -> Response:
        streaming = body.get("stream") is True
        if isinstance(step, Error) or (isinstance(step, StreamError) and not streaming):
            return self._error_response(step, request, body)
        if isinstance(step, Reset):
            await self._abort(request)
            return Response()  # never sent: the connection is gone
        if isinstance(step, Garbage):
            if streaming:
                return _event_stream(_frames(self.garbage_frames()))
            return Response(b'{"choices": [ this is not json', media_type="application/json")
        if (
            isinstance(step, Hang)
            and (step.after_chunks is None or not streaming)
            and not await self._wait(request, step.seconds)
        ):
            return Response()  # the client gave up; nobody is listening
        answer = self._answer(step, body)
        if isinstance(step, StreamCut) and not streaming:
            return self._half_body_then_abort(request, answer, body)
        if streaming:
            return _event_stream(self._stream(request, answer, body, step))
        return JSONResponse(self.completion_body(answer, body))

    def _answer(self, step: Step, body: dict[str, object]) -> Answer:
        texts, last_user_text = self.conversation(body)
        model = str(body.get("model", ""))
        scripted = step.text if isinstance(step, Ok) else None
        tokens = answer_tokens(
            scripted if scripted is not None else echo_answer(model, last_user_text)
        )
        max_tokens = body.get("max_tokens")
        truncated = isinstance(max_tokens, int) and len(tokens) > max_tokens
        if truncated and isinstance(max_tokens, int):
            tokens = tokens[:max_tokens]
        input_tokens = word_count(texts)
        return Answer(model, tokens, truncated, input_tokens)

    def _error_response(
        self, step: Error | StreamError, request: Request, body: dict[str, object]
    ) -> Response:
        error_body = (
            step.body if step.body is not None else self.error_body(step.status, request, body)
        )
        headers = dict(step.headers) if isinstance(step, Error) else {}
        if isinstance(step, Error) and step.retry_after is not None:
            headers["retry-after"] = str(step.retry_after)
        if isinstance(error_body, str):
            return Response(error_body, step.status, headers, media_type="text/html")
        return JSONResponse(error_body, step.status, headers)

    async def _stream(
        self, request: Request, answer: Answer, body: dict[str, object], step: Step
    ) -> AsyncIterator[str]:
        head, token_frames, tail = self.stream_frames(answer, body)
        interrupt_at = None
        if isinstance(step, StreamCut | StreamError | Hang) and step.after_chunks is not None:
            interrupt_at = min(step.after_chunks, len(token_frames))
        for frame in head:
            yield frame
        for index in range(len(token_frames) + 1):
            if index == interrupt_at:
                if isinstance(step, StreamCut):
                    if step.abort:
                        await self._abort(request)
                    return
                if isinstance(step, StreamError):
                    error = (
                        step.body
                        if step.body is not None
                        else self.error_body(step.status, request, body)
                    )
                    yield self.stream_error_frame(error)
                    return
                if isinstance(step, Hang) and not await self._wait(request, step.seconds):
                    return
            if index < len(token_frames):
                yield token_frames[index]
        for frame in tail:
            yield frame

    def _half_body_then_abort(
        self, request: Request, answer: Answer, body: dict[str, object]
    ) -> Response:
        payload = json.dumps(self.completion_body(answer, body)).encode()

        async def half() -> AsyncIterator[bytes]:
            yield payload[: len(payload) // 2]
            await self._abort(request)

        return StreamingResponse(
            half(),
            media_type="application/json",
            headers={"content-length": str(len(payload))},
        )

    async def _abort(self, request: Request) -> None:
        """Reset the request's TCP connection (RST, not a graceful FIN)."""
        await asyncio.sleep(_FLUSH_BEFORE_ABORT_S)
        client = request.client
        transport = self._connections.get((client.host, client.port)) if client else None
        if transport is None:
            raise RuntimeError("no transport for this request's connection")
        sock = transport.get_extra_info("socket")
        # SO_LINGER with a zero timeout makes close() send RST: the peer sees "connection reset".
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
        for _ in range(3):  # let uvicorn see connection_lost before the app returns
            await asyncio.sleep(0)

    async def _wait(self, request: Request, seconds: float) -> bool:
        """Sleep up to `seconds`; False if the client disconnected or the server is stopping."""
        deadline = time.monotonic() + seconds
        try:
            while time.monotonic() < deadline:
                if self._stopping.is_set():
                    return False
                if await request.is_disconnected():
                    self.disconnects += 1
                    return False
                await asyncio.sleep(min(0.02, max(deadline - time.monotonic(), 0)))
        except asyncio.CancelledError:
            # Mid-stream, the streaming response itself watches for the disconnect and cancels
            # the stream: that is the client going away too.
            if not self._stopping.is_set():
                self.disconnects += 1
            raise
        return True


def _event_stream(frames: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(
        frames, media_type="text/event-stream", headers={"cache-control": "no-cache"}
    )


async def _frames(frames: list[str]) -> AsyncIterator[str]:
    for frame in frames:
        yield frame


def _json_or_none(raw: bytes) -> object:
    try:
        parsed: object = json.loads(raw)
    except ValueError:
        return None
    return parsed


def sse_frame(data: object, event: str | None = None) -> str:
    """One server-sent event: optional `event:` line, one `data:` line, blank line."""
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    prefix = f"event: {event}\n" if event else ""
    return f"{prefix}data: {payload}\n\n"
