"""Start-up and shutdown of an embedded engine: what the sidecar does around its engine, without
the gRPC and HTTP servers. The parts are built by the server factory (`build_engine_parts`), the
gauges and the idle sweep are `server.upkeep`'s, as for the sidecar.

Shutdown order, as the sidecar's: calls in flight drain first (within server.graceful_stop_s),
then shared-state leases are returned (after the last settled spend is reported), the predictor
and the cache close (the snapshot holds the last calls' answers), the provider adapters and the
managed local model servers stop, the request log is flushed and telemetry is flushed last.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping

from switchpoint.config import Config
from switchpoint.logs import SECRETS
from switchpoint.security.secrets import config_secrets
from switchpoint.server.factory import EngineParts, build_engine_parts
from switchpoint.server.upkeep import observe_gauges, sweep_idle_scopes
from switchpoint.telemetry import ApplicationProviders, Telemetry

log = logging.getLogger("switchpoint.library")


class EmbeddedEngine:
    """The live engine and what runs beside it, started and stopped in the sidecar's order."""

    def __init__(self, parts: EngineParts) -> None:
        self.parts = parts
        self.live = parts.live
        self._sweep: asyncio.Task[None] | None = None
        # The stop steps of what has started, so a failed start undoes only what it did.
        self._started: list[Callable[[], Awaitable[None]]] = []

    @classmethod
    def build(cls, config: Config, environ: Mapping[str, str]) -> EmbeddedEngine:
        """The parts of `config`, with spans and metrics through the application's global
        OpenTelemetry SDK providers when it installed some, else the config's own."""
        # Published before anything is built, so no line logged while building shows a key.
        owner = object()
        SECRETS.publish(owner, config_secrets(config, environ))
        try:
            telemetry = Telemetry(
                config.telemetry, environ=environ, application=ApplicationProviders.installed()
            )
            engine = cls(build_engine_parts(config, environ=environ, telemetry=telemetry))
        finally:
            SECRETS.withdraw(owner)
        SECRETS.publish(engine, config_secrets(config, environ, engine.live.build.tenant_keys))
        return engine

    async def start(self) -> None:
        parts = self.parts
        engine = self.live.engine
        try:
            for server in parts.managed:
                self._started.append(server.stop)
                await server.start()
            if engine.gate.shared is not None:
                self._started.append(engine.gate.shared.stop)
                await engine.gate.shared.start()
            observe_gauges(parts.telemetry, self.live)
            await parts.telemetry.start()
            if parts.cache is not None:
                await parts.cache.start()
                # Only a started cache is closed: closing writes its snapshot, and one that never
                # loaded would overwrite the file with nothing.
                self._started.append(parts.cache.close)
            if engine.predictor is not None:
                self._started.append(engine.predictor.close)
                await engine.predictor.start([m.name for m in engine.config.models])
        except BaseException:
            # Nothing half-started is left behind: leases back, children and threads stopped.
            await self.stop()
            raise
        self._sweep = asyncio.create_task(sweep_idle_scopes(self.live))

    async def stop(self) -> None:
        """Everything after the drain, in the sidecar's order; each step runs even when an
        earlier one failed."""
        parts = self.parts
        parts.offload.close()
        if self._sweep is not None:
            self._sweep.cancel()
            await asyncio.gather(self._sweep, return_exceptions=True)
            self._sweep = None
        started = set(self._started)
        self._started.clear()
        engine = self.live.engine
        # Leases after the drain (the last settled spend is reported); the predictor before the
        # cache (they may share the cache's embedder, which the cache closes).
        steps = [
            engine.gate.shared.stop if engine.gate.shared is not None else None,
            engine.predictor.close if engine.predictor is not None else None,
            parts.cache.close if parts.cache is not None else None,
        ]
        for step in steps:
            if step is None or step not in started:
                continue
            try:
                await step()
            except Exception:
                log.exception("stopping the embedded engine: a step failed")
        await self._close_adapters()
        for server in parts.managed:
            if server.stop in started:
                await server.stop()
        parts.request_log.flush()
        SECRETS.withdraw(self)
        await parts.telemetry.stop()

    async def _close_adapters(self) -> None:
        adapters = self.live.build.adapters.values()
        results = await asyncio.gather(*(a.aclose() for a in adapters), return_exceptions=True)
        for result in results:
            if isinstance(result, Exception):
                log.warning("closing a provider adapter failed: %s", result)
