"""Start-up and shutdown of what runs beside a live engine, one way for every front: the sidecar
wraps its gRPC and HTTP servers around it, the library (`switchpoint.Router`) uses it as is.

Start: managed local model servers, shared-state leases, the gauges and the metrics listener, the
cache (its snapshot loaded), the predictor, the idle-scope sweep. A start that fails undoes what
it started. Stop, after the fronts have drained their calls: offload threads, the sweep, shared
state (the last settled spend reported, unspent leases returned), the predictor (before the cache:
they may share its embedder), the cache (its snapshot holds the last calls' answers), the provider
adapters, the managed servers, the request log and, last, telemetry (so the spans and metrics of
the drained calls are exported). Each step runs even when an earlier one failed; only what was
started is stopped, so stopping twice, or after a failed start, is harmless.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from switchpoint.cache.build import CacheService
from switchpoint.local_model import ManagedModelServer
from switchpoint.offload import Offload
from switchpoint.reload import LiveEngine
from switchpoint.request_log import RequestLog
from switchpoint.server.upkeep import observe_gauges, sweep_idle_scopes
from switchpoint.telemetry import Telemetry

log = logging.getLogger("switchpoint.server")

CloseAdapters = Callable[[], Awaitable[None]]


class RunningEngine:
    def __init__(
        self,
        live: LiveEngine,
        *,
        telemetry: Telemetry,
        request_log: RequestLog,
        cache: CacheService | None = None,
        managed: Sequence[ManagedModelServer] = (),
        offload: Offload | None = None,
    ) -> None:
        self.live = live
        self.telemetry = telemetry
        self.request_log = request_log
        self.offload = offload
        self._cache = cache
        self._managed = list(managed)
        # The stop steps of what has started, in start order; stop runs them in its own order.
        self._started_managed: list[ManagedModelServer] = []
        self._shared = live.engine.gate.shared
        self._shared_started = self._cache_started = self._predictor_started = False
        self._sweep: asyncio.Task[None] | None = None

    async def start(self) -> None:
        engine = self.live.engine
        try:
            for server in self._managed:
                self._started_managed.append(server)
                await server.start()
            if self._shared is not None:
                self._shared_started = True
                await self._shared.start()
            observe_gauges(self.telemetry, self.live)
            await self.telemetry.start()
            if self._cache is not None:
                await self._cache.start()
                # Only a started cache is closed: closing writes its snapshot, and one that never
                # loaded would overwrite the file with nothing.
                self._cache_started = True
            if engine.predictor is not None:
                self._predictor_started = True
                await engine.predictor.start([m.name for m in engine.config.models])
        except BaseException:
            # Never leave a child model server, a lease or the predictor's threads behind a
            # start that failed.
            await self.stop(_nothing)
            raise
        self._sweep = asyncio.create_task(sweep_idle_scopes(self.live))

    async def stop(self, close_adapters: CloseAdapters) -> None:
        """After the drain: everything in the order above. `close_adapters` closes the provider
        adapters (the sidecar's include those a reload retired)."""
        if self.offload is not None:
            # The calls are over; whatever a worker thread still computes is for nobody.
            self.offload.close()
        if self._sweep is not None:
            self._sweep.cancel()
            await asyncio.gather(self._sweep, return_exceptions=True)
            self._sweep = None
        steps: list[CloseAdapters] = []
        if self._shared is not None and self._shared_started:
            steps.append(self._shared.stop)
        predictor = self.live.engine.predictor
        if predictor is not None and self._predictor_started:
            steps.append(predictor.close)
        if self._cache is not None and self._cache_started:
            steps.append(self._cache.close)
        steps.append(close_adapters)
        steps.extend(server.stop for server in self._started_managed)
        self._shared_started = self._predictor_started = self._cache_started = False
        self._started_managed = []
        for step in steps:
            try:
                await step()
            except Exception:
                log.exception("stopping the engine: a step failed")
        # The drained calls' request lines, before the process can exit.
        self.request_log.flush()
        await self.telemetry.stop()

    async def close_current_adapters(self) -> None:
        """The current build's adapters: all there are when nothing reloads (the library)."""
        adapters = self.live.build.adapters.values()
        results = await asyncio.gather(*(a.aclose() for a in adapters), return_exceptions=True)
        for result in results:
            if isinstance(result, Exception):
                log.warning("closing a provider adapter failed: %s", result)


async def _nothing() -> None:
    """A failed start has opened no adapter the front will not close itself."""
