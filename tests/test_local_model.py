"""The local model server supervisor, exercised with a stand-in server instead of llama.cpp."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from switchpoint.config import ManagedServerConfig
from switchpoint.errors import SwitchpointError
from switchpoint.local_model import (
    ManagedModelServer,
    find_free_port,
    guarded_module_argv,
    resolve_model_path,
)
from tests.support.waiting import wait_until

STANDIN = Path(__file__).parent / "support" / "standin_server.py"
REPO_ROOT = Path(__file__).parent.parent
SERVER_NAME = "local-test"

MakeServer = Callable[..., ManagedModelServer]


def process_gone(pid: int) -> bool:
    """True when `pid` no longer runs; a zombie counts as gone (its parent may not be us)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    state = stat.rsplit(")", 1)[1].split()[0]
    return state in {"Z", "X"}


@pytest.fixture
async def make_server() -> AsyncIterator[MakeServer]:
    """Builds supervisors of the stand-in server; stops every one of them after the test."""
    created: list[ManagedModelServer] = []

    def build(*standin_args: str, **config: Any) -> ManagedModelServer:
        port = find_free_port()
        settings: dict[str, Any] = {"model": "unused.gguf", "port": port, "startup_timeout_s": 10}
        settings.update(config)
        argv = [sys.executable, str(STANDIN), "--port", str(port), *standin_args]
        server = ManagedModelServer(
            SERVER_NAME,
            ManagedServerConfig(**settings),
            logger=logging.getLogger("test.local_model"),
            argv=argv,
        )
        created.append(server)
        return server

    yield build
    for server in created:
        await server.stop(grace_s=1.0)


async def models_status(server: ManagedModelServer) -> int:
    async with httpx.AsyncClient(trust_env=False) as client:
        return (await client.get(f"{server.base_url}/models")).status_code


async def test_start_returns_only_once_healthy(make_server: MakeServer) -> None:
    server = make_server("--startup-delay", "1.0")
    started = time.monotonic()
    await server.start()
    assert time.monotonic() - started >= 1.0
    assert server.healthy
    assert server.pid is not None
    assert await models_status(server) == 200


async def test_base_url_names_host_and_port(make_server: MakeServer) -> None:
    server = make_server(host="127.0.0.1", port=8089)
    assert server.base_url == "http://127.0.0.1:8089/v1"
    assert not server.healthy
    assert server.pid is None
    assert server.restarts == 0


async def test_output_is_drained_to_the_logger_at_debug(
    make_server: MakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="test.local_model")
    server = make_server()
    await server.start()
    await wait_until(lambda: any("standin: listening" in line for line in server.output_tail()))
    debug_lines = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert any("standin: listening" in line for line in debug_lines)


async def test_killed_child_is_restarted(make_server: MakeServer) -> None:
    server = make_server()
    await server.start()
    first_pid = server.pid
    assert first_pid is not None
    os.kill(first_pid, signal.SIGKILL)
    await wait_until(lambda: server.pid not in (None, first_pid) and server.healthy)
    assert server.restarts == 1
    assert process_gone(first_pid)
    assert await models_status(server) == 200


async def test_restarting_stops_after_max_restarts_failures(
    make_server: MakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="test.local_model")
    server = make_server("--exit-after", "0.5", max_restarts=2)
    await server.start()
    await wait_until(lambda: "not restarting it again" in caplog.text, timeout_s=30)
    assert server.restarts == 2
    assert not server.healthy
    assert server.pid is None


async def test_never_healthy_child_fails_start_with_its_output(
    make_server: MakeServer, tmp_path: Path
) -> None:
    pid_file = tmp_path / "pid"
    server = make_server("--never-healthy", "--pid-file", str(pid_file), startup_timeout_s=1.5)
    started = time.monotonic()
    with pytest.raises(SwitchpointError) as failure:
        await server.start()
    assert time.monotonic() - started < 1.5 + 3.0
    message = str(failure.value)
    assert f"'{SERVER_NAME}'" in message
    assert "within 1.5s" in message
    assert "standin: refusing to become healthy" in message
    assert process_gone(int(pid_file.read_text()))
    assert server.pid is None
    assert not server.healthy


async def test_child_exiting_during_startup_fails_fast() -> None:
    config = ManagedServerConfig(model="unused.gguf", port=find_free_port(), startup_timeout_s=30)
    argv = [sys.executable, "-c", "print('cannot load model'); raise SystemExit(7)"]
    server = ManagedModelServer(SERVER_NAME, config, argv=argv)
    started = time.monotonic()
    with pytest.raises(SwitchpointError, match="exited with code 7") as failure:
        await server.start()
    assert time.monotonic() - started < 10
    assert "cannot load model" in str(failure.value)
    await server.stop()


async def test_missing_executable_fails_start_clearly() -> None:
    config = ManagedServerConfig(model="unused.gguf", port=find_free_port())
    server = ManagedModelServer(SERVER_NAME, config, argv=["/nonexistent/model-server"])
    with pytest.raises(SwitchpointError, match="could not be started"):
        await server.start()
    await server.stop()


