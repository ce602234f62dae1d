"""One provider's HTTP/1.1 connection pool and the defaults every request to it carries.

Requests go straight to an httpx transport (`handle_async_request`, httpx's public transport API;
the lean `PooledHTTP1Transport` of `connections.py`, or httpx's own through a proxy) rather than
through `httpx.AsyncClient`. The client's per-request layers -
URL merging, cookie jar, auth flow, redirect loop, event hooks - do nothing for an adapter, which
builds complete requests, keeps no cookies and never follows redirects, yet they cost a third
of a proxied Chat's CPU on the benchmark machine (`python -m benches.proxy_overhead`,
docs/benchmarks.md). What the client did that matters is done here: the base
URL, default headers, default timeouts, and proxies from the environment.
"""

from __future__ import annotations

import urllib.request
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import aclosing, asynccontextmanager
from importlib.metadata import version

import httpx

from switchpoint.providers.base import SENT_MARK_EXTENSION, SentMark
from switchpoint.providers.connections import PooledHTTP1Transport
from switchpoint.providers.http_errors import FailureClassifier
from switchpoint.providers.sse import ServerSentEvent, iter_events

USER_AGENT = f"switchpoint/{version('switchpoint')}"
_DEFAULT_HEADERS = {
    "accept": "*/*",
    "accept-encoding": "gzip, deflate",
    "connection": "keep-alive",
    "user-agent": USER_AGENT,
}


def environment_proxy(url: httpx.URL) -> str | None:
    """The proxy the environment names for `url` (HTTP(S)_PROXY, ALL_PROXY), unless NO_PROXY
    exempts its host."""
    proxies = urllib.request.getproxies()
    proxy = proxies.get(url.scheme) or proxies.get("all")
    if not proxy or urllib.request.proxy_bypass(url.host):
        return None
    return proxy


def _capped(seconds: float | None, cap: float) -> float:
    return cap if seconds is None else min(seconds, cap)


class ProviderHTTP:
    """Sends requests to one provider API root (`base_url`, e.g. "…/v1") over a pooled transport.

    `headers` go on every request under the request's own; `timeout` is the default that a call's
    read timeout replaces. `trust_env` lets the environment choose a proxy and TLS trust store
    (SSL_CERT_FILE, SSL_CERT_DIR); it is off for loopback servers.
    """

    def __init__(
        self,
        base_url: httpx.URL,
        *,
        headers: Mapping[str, str],
        timeout: httpx.Timeout,
        max_connections: int,
        trust_env: bool,
    ) -> None:
        self.base_url = base_url
        # Request URLs by path, parsed once: a URL parse per call was a visible cost.
        self._urls: dict[str, httpx.URL] = {}
        self.headers = {**_DEFAULT_HEADERS, **{k.lower(): v for k, v in headers.items()}}
        self.timeout = timeout
        # Every connection may stay idle for reuse: under more concurrency than a smaller idle
        # pool holds, every burst would open (and TLS-handshake) fresh connections.
        proxy = environment_proxy(base_url) if trust_env else None
        # The lean transport has no proxy support; through a proxy, httpx's own transport runs.
        self._transport: httpx.AsyncBaseTransport = (
            PooledHTTP1Transport(max_connections=max_connections, trust_env=trust_env)
            if proxy is None
            else httpx.AsyncHTTPTransport(
                limits=httpx.Limits(
                    max_connections=max_connections, max_keepalive_connections=max_connections
                ),
                http1=True,
                http2=False,
                trust_env=trust_env,
                proxy=proxy,
            )
        )

    def request(
        self,
        path: str,
        *,
        content: bytes,
        headers: Mapping[str, str],
        timeout_s: float | None,
        sent: SentMark | None = None,
    ) -> httpx.Request:
        """A POST of `content` to `path` under the base URL. `timeout_s` (the call's time left)
        replaces the read timeout (for a stream: the wait for the first chunk and every silence
        between chunks) and caps the others, so no wait for a pooled connection, a connect or a
        write outlives the call. The transport sets `sent` when the request goes out."""
        timeout = self.timeout
        if timeout_s is not None:
            timeout = httpx.Timeout(
                connect=_capped(timeout.connect, timeout_s),
                read=timeout_s,
                write=_capped(timeout.write, timeout_s),
                pool=_capped(timeout.pool, timeout_s),
            )
        url = self._urls.get(path)
        if url is None:
            root = self.base_url.copy_with(query=None, fragment=None)
            url = self._urls[path] = httpx.URL(str(root).rstrip("/") + "/" + path.lstrip("/"))
        extensions: dict[str, object] = {"timeout": timeout.as_dict()}
        if sent is not None:
            extensions[SENT_MARK_EXTENSION] = sent
            if not isinstance(self._transport, PooledHTTP1Transport):
                extensions["trace"] = sent.on_trace
        return httpx.Request(
            "POST", url, headers={**self.headers, **headers}, content=content, extensions=extensions
        )

    async def post_json(
        self,
        path: str,
        body: Mapping[str, object],
        *,
        headers: Mapping[str, str],
        timeout_s: float | None,
        failures: FailureClassifier,
        sent: SentMark | None = None,
    ) -> dict[str, object]:
        """POST `body` as JSON; the answer's JSON object. Every failure leaves classified."""
        request = self.request(
            path,
            content=failures.encode_json(body),
            headers=headers,
            timeout_s=timeout_s,
            sent=sent,
        )
        with failures.translating_transport_errors():
            response = await self.send(request)
        await failures.raise_for_status(response)
        return failures.json_object(response.content)

    @asynccontextmanager
    async def post_for_events(
        self,
        path: str,
        body: Mapping[str, object],
        *,
        headers: Mapping[str, str],
        timeout_s: float | None,
        failures: FailureClassifier,
        sent: SentMark | None = None,
    ) -> AsyncIterator[AsyncGenerator[ServerSentEvent, None]]:
        """POST `body` as JSON asking for an event stream; the block reads its events. An error
        answer (or JSON where events were asked for) is raised before the block sees any, a
        transport failure while reading leaves classified, and leaving the block closes the
        response however it ends."""
        request = self.request(
            path,
            content=failures.encode_json(body),
            headers={**headers, "accept": "text/event-stream"},
            timeout_s=timeout_s,
            sent=sent,
        )
        with failures.translating_transport_errors():
            async with self.stream(request) as response:
                await failures.raise_unless_event_stream(response)
                async with aclosing(iter_events(response.aiter_lines())) as events:
                    yield events

    async def send(self, request: httpx.Request) -> httpx.Response:
        """The response, body read and connection returned to the pool."""
        async with self.stream(request) as response:
            await response.aread()
        return response

    @asynccontextmanager
    async def stream(self, request: httpx.Request) -> AsyncIterator[httpx.Response]:
        """The response with its body unread; leaving the block closes it (and frees the
        connection) however the block ends."""
        response = await self._transport.handle_async_request(request)
        response.request = request
        try:
            yield response
        finally:
            await response.aclose()

    async def aclose(self) -> None:
        await self._transport.aclose()
