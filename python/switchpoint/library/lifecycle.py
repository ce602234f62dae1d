"""An embedded engine: built by the server factory (`build_engine_parts`), started and stopped by
`server.running` as the sidecar's is, with the application's OpenTelemetry providers when it
installed some."""

from __future__ import annotations

from collections.abc import Mapping

from switchpoint.config import Config
from switchpoint.logs import SECRETS
from switchpoint.security.secrets import config_secrets
from switchpoint.server.factory import EngineParts, build_engine_parts
from switchpoint.server.running import RunningEngine
from switchpoint.telemetry import ApplicationProviders, Telemetry


class EmbeddedEngine:
    """The engine parts and their running state, for one `Router`."""

    def __init__(self, parts: EngineParts) -> None:
        self.parts = parts
        self.live = parts.live
        self._running = RunningEngine(
            parts.live,
            telemetry=parts.telemetry,
            request_log=parts.request_log,
            cache=parts.cache,
            managed=parts.managed,
            offload=parts.offload,
        )

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
        try:
            await self._running.start()
        except BaseException:
            # What the start opened it has closed; the adapters are this front's to close.
            await self._running.close_current_adapters()
            SECRETS.withdraw(self)
            raise

    async def stop(self) -> None:
        try:
            await self._running.stop(self._running.close_current_adapters)
        finally:
            SECRETS.withdraw(self)
