"""The sidecar as a process (`python -m switchpoint.cli serve`): SIGTERM drains a stream in flight
and refuses new calls, then the process exits 0 within the grace; SIGHUP reloads the config file."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from switchpoint.v1 import router_pb2 as pb
from switchpoint.v1 import router_pb2_grpc
from tests.providers.openai_server import OpenAIServer
from tests.providers.script import echo_answer, hang
from tests.sidecar_harness import user
from tests.support.serve_process import free_port, serving, write_config

GRACE_S = 8.0
TEXT = "one two three four five six seven eight"


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


def _request(text: str = TEXT) -> pb.ChatRequest:
    return pb.ChatRequest(messages=user(text), routing=pb.RoutingOptions(stage="s"))


async def _refused(stub: router_pb2_grpc.RouterAsyncStub) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Route(pb.RouteRequest(messages=user("hi")), timeout=5)
    return caught.value.code()


async def test_sigterm_drains_the_stream_in_flight_refuses_new_calls_and_exits_0(
    openai_server: OpenAIServer, tmp_path: Path
) -> None:
    port = free_port()
    path = tmp_path / "switchpoint.yaml"
    write_config(path, _config(openai_server, port))
    async with serving(path, port) as served:
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
    port = free_port()
    path = tmp_path / "switchpoint.yaml"
    write_config(path, _config(openai_server, port))
    async with serving(path, port) as served:
        route = pb.RouteRequest(messages=user("hi"), routing=pb.RoutingOptions(stage="s"))
        assert (await served.stub.Route(route)).model == "cheap"

        write_config(path, _config(openai_server, port, strategy="quality-first"))
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
