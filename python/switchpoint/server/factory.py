"""The server factory: builds one sidecar (engine, adapters, managed local servers, gRPC server with
health and reflection) from a config. Nothing is started: `Sidecar.start` runs it."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from switchpoint._native import LatencyTracker
from switchpoint.cache.build import CacheService, build_cache
from switchpoint.config import Config
from switchpoint.engine.building import build_engine
from switchpoint.local_model import ManagedModelServer
from switchpoint.logs import SECRETS
from switchpoint.offload import Offload
from switchpoint.reload import LiveEngine
from switchpoint.request_log import RequestLog
from switchpoint.routing.predictor.service import build_predictor
from switchpoint.security.secrets import config_secrets
from switchpoint.security.tls import ServerTls
from switchpoint.server.admin_servicer import AdminServicer
from switchpoint.server.app import Sidecar
from switchpoint.server.http import HttpFront, HttpServer
from switchpoint.server.observe import RequestObserver
from switchpoint.server.router_servicer import SERVICE as ROUTER_SERVICE
from switchpoint.server.router_servicer import RouterServicer, add_router_to_server
from switchpoint.stats import StatsBook
from switchpoint.telemetry import Telemetry
from switchpoint.v1 import admin_pb2, admin_pb2_grpc

log = logging.getLogger("switchpoint.server")

ADMIN_SERVICE = admin_pb2.DESCRIPTOR.services_by_name["Admin"].full_name


async def create_server(
    config: Config,
    address: str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    latency: LatencyTracker | None = None,
    stats: StatsBook | None = None,
    config_path: Path | None = None,
    telemetry: Telemetry | None = None,
    http_address: str | None = None,
) -> tuple[Sidecar, int]:
    """Build a sidecar bound to `address` (config's server.grpc_address when None; port 0 picks a
    free port). Must run inside the event loop that will serve it. Nothing is started yet.

    `config_path` is the file `config` was loaded from: reloads read it, and it is watched for
    changes every server.reload_poll_s. `telemetry` (built from config.telemetry when None; tests
    pass one with an in-memory span exporter) is flushed last when the sidecar stops."""
    environ = os.environ if environ is None else environ
    # Before anything is built, so no line logged while building shows a key.
    secrets_owner = object()
    SECRETS.publish(secrets_owner, config_secrets(config, environ))
    try:
        return await _create_server(
            config,
            address,
            environ=environ,
            latency=latency,
            stats=stats,
            config_path=config_path,
            telemetry=telemetry,
            http_address=http_address,
        )
    finally:
        SECRETS.withdraw(secrets_owner)


@dataclass(slots=True)
class EngineParts:
    """Everything a front serves calls from, built one way for every front (the sidecar's gRPC
    and HTTP fronts, and the in-process library): the live engine with its telemetry, cache,
    managed local model servers, request log, observer and offload threads. Nothing is started."""

    live: LiveEngine
    telemetry: Telemetry
    cache: CacheService | None
    managed: list[ManagedModelServer]
    offload: Offload
    request_log: RequestLog
    observer: RequestObserver


def build_engine_parts(
    config: Config,
    *,
    environ: Mapping[str, str],
    telemetry: Telemetry | None = None,
    latency: LatencyTracker | None = None,
    stats: StatsBook | None = None,
) -> EngineParts:
    """The engine and what runs beside it, from `config`; `telemetry` is built from
    config.telemetry when None. Call it with the config's secrets published (see
    `create_server`), so no line logged while building shows a key."""
    telemetry = telemetry or Telemetry(config.telemetry, environ=environ)
    cache = build_cache(config, environ)
    predictor = build_predictor(config.routing.predictor, cache.embedder if cache else None)
    build = build_engine(
        config,
        environ=environ,
        latency=latency,
        stats=stats,
        tracer=telemetry.tracer,
        metrics=telemetry.metrics,
        cache=cache.cache if cache is not None else None,
        predictor=predictor,
    )
    managed = [
        ManagedModelServer(name, s.config.managed, logger=log.getChild(f"local.{name}"))
        for name, s in build.engine.registry.providers.items()
        if s.enabled and s.config.managed is not None
    ]
    request_log = RequestLog(
        logging.getLogger("switchpoint.request"),
        log_prompts=config.telemetry.log_prompts,
        flush_after_s=config.telemetry.request_log_flush_ms / 1000.0,
    )
    return EngineParts(
        live=LiveEngine(build),
        telemetry=telemetry,
        cache=cache,
        managed=managed,
        offload=Offload(),
        request_log=request_log,
        observer=RequestObserver(telemetry, request_log),
    )


async def _create_server(
    config: Config,
    address: str | None,
    *,
    environ: Mapping[str, str],
    latency: LatencyTracker | None,
    stats: StatsBook | None,
    config_path: Path | None,
    telemetry: Telemetry | None,
    http_address: str | None,
) -> tuple[Sidecar, int]:
    tls = ServerTls(config.server.tls) if config.server.tls is not None else None
    parts = build_engine_parts(
        config, environ=environ, telemetry=telemetry, latency=latency, stats=stats
    )
    live, managed, offload, observer = parts.live, parts.managed, parts.offload, parts.observer
    build = live.build
    # A larger message is refused (RESOURCE_EXHAUSTED) before it is parsed. Read once: gRPC
    # cannot change it on a running server.
    max_message = config.server.limits.max_message_bytes
    grpc_server = grpc.aio.server(
        options=[("grpc.max_receive_message_length", max_message)],
        maximum_concurrent_rpcs=config.server.limits.max_concurrent_rpcs,
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, grpc_server)
    bind = address or config.server.grpc_address
    if tls is None:
        port = grpc_server.add_insecure_port(bind)
    else:
        port = grpc_server.add_secure_port(bind, tls.credentials())
    if port == 0:
        await asyncio.gather(*(adapter.aclose() for adapter in build.adapters.values()))
        raise OSError(f"cannot bind gRPC address {bind}")
    http = None
    if http_address or config.server.http_address:
        try:
            http = HttpServer(
                HttpFront(live, observer, offload),
                http_address or config.server.http_address or "",
                config.server.tls,
            )
        except OSError:
            await asyncio.gather(*(adapter.aclose() for adapter in build.adapters.values()))
            raise
    sidecar = Sidecar(
        http=http,
        request_log=parts.request_log,
        live=live,
        managed=managed,
        grpc_server=grpc_server,
        health_servicer=health_servicer,
        port=port,
        environ=environ,
        config_path=config_path,
        telemetry=parts.telemetry,
        cache=parts.cache,
        tls=tls,
        bound=bind,
        offload=offload,
    )
    SECRETS.publish(sidecar, config_secrets(config, environ, build.tenant_keys))
    add_router_to_server(RouterServicer(live, observer, offload), grpc_server)
    admin_token = environ.get(config.admin.token_env)
    admin_pb2_grpc.add_AdminServicer_to_server(
        AdminServicer(live, admin_token or None, sidecar.reload), grpc_server
    )
    reflection.enable_server_reflection(
        (ROUTER_SERVICE, ADMIN_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME),
        grpc_server,
    )
    return sidecar, port
