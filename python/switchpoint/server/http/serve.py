"""The HTTP listener: uvicorn's server run as a task of the gRPC server's event loop, on a socket
bound here so a refused address is a start-up error and port 0 reports the port it got."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import socket
import ssl
from collections.abc import Iterator

import uvicorn

from switchpoint.addresses import split_address
from switchpoint.security.config import TlsConfig
from switchpoint.server.http.app import HttpFront


def _http_protocol() -> str:
    # httptools when installed (a runtime dependency; faster), h11 otherwise.
    return "httptools" if importlib.util.find_spec("httptools") is not None else "h11"


class _QuietServer(uvicorn.Server):
    """Leaves signals to the sidecar, which stops the HTTP front with the gRPC server."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bind(address: str) -> socket.socket:
    """A listening socket on HOST:PORT (PORT 0: any free port); OSError names the address."""
    try:
        host, port = split_address(address)
    except ValueError as exc:
        raise OSError(f"cannot bind HTTP address (server.http_address): {exc}") from exc
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named, not left 0: asyncio sets TCP_NODELAY only on sockets that say they are
    # TCP, and an accepted connection inherits this. Without it a response's head and body, two
    # writes, wait out the client's delayed ACK (40 ms a call on Linux).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot bind HTTP address {address} (server.http_address): {exc}") from exc
    sock.setblocking(False)
    return sock


def server_ssl_context(tls: TlsConfig) -> ssl.SSLContext:
    """The HTTP front's TLS: the same certificate, key and client CA as the gRPC port."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls.cert_file, tls.key_file)
    if tls.client_ca_file is not None:
        context.load_verify_locations(tls.client_ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class HttpServer:
    def __init__(self, front: HttpFront, address: str, tls: TlsConfig | None = None) -> None:
        self.front = front
        # Built before the socket, so a bad certificate leaves no bound port behind.
        self._ssl = server_ssl_context(tls) if tls is not None else None
        self.address = address
        self._socket = bind(address)
        self.port: int = self._socket.getsockname()[1]
        config = uvicorn.Config(
            front,
            lifespan="off",
            loop="none",
            http=_http_protocol(),
            access_log=False,
            log_config=None,
            server_header=False,
        )
        if self._ssl is not None:
            # Loaded here so the context is ours: a reload loads new certificates into it.
            config.load()
            config.ssl = self._ssl
        self._server = _QuietServer(config)
        self._task: asyncio.Task[None] | None = None

    def update_tls(self, tls: TlsConfig) -> None:
        """New connections get the reloaded certificate (and client CA); open ones keep theirs."""
        if self._ssl is None:
            return
        self._ssl.load_cert_chain(tls.cert_file, tls.key_file)
        if tls.client_ca_file is not None:
            self._ssl.load_verify_locations(tls.client_ca_file)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._server.serve(sockets=[self._socket]))
        while not self._server.started:
            if self._task.done():
                await self._task
                raise OSError("the HTTP server stopped while starting")
            await asyncio.sleep(0.01)

    async def stop(self, grace_s: float) -> None:
        """Stop accepting connections; calls in flight get `grace_s` to finish, then are
        cancelled."""
        if self._task is None:
            self._socket.close()
            return
        # uvicorn reads it as asyncio.timeout's delay, which takes any float.
        self._server.config.timeout_graceful_shutdown = grace_s  # type: ignore[assignment]
        self._server.should_exit = True
        if grace_s <= 0:
            self._server.force_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        self._socket.close()
