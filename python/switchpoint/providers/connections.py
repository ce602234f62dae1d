"""A lean HTTP/1.1 transport for httpx: keep-alive connections per origin on asyncio streams,
with h11 doing the protocol.

Why not httpx's own transport (httpcore): per request it scans its whole pool (checking every
idle connection's socket with a syscall through anyio's attribute lookups), opens anyio cancel
scopes and shielded locks, and wraps every read; measured on the benchmark machine that was
several times the CPU of the same exchange here, half of what a proxied Chat cost the sidecar
(`python -m benches.proxy_overhead`, `benches/profile.py chat`, docs/benchmarks.md).
Provider traffic is simple - one POST per call, JSON or an event stream back, no upgrades, no
HTTP/2 - and this keeps exactly that, with httpx's request/response types and exceptions, so
the adapters and the failure classifier do not know which transport ran. Calls through a proxy
still go through httpx's transport (see `ProviderHTTP`).

Semantics kept from httpcore: at most `max_connections` per origin (waiting for one is the pool
timeout), idle connections reused last-in first-out and dropped when the server has closed them
or after `KEEPALIVE_EXPIRY_S`, connect / write / read / pool timeouts from the request's
`timeout` extension, a connection closed rather than reused whenever a response was not read to
its end, and the same httpx exception classes for the same failures.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator
from typing import Final

import h11
import httpx

from switchpoint.providers.base import SENT_MARK_EXTENSION, SentMark

READ_SIZE: Final = 65536
# Idle connections older than this are closed rather than reused (httpcore's default).
KEEPALIVE_EXPIRY_S: Final = 5.0
Origin = tuple[bytes, str, int]


class _Connection:
    """One TCP (or TLS) connection and its h11 state machine."""

    __slots__ = ("h11", "idle_since", "reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.h11 = h11.Connection(our_role=h11.CLIENT)
        self.idle_since = 0.0

    def reusable(self, now: float) -> bool:
        """Still open at our end and theirs (a close from the server has arrived as EOF by the
        time the connection sits idle), and not past the keep-alive expiry."""
        return (
            not self.reader.at_eof()
            and not self.writer.is_closing()
            and now - self.idle_since < KEEPALIVE_EXPIRY_S
        )

    def close(self) -> None:
        self.writer.close()


class _OriginPool:
    __slots__ = ("idle", "slots")

    def __init__(self, max_connections: int) -> None:
        self.slots = asyncio.Semaphore(max_connections)
        # Oldest first: reuse takes from the end, pruning from the front.
        self.idle: list[_Connection] = []

    def put_back(self, connection: _Connection, now: float) -> None:
        """Keep `connection` for reuse, and close the idle ones that can no longer be reused,
        so a connection the server closed does not linger half-closed until the next call."""
        connection.idle_since = now
        self.idle.append(connection)
        while self.idle and not self.idle[0].reusable(now):
            self.idle.pop(0).close()


class PooledHTTP1Transport(httpx.AsyncBaseTransport):
    """`trust_env` lets SSL_CERT_FILE / SSL_CERT_DIR choose the CAs for https origins."""

    def __init__(self, *, max_connections: int, trust_env: bool) -> None:
        self._max_connections = max_connections
        self._trust_env = trust_env
        # Built on the first https connection: loading the CA bundle takes tens of milliseconds,
        # which a loopback-only adapter never needs.
        self._ssl_context: ssl.SSLContext | None = None
        self._pools: dict[Origin, _OriginPool] = {}
        self._closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._closed:
            raise RuntimeError("the transport is closed")
        timeouts = request.extensions.get("timeout", {})
        url = request.url
        origin: Origin = (
            url.raw_scheme,
            url.host,
            url.port or (443 if url.scheme == "https" else 80),
        )
        pool = self._pools.get(origin)
        if pool is None:
            pool = self._pools[origin] = _OriginPool(self._max_connections)
        if pool.slots.locked():
            try:
                async with asyncio.timeout(timeouts.get("pool")):
                    await pool.slots.acquire()
            except TimeoutError:
                raise httpx.PoolTimeout("no connection free in the pool", request=request) from None
        else:
            # A free slot is taken without waiting: no timer to arm and cancel for it.
            await pool.slots.acquire()
        connection: _Connection | None = None
        try:
            connection = self._idle_connection(pool) or await self._connect(
                origin, timeouts.get("connect"), request
            )
            await _send(connection, request, timeouts.get("write"))
            head = await _receive_head(connection, timeouts.get("read"), request)
        except BaseException:
            if connection is not None:
                connection.close()
            pool.slots.release()
            raise
        body = _ResponseBody(connection, pool, timeouts.get("read"), request)
        return httpx.Response(
            head.status_code,
            headers=head.headers,
            stream=body,
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": head.reason},
        )

    def _idle_connection(self, pool: _OriginPool) -> _Connection | None:
        now = time.monotonic()
        while pool.idle:
            connection = pool.idle.pop()
            if connection.reusable(now):
                return connection
            connection.close()
        return None

    async def _connect(
        self, origin: Origin, within_s: float | None, request: httpx.Request
    ) -> _Connection:
        scheme, host, port = origin
        secure = scheme == b"https"
        if secure and self._ssl_context is None:
            self._ssl_context = httpx.create_ssl_context(trust_env=self._trust_env)
        try:
            async with asyncio.timeout(within_s):
                reader, writer = await asyncio.open_connection(
                    host,
                    port,
                    ssl=self._ssl_context if secure else None,
                    server_hostname=host if secure else None,
                    limit=READ_SIZE,
                )
        except TimeoutError:
            raise httpx.ConnectTimeout("connect timed out", request=request) from None
        except OSError as exc:  # refused, unreachable, DNS, TLS (ssl.SSLError is an OSError)
            raise httpx.ConnectError(str(exc) or type(exc).__name__, request=request) from exc
        return _Connection(reader, writer)

    async def aclose(self) -> None:
        self._closed = True
        for pool in self._pools.values():
            for connection in pool.idle:
                connection.close()
            pool.idle.clear()


async def _send(connection: _Connection, request: httpx.Request, within_s: float | None) -> None:
    try:
        data = connection.h11.send(
            h11.Request(
                method=request.method,
                target=request.url.raw_path,
                headers=request.headers.raw,
            )
        )
        body = request.content
        if body:
            data = (data or b"") + (connection.h11.send(h11.Data(data=body)) or b"")
        data = (data or b"") + (connection.h11.send(h11.EndOfMessage()) or b"")
    except h11.LocalProtocolError as exc:
        raise httpx.LocalProtocolError(str(exc), request=request) from exc
    try:
        writer = connection.writer
        writer.write(data)
        mark = request.extensions.get(SENT_MARK_EXTENSION)
        if isinstance(mark, SentMark):
            mark.sent = True  # handed to the socket: the provider will see it (see SentMark)
        if writer.transport.get_write_buffer_size():
            async with asyncio.timeout(within_s):
                await writer.drain()
        else:
            # All of it went to the socket at once (the usual case): drain only reports a lost
            # connection, without waiting, so it needs no timer.
            await writer.drain()
    except TimeoutError:
        raise httpx.WriteTimeout("write timed out", request=request) from None
    except OSError as exc:
        raise httpx.WriteError(str(exc) or type(exc).__name__, request=request) from exc


async def _next_event(
    connection: _Connection, within_s: float | None, request: httpx.Request
) -> object:
    """The next h11 event, reading from the socket as h11 needs."""
    parser = connection.h11
    try:
        while True:
            event = parser.next_event()
            if event is not h11.NEED_DATA:
                return event
            async with asyncio.timeout(within_s):
                data = await connection.reader.read(READ_SIZE)
            if not data and parser.their_state is h11.SEND_RESPONSE:
                raise httpx.RemoteProtocolError(
                    "server disconnected without sending a response", request=request
                )
            parser.receive_data(data)  # b"" is EOF: h11 then reports the close or an error
    except TimeoutError:
        raise httpx.ReadTimeout("read timed out", request=request) from None
    except h11.RemoteProtocolError as exc:
        raise httpx.RemoteProtocolError(str(exc), request=request) from exc
    except OSError as exc:
        raise httpx.ReadError(str(exc) or type(exc).__name__, request=request) from exc


async def _receive_head(
    connection: _Connection, within_s: float | None, request: httpx.Request
) -> h11.Response:
    while True:
        event = await _next_event(connection, within_s, request)
        if isinstance(event, h11.Response):
            return event
        if not isinstance(event, h11.InformationalResponse):  # 1xx: wait for the real answer
            raise httpx.RemoteProtocolError(
                f"expected a response, got {type(event).__name__}", request=request
            )


class _ResponseBody(httpx.AsyncByteStream):
    """The body, read as it is iterated; closing it hands the connection back to the pool when
    the response was read to its end and both sides keep the connection, or closes it."""

    def __init__(
        self,
        connection: _Connection,
        pool: _OriginPool,
        timeout: float | None,
        request: httpx.Request,
    ) -> None:
        self._connection: _Connection | None = connection
        self._pool = pool
        self._timeout = timeout
        self._request = request
        self._complete = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        connection = self._connection
        if connection is None:
            raise httpx.StreamClosed()
        while not self._complete:
            event = await _next_event(connection, self._timeout, self._request)
            if isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                self._complete = True
            else:  # ConnectionClosed mid-body is caught by h11 as a protocol error
                raise httpx.RemoteProtocolError(
                    f"unexpected {type(event).__name__} in a response body", request=self._request
                )

    async def aclose(self) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        parser = connection.h11
        if self._complete and parser.our_state is h11.DONE and parser.their_state is h11.DONE:
            parser.start_next_cycle()
            self._pool.put_back(connection, time.monotonic())
        else:
            connection.close()
        self._pool.slots.release()
