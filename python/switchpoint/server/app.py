"""The server factory: builds one sidecar (engine, adapters, managed local servers, gRPC server with
health and reflection) from a config. No module-level state, so tests can build many per process."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from dataclasses import replace

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from switchpoint._native import Gate, LatencyTracker
from switchpoint.config import Config
from switchpoint.engine import Engine
from switchpoint.errors import SwitchpointError
from switchpoint.gate import TokenGate
from switchpoint.local_model import ManagedModelServer, llama_cpp_available, resolve_model_path
from switchpoint.providers import create_adapter
from switchpoint.providers.base import ProviderAdapter
from switchpoint.registry import ProviderStatus, Registry, resolve_providers
from switchpoint.server.admin_servicer import AdminServicer
from switchpoint.server.router_servicer import RouterServicer
from switchpoint.shared import SharedQuota
from switchpoint.stats import StatsBook
from switchpoint.v1 import admin_pb2, admin_pb2_grpc, router_pb2, router_pb2_grpc

log = logging.getLogger("switchpoint.server")

ROUTER_SERVICE = router_pb2.DESCRIPTOR.services_by_name["Router"].full_name
ADMIN_SERVICE = admin_pb2.DESCRIPTOR.services_by_name["Admin"].full_name
# A health entry of its own, so a probe on "" stays SERVING (the replica still serves) while
# monitoring can see that shared budgets run on local leases only.
SHARED_STATE_SERVICE = "switchpoint.v1.SharedState"
SHARED_STATE_POLL_S = 1.0


class Sidecar:
    """One running switchpoint: call `start()`, then `stop()`; `port` is the bound gRPC port."""

    def __init__(
        self,
        *,
        config: Config,
        engine: Engine,
        adapters: Mapping[str, ProviderAdapter],
        managed: list[ManagedModelServer],
        grpc_server: grpc.aio.Server,
        health_servicer: health.aio.HealthServicer,
        port: int,
    ) -> None:
        self.config = config
        self.engine = engine
        self.port = port
        self.grpc_server = grpc_server
        self._adapters = adapters
        self._managed = managed
        self._health = health_servicer
        self._shared = engine.gate.shared
        self._shared_watch: asyncio.Task[None] | None = None

    async def start(self) -> None:
        try:
            for server in self._managed:
                await server.start()
            if self._shared is not None:
                await self._shared.start()
                self._shared_watch = asyncio.create_task(self._watch_shared_state())
            await self.grpc_server.start()
        except BaseException:
            # Never leave a child model server running behind a sidecar that failed to start.
            for server in self._managed:
                await server.stop()
            raise
        for service in ("", ROUTER_SERVICE):
            await self._health.set(service, health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace_s: float | None = None) -> None:
        """Stop accepting calls, let in-flight ones finish within the grace, then clean up."""
        grace = self.config.server.graceful_stop_s if grace_s is None else grace_s
        await self._health.enter_graceful_shutdown()
        await self.grpc_server.stop(grace)
        if self._shared_watch is not None:
            self._shared_watch.cancel()
            self._shared_watch = None
        if self._shared is not None:
            # After the drain: the last settled spend is reported, unspent leases go back.
            await self._shared.stop()
        await asyncio.gather(*(adapter.aclose() for adapter in self._adapters.values()))
        for server in self._managed:
            await server.stop()

    async def _watch_shared_state(self) -> None:
        assert self._shared is not None
        serving = health_pb2.HealthCheckResponse.SERVING
        not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
        while True:
            status = not_serving if self._shared.degraded else serving
            await self._health.set(SHARED_STATE_SERVICE, status)
            await asyncio.sleep(SHARED_STATE_POLL_S)

    async def wait(self) -> None:
        await self.grpc_server.wait_for_termination()


def _with_managed_availability(statuses: dict[str, ProviderStatus]) -> dict[str, ProviderStatus]:
    """A managed local server that is not installed disables its provider instead of failing."""
    out = dict(statuses)
    for name, status in statuses.items():
        managed = status.config.managed
        if not status.enabled or managed is None:
            continue
        reason = ""
        if not llama_cpp_available():
            reason = "local model server is not installed (run `make local-model`)"
        else:
            try:
                resolve_model_path(managed.model)
            except SwitchpointError as exc:
                reason = str(exc)
        if reason:
            log.warning("provider %s disabled: %s", name, reason)
            out[name] = replace(status, enabled=False, reason=reason)
    return out


def _adapter_for(status: ProviderStatus) -> ProviderAdapter:
    provider = status.config
    return create_adapter(
        status.name,
        provider.kind,
        provider.endpoint,
        status.api_key,
        timeout_s=provider.timeout_s,
        connect_timeout_s=provider.connect_timeout_s,
        max_connections=provider.max_connections,
        headers=provider.headers,
        anthropic_default_max_tokens=provider.default_max_tokens,
    )


async def create_server(
    config: Config,
    address: str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    latency: LatencyTracker | None = None,
    stats: StatsBook | None = None,
) -> tuple[Sidecar, int]:
    """Build a sidecar bound to `address` (config's server.grpc_address when None; port 0 picks a
    free port). Must run inside the event loop that will serve it. Nothing is started yet."""
    statuses = _with_managed_availability(
        resolve_providers(config, os.environ if environ is None else environ)
    )
    for name, status in statuses.items():
        if not status.enabled:
            log.info("provider %s disabled: %s", name, status.reason)
    latency = latency or LatencyTracker(config.routing.latency_half_life_s)
    registry = Registry(config, statuses, latency)
    adapters = {name: _adapter_for(s) for name, s in statuses.items() if s.enabled}
    managed = [
        ManagedModelServer(name, s.config.managed, logger=log.getChild(f"local.{name}"))
        for name, s in statuses.items()
        if s.enabled and s.config.managed is not None
    ]
    gate = Gate()
    shared = (
        SharedQuota(config.shared_state, gate)
        if config.shared_state.redis_url is not None
        else None
    )
    engine = Engine(
        config,
        registry,
        adapters,
        latency,
        stats or StatsBook(),
        gate=TokenGate(config, gate, shared=shared),
    )

    grpc_server = grpc.aio.server()
    router_pb2_grpc.add_RouterServicer_to_server(RouterServicer(lambda: engine), grpc_server)
    admin_token = (os.environ if environ is None else environ).get(config.admin.token_env)
    admin_pb2_grpc.add_AdminServicer_to_server(
        AdminServicer(lambda: engine, admin_token or None), grpc_server
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, grpc_server)
    reflection.enable_server_reflection(
        (ROUTER_SERVICE, ADMIN_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME),
        grpc_server,
    )
    bind = address or config.server.grpc_address
    port = grpc_server.add_insecure_port(bind)
    if port == 0:
        raise OSError(f"cannot bind gRPC address {bind}")
    sidecar = Sidecar(
        config=config,
        engine=engine,
        adapters=adapters,
        managed=managed,
        grpc_server=grpc_server,
        health_servicer=health_servicer,
        port=port,
    )
    return sidecar, port