async def test_stop_leaves_no_process_and_is_idempotent(
    make_server: MakeServer, tmp_path: Path
) -> None:
    grandchild_file = tmp_path / "grandchild"
    server = make_server("--grandchild-pid-file", str(grandchild_file))
    await server.start()
    pid = server.pid
    assert pid is not None
    grandchild = int(grandchild_file.read_text())
    await server.stop()
    assert process_gone(pid)
    await wait_until(lambda: process_gone(grandchild), timeout_s=5)
    assert server.pid is None
    assert not server.healthy
    await server.stop()


async def test_stop_kills_a_child_that_ignores_sigterm(make_server: MakeServer) -> None:
    server = make_server("--ignore-sigterm")
    await server.start()
    pid = server.pid
    assert pid is not None
    started = time.monotonic()
    await server.stop(grace_s=0.5)
    assert time.monotonic() - started < 5
    assert process_gone(pid)


async def test_stop_before_start_and_start_twice_are_harmless(make_server: MakeServer) -> None:
    server = make_server()
    await server.stop()
    await server.start()
    pid = server.pid
    await server.start()
    assert server.pid == pid
    assert server.restarts == 0


# A sidecar that supervises the stand-in through the parent-death guard, then waits to be killed.
SIDECAR_SCRIPT = """
import asyncio, sys
from switchpoint.config import ManagedServerConfig
from switchpoint.local_model import ManagedModelServer, guarded_module_argv

async def main():
    port, pid_file = sys.argv[1], sys.argv[2]
    argv = guarded_module_argv(
        "tests.support.standin_server", ["--port", port, "--pid-file", pid_file]
    )
    config = ManagedServerConfig(model="unused.gguf", port=int(port), startup_timeout_s=10)
    await ManagedModelServer("guarded", config, argv=argv).start()
    print("ready", flush=True)
    await asyncio.sleep(600)

asyncio.run(main())
"""


async def test_guarded_child_does_not_outlive_a_killed_sidecar(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    sidecar = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        SIDECAR_SCRIPT,
        str(find_free_port()),
        str(pid_file),
        cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    assert sidecar.stdout is not None
    try:
        line = await asyncio.wait_for(sidecar.stdout.readline(), timeout=20)
        assert line == b"ready\n"
        child = int(pid_file.read_text())
        assert not process_gone(child)
    finally:
        sidecar.kill()
        await sidecar.communicate()
    await wait_until(lambda: process_gone(child), timeout_s=10)


def test_guarded_argv_runs_the_module_with_this_interpreter() -> None:
    argv = guarded_module_argv("llama_cpp.server", ["--port", "1"])
    assert argv[0] == sys.executable
    assert argv[1] == "-c"
    assert argv[3:] == [str(os.getpid()), "llama_cpp.server", "--port", "1"]


async def test_start_without_llama_cpp_says_how_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("switchpoint.local_model.llama_cpp_available", lambda: False)
    config = ManagedServerConfig(model="package:json/__init__.py", port=find_free_port())
    server = ManagedModelServer(SERVER_NAME, config)
    with pytest.raises(SwitchpointError, match="not installed: run `make local-model`"):
        await server.start()


def test_resolve_package_spec_finds_the_file_inside_the_package() -> None:
    resolved = resolve_model_path("package:json/__init__.py")
    assert resolved == Path(json.__file__)
    assert resolved.is_file()


def test_resolve_dotted_package_spec() -> None:
    import email.mime

    resolved = resolve_model_path("package:email.mime/text.py")
    assert resolved == Path(email.mime.__file__).parent / "text.py"


def test_resolve_plain_path(tmp_path: Path) -> None:
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF")
    assert resolve_model_path(str(model)) == model


def test_resolve_missing_package_says_how_to_install() -> None:
    with pytest.raises(SwitchpointError) as failure:
        resolve_model_path("package:no_such_model_package_xyz/model.gguf")
    message = str(failure.value)
    assert "'no_such_model_package_xyz' is not installed" in message
    assert "make local-model" in message


def test_resolve_missing_file_in_package() -> None:
    with pytest.raises(SwitchpointError, match=r"has no file 'missing.gguf'.*make local-model"):
        resolve_model_path("package:json/missing.gguf")


@pytest.mark.parametrize("spec", ["package:json", "package:/model.gguf"])
def test_resolve_malformed_package_spec(spec: str) -> None:
    with pytest.raises(SwitchpointError, match="package:MODULE/RELATIVE/PATH"):
        resolve_model_path(spec)


def test_resolve_module_that_is_not_a_package() -> None:
    with pytest.raises(SwitchpointError, match="is a module, not a package"):
        resolve_model_path("package:shlex/model.gguf")


def test_resolve_missing_plain_path(tmp_path: Path) -> None:
    with pytest.raises(SwitchpointError, match="does not exist"):
        resolve_model_path(str(tmp_path / "absent.gguf"))
