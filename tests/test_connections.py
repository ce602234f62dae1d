"""The lean HTTP/1.1 transport (`switchpoint.providers.connections`) against a raw loopback HTTP
server whose every byte the test chooses: reuse and non-reuse of connections, bodies by length,
chunks and gzip, protocol errors, timeouts, the pool limit and cancellation."""

from __future__ import annotations

import asyncio
import gzip
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import trustme

from switchpoint.providers.base import SENT_MARK_EXTENSION, SentMark
from switchpoint.providers.connections import PooledHTTP1Transport

Reply = Callable[[asyncio.StreamReader, asyncio.StreamWriter, bytes], Awaitable[bool]]


def response(body: bytes, *headers: str, status: str = "200 OK") -> bytes:
    head = [f"HTTP/1.1 {status}", f"content-length: {len(body)}", *headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


@dataclass
class RawServer:
    """Answers each request with the next scripted reply; counts connections and requests."""

    replies: list[Reply] = field(default_factory=list)
    connections: int = 0
    open_now: int = 0
    most_open: int = 0
    requests: list[bytes] = field(default_factory=list)
    closed_by_client: int = 0
    port: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    self.closed_by_client += 1
                    return
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                body = await reader.readexactly(length)
                self.requests.append(head + body)
                keep_open = await self.replies.pop(0)(reader, writer, body)
                if not keep_open:
                    return
        finally:
            self.open_now -= 1
            writer.close()

    def url(self, path: str = "/v1/x", *, scheme: str = "http", host: str = "127.0.0.1") -> str:
        return f"{scheme}://{host}:{self.port}{path}"


def send(data: bytes, *, keep_open: bool = True) -> Reply:
    async def reply(_r: asyncio.StreamReader, writer: asyncio.StreamWriter, _b: bytes) -> bool:
        writer.write(data)
        await writer.drain()
        return keep_open

    return reply


def echo() -> Reply:
    async def reply(_r: asyncio.StreamReader, writer: asyncio.StreamWriter, body: bytes) -> bool:
        writer.write(response(body))
        await writer.drain()
        return True

    return reply


def stall(seconds: float, then: Reply) -> Reply:
    async def reply(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: bytes
    ) -> bool:
        await asyncio.sleep(seconds)
        return await then(reader, writer, body)

    return reply


@asynccontextmanager
async def raw_server(
    *replies: Reply, tls: ssl.SSLContext | None = None
) -> AsyncIterator[RawServer]:
    server = RawServer(list(replies))
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0, ssl=tls)
    server.port = listener.sockets[0].getsockname()[1]
    try:
        yield server
    finally:
        listener.close()
        with suppress(Exception):
            await asyncio.wait_for(listener.wait_closed(), 1.0)


def post(url: str, body: bytes = b"{}", **timeouts: float) -> httpx.Request:
    timeout = httpx.Timeout(5.0, **timeouts)
    return httpx.Request("POST", url, content=body, extensions={"timeout": timeout.as_dict()})


async def call(transport: PooledHTTP1Transport, request: httpx.Request) -> httpx.Response:
    response = await transport.handle_async_request(request)
    try:
        await response.aread()
    finally:
        await response.aclose()
    return response


@pytest.fixture
async def transport() -> AsyncIterator[PooledHTTP1Transport]:
    lean = PooledHTTP1Transport(max_connections=4, trust_env=False)
    yield lean
    await lean.aclose()


async def test_sequential_calls_share_one_connection(transport: PooledHTTP1Transport) -> None:
    async with raw_server(echo(), echo(), echo()) as server:
        bodies = [(await call(transport, post(server.url(), b"%d" % i))).content for i in range(3)]
    assert bodies == [b"0", b"1", b"2"]
    assert server.connections == 1
    first = server.requests[0]
    assert first.startswith(b"POST /v1/x HTTP/1.1\r\n")
    assert b"host: 127.0.0.1:" in first.lower()


async def test_connection_close_and_server_close_mean_a_new_connection(
    transport: PooledHTTP1Transport,
) -> None:
    replies = [
        send(response(b"a", "connection: close"), keep_open=False),
        # Answered, then the server drops the idle connection: the transport sees the EOF.
        send(response(b"b"), keep_open=False),
        echo(),
    ]
    async with raw_server(*replies) as server:
        first = await call(transport, post(server.url()))
        second = await call(transport, post(server.url()))
        await asyncio.sleep(0.05)  # let the close arrive
        third = await call(transport, post(server.url(), b"c"))
    assert (first.content, second.content, third.content) == (b"a", b"b", b"c")
    assert server.connections == 3


async def test_chunked_and_gzip_bodies_are_decoded(transport: PooledHTTP1Transport) -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-type: text/event-stream\r\n\r\n"
        b"6\r\ndata: \r\n5\r\nhello\r\n0\r\n\r\n"
    )
    packed = gzip.compress(b'{"answer": 42}')
    async with raw_server(send(chunked), send(response(packed, "content-encoding: gzip"))) as srv:
        streamed = await transport.handle_async_request(post(srv.url()))
        try:
            pieces = [piece async for piece in streamed.aiter_bytes()]
        finally:
            await streamed.aclose()
        decoded = await call(transport, post(srv.url()))
    assert b"".join(pieces) == b"data: hello"
    assert decoded.json() == {"answer": 42}
    assert srv.connections == 1  # the chunked response ended cleanly: its connection was reused


