"""The sidecar as a child process (`python -m switchpoint.cli serve`), for tests that need a real
process: signals, exit codes, several replicas."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from switchpoint.v1 import router_pb2_grpc
from tests.providers.fixtures import OPENAI_TEST_KEY

START_TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def write_config(path: Path, config: dict[str, Any]) -> None:
    staging = path.with_suffix(".tmp")
    staging.write_text(yaml.safe_dump(config), encoding="utf-8")
    staging.replace(path)


@dataclass
class ServeProcess:
    proc: asyncio.subprocess.Process
    channel: grpc.aio.Channel
    stub: router_pb2_grpc.RouterAsyncStub
    output: list[str] = field(default_factory=list)

    def signal(self, number: signal.Signals) -> None:
        self.proc.send_signal(number)

    async def exit_code(self, timeout_s: float) -> int:
        return await asyncio.wait_for(self.proc.wait(), timeout_s)


async def _collect(stream: asyncio.StreamReader, into: list[str]) -> None:
    """Keep the child's output flowing (a full pipe would block it) and keep it for messages."""
    async for line in stream:
        into.append(line.decode(errors="replace"))


@contextlib.asynccontextmanager
async def serving(
    config_path: Path,
    port: int,
    environ: Mapping[str, str] | None = None,
    args: Sequence[str] = (),
) -> AsyncIterator[ServeProcess]:
    """`args`: more `serve` options."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "switchpoint.cli",
        "serve",
        "--config",
        str(config_path),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "T_OAI": OPENAI_TEST_KEY, **(environ or {})},
    )
    assert proc.stdout is not None
    output: list[str] = []
    reader = asyncio.create_task(_collect(proc.stdout, output))
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        health = health_pb2_grpc.HealthStub(channel)
        ready = await health.Check(
            health_pb2.HealthCheckRequest(), wait_for_ready=True, timeout=START_TIMEOUT_S
        )
        assert ready.status == health_pb2.HealthCheckResponse.SERVING
        yield ServeProcess(proc, channel, router_pb2_grpc.RouterStub(channel), output)
    finally:
        await channel.close()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await reader
