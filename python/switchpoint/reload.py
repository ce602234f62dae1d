"""Config hot reload: swapping engines while calls in flight keep the one they started with, the
changes a reload applies only after a restart, and the config file's stamp the watcher compares.
What a reload carries over and what it refuses is `engine.building`'s to decide.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from switchpoint.config import Config
from switchpoint.engine.building import EngineBuild
from switchpoint.engine.path import Engine


@dataclass(frozen=True, slots=True)
class ReloadResult:
    """The outcome of one reload. `version` is the running config's: incremented on success,
    unchanged on a refusal. `warnings` name changes that only take effect after a restart."""

    ok: bool
    version: int
    errors: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


def applies_after_restart(running: Config, new: Config) -> list[str]:
    """Changes a reload accepts but cannot apply to state it keeps (the latency tracker and the
    priority queues are carried over, built with the old values)."""
    notes: list[str] = []
    if new.routing.latency_half_life_s != running.routing.latency_half_life_s:
        notes.append("routing.latency_half_life_s: the new value applies after a restart")
    if new.routing.queue_max_age_s != running.routing.queue_max_age_s:
        notes.append("routing.queue_max_age_s: the new value applies after a restart")
    # gRPC takes these when the server is built; the other limits follow a reload.
    for name in ("max_message_bytes", "max_concurrent_rpcs"):
        if getattr(new.server.limits, name) != getattr(running.server.limits, name):
            notes.append(f"server.limits.{name}: the new value applies after a restart")
    # The tracer, meter and /metrics listener are built once per process; the request log's own
    # settings (log_prompts, request_log_flush_ms) do follow a reload.
    for name in ("metrics_address", "sample_ratio", "service_name"):
        if getattr(new.telemetry, name) != getattr(running.telemetry, name):
            notes.append(f"telemetry.{name}: the new value applies after a restart")
    return notes


class LiveEngine:
    """The engine new calls get, swapped whole by a reload, and the reload state GetStats shows.

    A call that uses providers holds the engine it started with (`hold`) to its end. When the last
    call holding a replaced engine ends, its `on_drained` callback runs: that is when what only it
    used may be closed. Single event loop: no locks.
    """

    def __init__(self, build: EngineBuild) -> None:
        self.build = build
        # The running config's version: 1 for the one the sidecar started with.
        self.version = 1
        # Why the last reload was refused; empty when it succeeded (or none was tried).
        self.error = ""
        self._in_flight: dict[Engine, int] = {}
        self._on_drained: dict[Engine, Callable[[], None]] = {}

    @property
    def engine(self) -> Engine:
        return self.build.engine

    def __call__(self) -> Engine:
        """The current engine: the getter servicers use for calls that finish without awaiting."""
        return self.build.engine

    def hold(self) -> _Held:
        """The current engine, counted as in use until the block ends."""
        return _Held(self)

    def _release(self, engine: Engine) -> None:
        left = self._in_flight.pop(engine) - 1
        if left:
            self._in_flight[engine] = left
        else:
            drained = self._on_drained.pop(engine, None)
            if drained is not None:
                drained()

    def in_flight(self, engine: Engine) -> int:
        return self._in_flight.get(engine, 0)

    def swap(self, build: EngineBuild, on_drained: Callable[[], None]) -> None:
        """Make `build` current; `on_drained` runs once no call holds the replaced engine (now,
        if none does)."""
        replaced = self.build.engine
        self.build = build
        self.version += 1
        self.error = ""
        if replaced in self._in_flight:
            self._on_drained[replaced] = on_drained
        else:
            on_drained()


@dataclass(frozen=True, slots=True)
class FileStamp:
    """What the config watcher compares: a change in any part means the file changed. The hash
    catches a rewrite within the file system's timestamp resolution that keeps the size."""

    mtime_ns: int
    size: int
    sha256: str


def file_stamp(path: Path) -> FileStamp | None:
    """The file's stamp; None while it cannot be read (e.g. mid-replace by an editor)."""
    try:
        stat = path.stat()
        data = path.read_bytes()
    except OSError:
        return None
    return FileStamp(stat.st_mtime_ns, stat.st_size, hashlib.sha256(data).hexdigest())


class _Held:
    """`LiveEngine.hold` as a plain context manager: every Chat enters one, and a generator-based
    one costs a few microseconds more."""

    __slots__ = ("_engine", "_live")

    def __init__(self, live: LiveEngine) -> None:
        self._live = live
        self._engine: Engine | None = None

    def __enter__(self) -> Engine:
        live = self._live
        engine = self._engine = live.build.engine
        live._in_flight[engine] = live._in_flight.get(engine, 0) + 1
        return engine

    def __exit__(self, *exc_info: object) -> None:
        if self._engine is not None:
            self._live._release(self._engine)
