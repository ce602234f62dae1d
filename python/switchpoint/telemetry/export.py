"""Getting telemetry out: span exporters picked from OTEL_* variables, and the /metrics listener."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from typing import Final

from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SpanExporter
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from switchpoint.addresses import split_address

_HTTP_READ_TIMEOUT_S: Final = 10.0
_OTLP_ENDPOINT_VARS: Final = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


def span_exporters_from_env(environ: Mapping[str, str]) -> list[SpanExporter]:
    """The span exporters the standard OTEL_* variables ask for.

    OTEL_TRACES_EXPORTER is a comma list of otlp / console / none. Unlike the OTel default
    ("otlp"), an unset OTEL_TRACES_EXPORTER means no export unless an OTLP endpoint variable is
    set: a sidecar must not log export failures against a collector nobody runs.
    """
    names = [n.strip() for n in environ.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()]
    if not names and any(environ.get(var) for var in _OTLP_ENDPOINT_VARS):
        names = ["otlp"]
    exporters: list[SpanExporter] = []
    for name in names:
        if name == "otlp":
            exporters.append(_otlp_exporter(environ))
        elif name == "console":
            exporters.append(ConsoleSpanExporter())
        elif name != "none":
            raise ValueError(f"OTEL_TRACES_EXPORTER: unsupported exporter {name!r}")
    return exporters


def _otlp_exporter(environ: Mapping[str, str]) -> SpanExporter:
    """OTLP over gRPC (the Python SDK's default) or http/protobuf, per the protocol variables.

    The endpoint is passed from `environ` so selection and destination agree; headers, timeouts
    and certificates are read by the exporter itself from the process environment.
    """
    protocol = environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"
    )
    traces_endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    base_endpoint = environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    # Imported here: each pulls in its transport, and only the chosen one is needed.
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # noqa: PLC0415
            OTLPSpanExporter as GrpcExporter,
        )

        return GrpcExporter(endpoint=traces_endpoint or base_endpoint)
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: PLC0415
            OTLPSpanExporter as HttpExporter,
        )

        # The signal-specific endpoint is used as is; the base one gets the signal path (spec).
        if traces_endpoint is None and base_endpoint is not None:
            traces_endpoint = base_endpoint.rstrip("/") + "/v1/traces"
        return HttpExporter(endpoint=traces_endpoint)
    raise ValueError(f"OTEL_EXPORTER_OTLP_PROTOCOL: unsupported protocol {protocol!r}")


class MetricsServer:
    """A minimal HTTP/1.1 server for GET /metrics over one prometheus_client registry.

    prometheus_client's own server runs a thread over the global registry; this one serves the
    instance's registry on the event loop. Collection runs on the loop on purpose: the gauge
    callbacks then read loop-owned state (queues, breakers) without locks.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.StreamWriter] = set()

    async def start(self, address: str) -> int:
        host, port = split_address(address)
        self._server = await asyncio.start_server(self._handle, host, port)
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        # Python 3.11's wait_closed does not wait for open connections: close them ourselves.
        for writer in list(self._connections):
            writer.close()
        await self._server.wait_closed()
        self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections.add(writer)
        try:
            async with asyncio.timeout(_HTTP_READ_TIMEOUT_S):
                head = await reader.readuntil(b"\r\n\r\n")
            writer.write(self._respond(head.decode("latin-1")))
            await writer.drain()
        except (
            TimeoutError,
            ConnectionError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
        ):
            pass  # the scraper went away or sent garbage: nothing to answer
        finally:
            self._connections.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    def _respond(self, head: str) -> bytes:
        request_line, *header_lines = head.split("\r\n")
        parts = request_line.split(" ")
        if len(parts) != 3:
            return _http_response(400, "Bad Request", b"bad request\n", "text/plain")
        method, target, _version = parts
        if target.split("?", 1)[0] != "/metrics":
            return _http_response(404, "Not Found", b"not found\n", "text/plain")
        if method != "GET":
            return _http_response(405, "Method Not Allowed", b"use GET\n", "text/plain")
        headers = dict(_header(line) for line in header_lines if ":" in line)
        encoder, content_type = choose_encoder(headers.get("accept", ""))
        body = encoder(self._registry)
        return _http_response(200, "OK", body, content_type)


def _header(line: str) -> tuple[str, str]:
    name, _, value = line.partition(":")
    return name.strip().lower(), value.strip()


def _http_response(status: int, reason: str, body: bytes, content_type: str) -> bytes:
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body
