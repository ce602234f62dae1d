"""One running sidecar (`server.factory` builds it) and its life: start, config reloads, the
watchers and sweeps it runs, graceful stop. No module-level state, so tests can build many per
process."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Iterable, Mapping
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2

from switchpoint.cache.build import CacheService
from switchpoint.config import Config, load_config
from switchpoint.engine.building import EngineBuild, build_engine, restart_only_changes
from switchpoint.engine.path import Engine
from switchpoint.errors import ConfigError
from switchpoint.local_model import ManagedModelServer
from switchpoint.logs import SECRETS
from switchpoint.offload import Offload
from switchpoint.providers.base import ProviderAdapter
from switchpoint.reload import (
    FileStamp,
    LiveEngine,
    ReloadResult,
    applies_after_restart,
    file_stamp,
)
from switchpoint.request_log import RequestLog
from switchpoint.security.secrets import config_secrets
from switchpoint.security.tls import ServerTls, is_loopback, read_certificates
from switchpoint.server.http import HttpServer
from switchpoint.server.router_servicer import SERVICE as ROUTER_SERVICE
from switchpoint.server.running import RunningEngine
from switchpoint.telemetry import Telemetry

log = logging.getLogger("switchpoint.server")

# Health entries of their own, so a probe on "" stays SERVING (the replica still serves) while
# monitoring can see that shared budgets run on local leases only, or that the last config
# reload was refused (the replica runs an older config than its file).
SHARED_STATE_SERVICE = "switchpoint.v1.SharedState"
CONFIG_SERVICE = "switchpoint.v1.Config"
SHARED_STATE_POLL_S = 1.0
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Sidecar:
    """One running switchpoint: call `start()`, then `stop()`; `port` is the bound gRPC port.
    `reload()` swaps in a new config; `engine` and `config` are always the current ones."""

    def __init__(
        self,
        *,
        live: LiveEngine,
        managed: list[ManagedModelServer],
        grpc_server: grpc.aio.Server,
        health_servicer: health.aio.HealthServicer,
        port: int,
        environ: Mapping[str, str],
        config_path: Path | None = None,
        telemetry: Telemetry,
        request_log: RequestLog,
        cache: CacheService | None = None,
        tls: ServerTls | None = None,
        bound: str = "",
        offload: Offload | None = None,
        http: HttpServer | None = None,
    ) -> None:
        self.port = port
        self._http = http
        # Each health entry's status by service name ("" is the whole sidecar), as the gRPC
        # health service answers it: what GET /healthz shows.
        self._health_view: dict[str, str] = {"": "NOT_SERVING"}
        if http is not None:
            http.front.health = self.health_view
        self._tls = tls
        self._bound = bound
        self._offload = offload
        self._request_log = request_log
        self.grpc_server = grpc_server
        self._live = live
        self._health = health_servicer
        self._environ = environ
        self._config_path = config_path
        self._telemetry = telemetry
        self._shared = live.engine.gate.shared
        self._shared_watch: asyncio.Task[None] | None = None
        # The engine's side of start and stop, shared with the library (server.running).
        self._running = RunningEngine(
            live,
            telemetry=telemetry,
            request_log=request_log,
            cache=cache,
            managed=managed,
            offload=offload,
        )
        # Reloads run one at a time, whether from the watcher, SIGHUP or Admin.
        self._reload_lock = asyncio.Lock()
        self._stamp: FileStamp | None = None if config_path is None else file_stamp(config_path)
        # The same for the files the config names (keys file, certificates), by name.
        self._beside_stamps = _stamps(_files_beside(live.engine.config))
        self._config_watch: asyncio.Task[None] | None = None
        self._signal_loop: asyncio.AbstractEventLoop | None = None
        self._reloads: set[asyncio.Task[ReloadResult]] = set()
        # Every adapter not closed yet, by identity: the current engine's and those a reload
        # retired whose old engine has not drained.
        self._open_adapters = {id(a): a for a in live.build.adapters.values()}
        self._closing: set[asyncio.Task[None]] = set()

    @property
    def engine(self) -> Engine:
        return self._live.engine

    @property
    def offload(self) -> Offload | None:
        """Where large requests are routed (switchpoint.offload)."""
        return self._offload

    def health_view(self) -> dict[str, str]:
        return dict(self._health_view)

    async def _set_health(
        self, service: str, status: health_pb2.HealthCheckResponse.ServingStatus
    ) -> None:
        self._health_view[service] = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
        await self._health.set(service, status)

    @property
    def http_port(self) -> int | None:
        """The bound port of the HTTP front (server.http_address); None when it is off."""
        return None if self._http is None else self._http.port

    @property
    def http_address(self) -> str:
        """The address the HTTP front was bound to ("" when it is off)."""
        return "" if self._http is None else self._http.address

    @property
    def metrics_port(self) -> int | None:
        return self._telemetry.metrics_port

    @property
    def config(self) -> Config:
        return self._live.engine.config

    def security_notes(self) -> list[tuple[int, str]]:
        """What a caller must present and how the port is protected, as (log level, line): said
        at start, so an operator sees the sidecar's trust mode without reading the config."""
        keys = self._live.build.tenant_keys
        notes: list[tuple[int, str]] = []
        if keys.enabled:
            notes.append(
                (
                    logging.INFO,
                    f"tenant API keys required on switchpoint.v1.Router ({len(keys)} keys, "
                    f"{len(keys.tenants())} tenants)",
                )
            )
        else:
            notes.append(
                (
                    logging.INFO,
                    "no tenant API keys configured (auth): trusted-caller mode, every caller may "
                    "name any tenant",
                )
            )
        if self._tls is not None:
            client = (
                "client certificates required"
                if self._tls.requires_client_certificates
                else "no client certificates"
            )
            notes.append((logging.INFO, f"TLS on the gRPC port ({client})"))
        elif not is_loopback(self._bound):
            notes.append(
                (
                    logging.WARNING,
                    f"PLAINTEXT gRPC on non-loopback address {self._bound}: prompts, answers and "
                    "keys cross the network unencrypted; set server.tls",
                )
            )
        if self._http is not None and self._tls is None:
            http_address = self._http.address
            if not is_loopback(http_address):
                notes.append(
                    (
                        logging.WARNING,
                        f"PLAINTEXT HTTP on non-loopback address {http_address}: prompts, "
                        "answers and keys cross the network unencrypted; set server.tls",
                    )
                )
        return notes

    @property
    def config_version(self) -> int:
        return self._live.version

    @property
    def config_error(self) -> str:
        return self._live.error

    async def start(self) -> None:
        try:
            await self._running.start()
            if self._shared is not None:
                self._shared_watch = asyncio.create_task(self._watch_shared_state())
            await self.grpc_server.start()
            if self._http is not None:
                await self._http.start()
        except BaseException:
            # Never leave a child model server, a lease or the predictor's threads behind a
            # sidecar that failed to start.
            await _cancelled(self._shared_watch)
            self._shared_watch = None
            await self._running.stop(self._close_open_adapters)
            raise
        for service in ("", ROUTER_SERVICE, CONFIG_SERVICE):
            await self._set_health(service, SERVING)
        for level, note in self.security_notes():
            log.log(level, "%s", note)
        self._watch_config_if_set()

    async def stop(self, grace_s: float | None = None) -> None:
        """Stop accepting calls, let in-flight ones finish within the grace, then clean up.

        grpc.aio's stop(grace) refuses new calls at once (UNAVAILABLE) and waits for the calls in
        flight, streams included, cancelling those still running when the grace is over."""
        grace = self.config.server.graceful_stop_s if grace_s is None else grace_s
        await self._stop_reloading()
        await self._health.enter_graceful_shutdown()
        self._health_view = dict.fromkeys(self._health_view, "NOT_SERVING")
        if self._http is not None:
            # Both fronts drain at once, within the same grace.
            await asyncio.gather(self.grpc_server.stop(grace), self._http.stop(grace))
        else:
            await self.grpc_server.stop(grace)
        await _cancelled(self._shared_watch)
        self._shared_watch = None
        await self._running.stop(self._close_open_adapters)
        SECRETS.withdraw(self)

    async def _close_open_adapters(self) -> None:
        await self._close_adapters(list(self._open_adapters.values()))
        await asyncio.gather(*self._closing)

    async def wait(self) -> None:
        await self.grpc_server.wait_for_termination()

    # -- config reload ------------------------------------------------------------------------

    async def reload(self, source: Path | None = None) -> ReloadResult:
        """Load `source` (default: the file the sidecar was started from), validate it fully and
        swap it in: calls in flight finish on the config they started with, new calls get the new
        one. A config that cannot run is refused: the running one stays, the error is logged and
        shown by GetStats and by the "switchpoint.v1.Config" health entry until a reload works."""
        async with self._reload_lock:
            path = source or self._config_path
            if path is None:
                return await self._refused(
                    ["(file): the sidecar was started without a config file"], "reload"
                )
            if path == self._config_path:
                # Taken before reading, so a change made while loading is seen on the next poll.
                self._stamp = file_stamp(path)
            try:
                config = load_config(path)
                self._beside_stamps.update(_stamps(_files_beside(config)))
                # Published before anything can log about the new config: a provider it adds.
                SECRETS.publish(self, config_secrets(config, self._environ))
                certificates = self._read_certificates(config)
                await self._reload_outcomes(config)
                build = build_engine(config, environ=self._environ, previous=self._live.build)
            except ConfigError as exc:
                return await self._refused(exc.errors, str(path))
            except Exception as exc:  # anything else that refuses the config (e.g. the Rust table)
                return await self._refused([str(exc)], str(path))
            warnings = applies_after_restart(self.config, config)
            SECRETS.publish(self, config_secrets(config, self._environ, build.tenant_keys))
            self._swap(build)
            if self._tls is not None and certificates is not None:
                self._tls.update(certificates)
                if self._http is not None and config.server.tls is not None:
                    self._http.update_tls(config.server.tls)
            self._request_log.configure(
                log_prompts=config.telemetry.log_prompts,
                flush_after_s=config.telemetry.request_log_flush_ms / 1000.0,
            )
            for warning in warnings:
                log.warning("config reload: %s", warning)
            log.info("config %s reloaded: version %d", path, self._live.version)
            await self._set_health(CONFIG_SERVICE, SERVING)
            self._watch_config_if_set()
            return ReloadResult(True, self._live.version, warnings=tuple(warnings))

    async def _reload_outcomes(self, config: Config) -> None:
        """The predictor's outcome files as `config` lists them (ConfigError for a bad one),
        unless `config` cannot be applied anyway (build_engine says why)."""
        predictor = self._live.engine.predictor
        if predictor is None or restart_only_changes(self.config, config):
            return
        await predictor.load_outcome_files(
            config.routing.predictor.outcomes, [m.name for m in config.models]
        )

    def _read_certificates(self, config: Config) -> grpc.ServerCertificateConfiguration | None:
        tls = config.server.tls
        # Turning TLS on or off is refused by build_engine (a restart-only change).
        return read_certificates(tls) if tls is not None and self._tls is not None else None

    def install_reload_signal(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Reload the config file on SIGHUP (Unix only). `stop` removes the handler."""
        loop = loop or asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, self._reload_in_background)
        self._signal_loop = loop

    def _reload_in_background(self) -> None:
        task = asyncio.get_running_loop().create_task(self.reload())
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    async def _refused(self, errors: list[str], source: str) -> ReloadResult:
        self._live.error = f"reload of {source} refused: {'; '.join(errors)}"
        log.error("%s (still running config version %d)", self._live.error, self._live.version)
        await self._set_health(CONFIG_SERVICE, NOT_SERVING)
        return ReloadResult(False, self._live.version, tuple(errors))

    def _swap(self, build: EngineBuild) -> None:
        for adapter in build.adapters.values():
            self._open_adapters.setdefault(id(adapter), adapter)
        retired = build.retired
        self._live.swap(build, lambda: self._close_later(retired))

    def _close_later(self, adapters: Iterable[ProviderAdapter]) -> None:
        """Called when the engine that used `adapters` has no call left in flight."""
        adapters = list(adapters)
        if adapters:
            task = asyncio.get_running_loop().create_task(self._close_adapters(adapters))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def _close_adapters(self, adapters: list[ProviderAdapter]) -> None:
        # Popped before awaiting, so stop() and a drained engine never close one adapter twice.
        still_open = [
            self._open_adapters.pop(id(a)) for a in adapters if id(a) in self._open_adapters
        ]
        results = await asyncio.gather(
            *(adapter.aclose() for adapter in still_open), return_exceptions=True
        )
        for result in results:
            if isinstance(result, Exception):
                log.warning("closing a provider adapter failed: %s", result)

    def _watch_config_if_set(self) -> None:
        if self._config_path is None or self.config.server.reload_poll_s is None:
            return
        if self._config_watch is None or self._config_watch.done():
            self._config_watch = asyncio.create_task(self._watch_config(self._config_path))

    async def _watch_config(self, path: Path) -> None:
        # The interval is read each round: a reload may change it, or turn watching off.
        while (poll_s := self.config.server.reload_poll_s) is not None:
            await asyncio.sleep(poll_s)
            stamp = file_stamp(path)
            if stamp is not None and stamp != self._stamp:
                log.info("config file %s changed: reloading", path)
                await self.reload()
                continue
            beside = _stamps(_files_beside(self.config))
            changed = [name for name, s in beside.items() if s != self._beside_stamps.get(name)]
            if changed:
                log.info("%s changed: reloading", ", ".join(changed))
                await self.reload()

    async def _stop_reloading(self) -> None:
        if self._signal_loop is not None:
            self._signal_loop.remove_signal_handler(signal.SIGHUP)
            self._signal_loop = None
        await _cancelled(self._config_watch, *self._reloads)
        self._config_watch = None

    async def _watch_shared_state(self) -> None:
        assert self._shared is not None
        while True:
            status = NOT_SERVING if self._shared.degraded else SERVING
            await self._set_health(SHARED_STATE_SERVICE, status)
            await asyncio.sleep(SHARED_STATE_POLL_S)


def _files_beside(config: Config) -> list[str]:
    """The files a config load reads besides the config: a change to one reloads the config too,
    so a key file edited or a certificate renewed in place is taken without a signal."""
    tls = config.server.tls
    names = [config.auth.keys_file]
    if tls is not None:
        names += [tls.cert_file, tls.key_file, tls.client_ca_file]
    return [name for name in names if name]


def _stamps(names: Iterable[str]) -> dict[str, FileStamp | None]:
    return {name: file_stamp(Path(name)) for name in names}


async def _cancelled(*tasks: asyncio.Task[object] | None) -> None:
    """Cancel the tasks and wait until they have ended."""
    live = [task for task in tasks if task is not None]
    for task in live:
        task.cancel()
    await asyncio.gather(*live, return_exceptions=True)
