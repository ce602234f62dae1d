"""The sidecar as a process (`python -m switchpoint.cli serve`): SIGTERM drains a stream in flight
and refuses new calls, then the process exits 0 within the grace; SIGHUP reloads the config file."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from switchpoint.v1 import router_pb2 as pb
from switchpoint.v1 import router_pb2_grpc
from tests.providers.fixtures import OPENAI_TEST_KEY
from tests.providers.openai_server import OpenAIServer
from tests.providers.script import echo_answer, hang
from tests.sidecar_harness import user

GRACE_S = 8.0
START_TIMEOUT_S = 30.0
TEXT = "one two three four five six seven eight"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _config(openai: OpenAIServer, port: int, strategy: str = "cost-first") -> dict[str, Any]:
    common = {
        "provider": "oai",
        "context_window": 100000,
        "latency_prior": {"ttft_ms": 100, "tpot_ms": 10},
    }
    return {
        # Reloads here come from SIGHUP only.
        "server": {
            "grpc_address": f"127.0.0.1:{port}",
            "graceful_stop_s": GRACE_S,
            "reload_poll_s": None,
        },
        "providers": {
            "oai": {"kind": "openai", "base_url": openai.base_url, "api_key_env": "T_OAI"}
        },
        "models": [
            {
                **common,
                "name": "cheap",
                "quality": 0.3,
                "price": {"input_per_mtok": 1.0, "output_per_mtok": 1.0},
            },
            {
                **common,
                "name": "strong",
                "quality": 0.95,
                "price": {"input_per_mtok": 5.0, "output_per_mtok": 5.0},
            },
        ],
        "routing": {"stages": {"s": {"models": ["cheap", "strong"], "strategy": strategy}}},
    }


def _write(path: Path, config: dict[str, Any]) -> None:
    staging = path.with_suffix(".tmp")
    staging.write_text(yaml.safe_dump(config), encoding="utf-8")
    staging.replace(path)


@dataclass
class Process:
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
async def _serving(config_path: Path, port: int) -> AsyncIterator[Process]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "switchpoint.cli",
        "serve",
        "--config",
        str(config_path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "T_OAI": OPENAI_TEST_KEY},
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
        yield Process(proc, channel, router_pb2_grpc.RouterStub(channel), output)
    finally:
        await channel.close()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await reader


def _request(text: str = TEXT) -> pb.ChatRequest:
    return pb.ChatRequest(messages=user(text), routing=pb.RoutingOptions(stage="s"))


async def _refused(stub: router_pb2_grpc.RouterAsyncStub) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Route(pb.RouteRequest(messages=user("hi")), timeout=5)
    return caught.value.code()


async def test_sigterm_drains_the_stream_in_flight_refuses_new_calls_and_exits_0(
    openai_server: OpenAIServer, tmp_path: Path
) -> None:
    port = _free_port()
    path = tmp_path / "switchpoint.yaml"
    _write(path, _config(openai_server, port))
    async with _serving(path, port) as served:
        # Two tokens, then the provider stalls for a while before finishing the answer.
        openai_server.script.push(hang(1.5, after_chunks=2))
        call = served.stub.ChatStream(_request())
        chunks: list[pb.ChatChunk] = []
        for _ in range(2):
            chunk = await call.read()
            assert isinstance(chunk, pb.ChatChunk)
            assert not chunk.done
            chunks.append(chunk)

        served.signal(signal.SIGTERM)
        signalled = time.monotonic()
        await asyncio.sleep(0.3)
        # The stream is still in flight, and new calls are refused, on a new connection or
        # on the one the stream uses.
        other = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        try:
            assert await _refused(router_pb2_grpc.RouterStub(other)) == grpc.StatusCode.UNAVAILABLE
        finally:
            await other.close()
        assert await _refused(served.stub) == grpc.StatusCode.UNAVAILABLE

        while (chunk := await call.read()) is not grpc.aio.EOF:
            assert isinstance(chunk, pb.ChatChunk)
            chunks.append(chunk)
        assert chunks[-1].done
        assert "".join(c.delta for c in chunks) == echo_answer("cheap", TEXT)
        assert await call.code() == grpc.StatusCode.OK

        code = await served.exit_code(GRACE_S + 5)
        assert code == 0, "".join(served.output)
        assert time.monotonic() - signalled < GRACE_S
        assert "stopping: draining in-flight calls" in "".join(served.output)


async def test_sighup_reloads_the_config_file(openai_server: OpenAIServer, tmp_path: Path) -> None:
    port = _free_port()
    path = tmp_path / "switchpoint.yaml"
    _write(path, _config(openai_server, port))
    async with _serving(path, port) as served:
        route = pb.RouteRequest(messages=user("hi"), routing=pb.RoutingOptions(stage="s"))
        assert (await served.stub.Route(route)).model == "cheap"

        _write(path, _config(openai_server, port, strategy="quality-first"))
        served.signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while (stats := await served.stub.GetStats(pb.StatsRequest())).config_version < 2:
            assert served.proc.returncode is None, "".join(served.output)
            assert time.monotonic() < deadline, "".join(served.output)
            await asyncio.sleep(0.05)
        assert stats.config_error == ""
        assert (await served.stub.Route(route)).model == "strong"

        served.signal(signal.SIGTERM)
        assert await served.exit_code(GRACE_S + 5) == 0, "".join(served.output)