async def test_a_response_not_read_to_its_end_closes_its_connection(
    transport: PooledHTTP1Transport,
) -> None:
    async with raw_server(send(response(b"x" * 200_000)), echo()) as server:
        partial = await transport.handle_async_request(post(server.url()))
        async for _ in partial.aiter_raw():
            break
        await partial.aclose()
        after = await call(transport, post(server.url(), b"next"))
        await asyncio.sleep(0.05)
    assert after.content == b"next"
    assert server.connections == 2
    assert server.closed_by_client == 1


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        (b"HTTP/1.1 two hundred OK\r\n\r\n", "status"),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort", ""),  # then closed mid-body
        (b"", "without sending a response"),
    ],
)
async def test_protocol_breakage_is_a_remote_protocol_error(
    transport: PooledHTTP1Transport, wire: bytes, message: str
) -> None:
    async with raw_server(send(wire, keep_open=False), echo()) as server:
        with pytest.raises(httpx.RemoteProtocolError) as broken:
            await call(transport, post(server.url()))
        recovered = await call(transport, post(server.url(), b"ok"))
    assert message in str(broken.value)
    assert recovered.content == b"ok"


async def test_informational_responses_are_skipped(transport: PooledHTTP1Transport) -> None:
    wire = b"HTTP/1.1 100 Continue\r\n\r\n" + response(b"done")
    async with raw_server(send(wire)) as server:
        answer = await call(transport, post(server.url()))
    assert (answer.status_code, answer.content) == (200, b"done")


async def test_read_timeout_closes_the_connection(transport: PooledHTTP1Transport) -> None:
    async with raw_server(stall(0.5, echo()), echo()) as server:
        with pytest.raises(httpx.ReadTimeout):
            await call(transport, post(server.url(), read=0.05))
        answer = await call(transport, post(server.url(), b"fresh"))
    assert answer.content == b"fresh"
    assert server.connections == 2


async def test_refused_connection_is_a_connect_error(transport: PooledHTTP1Transport) -> None:
    async with raw_server() as server:
        url = server.url()
    with pytest.raises(httpx.ConnectError):
        await call(transport, post(url))


async def test_the_pool_limit_queues_calls_and_times_out_waiting() -> None:
    lean = PooledHTTP1Transport(max_connections=1, trust_env=False)
    try:
        async with raw_server(stall(0.2, echo()), echo(), echo()) as server:
            slow = asyncio.create_task(call(lean, post(server.url(), b"slow")))
            await asyncio.sleep(0.05)
            with pytest.raises(httpx.PoolTimeout):
                await call(lean, post(server.url(), pool=0.05))
            queued = await call(lean, post(server.url(), b"queued"))  # waits for the slow one
            assert (await slow).content == b"slow"
        assert queued.content == b"queued"
        assert server.most_open == 1
    finally:
        await lean.aclose()


async def test_a_cancelled_call_frees_its_slot_and_closes_its_connection() -> None:
    lean = PooledHTTP1Transport(max_connections=1, trust_env=False)
    try:
        async with raw_server(stall(5.0, echo()), echo()) as server:
            hung = asyncio.create_task(call(lean, post(server.url())))
            await asyncio.sleep(0.05)
            hung.cancel()
            with pytest.raises(asyncio.CancelledError):
                await hung
            answer = await call(lean, post(server.url(), b"after", pool=1.0))
        assert answer.content == b"after"
        assert server.connections == 2
    finally:
        await lean.aclose()


async def test_a_closed_transport_refuses_calls(transport: PooledHTTP1Transport) -> None:
    await transport.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await transport.handle_async_request(post("http://127.0.0.1:9/"))


async def test_https_verifies_the_server_against_the_environment_trust_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    authority = trustme.CA()
    certificate = authority.issue_cert("localhost")
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    certificate.configure_cert(server_tls)
    bundle = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(str(bundle))
    async with raw_server(echo(), echo(), tls=server_tls) as server:
        url = server.url(scheme="https", host="localhost")
        monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
        trusting = PooledHTTP1Transport(max_connections=2, trust_env=True)
        try:
            first = await call(trusting, post(url, b"secret"))
            second = await call(trusting, post(url, b"again"))
        finally:
            await trusting.aclose()
        # Without the CA in its trust store the same server fails the handshake.
        monkeypatch.delenv("SSL_CERT_FILE")
        strict = PooledHTTP1Transport(max_connections=2, trust_env=False)
        try:
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await call(strict, post(url))
        finally:
            await strict.aclose()
    assert (first.content, second.content) == (b"secret", b"again")
    # Both trusted calls on one TLS connection; a refused handshake never reaches the handler.
    assert server.connections == 1


async def test_a_request_is_marked_sent_when_its_bytes_go_out_and_not_before() -> None:
    lean = PooledHTTP1Transport(max_connections=1, trust_env=False)

    def marked(url: str, mark: SentMark) -> httpx.Request:
        request = post(url)
        request.extensions[SENT_MARK_EXTENSION] = mark
        return request

    holding, waiting, refused = SentMark(), SentMark(), SentMark()
    try:
        async with raw_server(stall(5.0, echo())) as server:
            held = asyncio.create_task(call(lean, marked(server.url(), holding)))
            for _ in range(200):
                if server.requests:
                    break
                await asyncio.sleep(0.01)
            # The pool's one connection is busy: this call waits for it and is cancelled there.
            queued = asyncio.create_task(call(lean, marked(server.url(), waiting)))
            await asyncio.sleep(0.05)
            queued.cancel()
            held.cancel()
            await asyncio.gather(held, queued, return_exceptions=True)
        # Nothing listens here: the connect fails before a byte goes out.
        async with raw_server() as closed:
            dead_url = closed.url()
        with pytest.raises(httpx.ConnectError):
            await call(lean, marked(dead_url, refused))
    finally:
        await lean.aclose()
    assert len(server.requests) == 1
    assert (holding.sent, waiting.sent, refused.sent) == (True, False, False)
