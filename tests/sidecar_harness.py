"""Builds a real sidecar on a free loopback port and a gRPC client for it, for the tests."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import yaml

from switchpoint.config import load_config, parse_config
from switchpoint.server import Sidecar, create_server
from switchpoint.telemetry import Telemetry
from switchpoint.v1 import router_pb2 as pb
from switchpoint.v1 import router_pb2_grpc

if TYPE_CHECKING:
    from switchpoint.v1.router_pb2_grpc import RouterAsyncStub


@dataclass
class RunningSidecar:
    sidecar: Sidecar
    channel: grpc.aio.Channel
    stub: RouterAsyncStub


def one_model_config(
    base_url: str,
    *,
    api_key_env: str | None = None,
    per_mtok: float = 1000.0,
    quality: float = 0.5,
) -> dict[str, Any]:
    """Provider "oai" at `base_url` serving one model, "gpt" (100k context, the same price per
    million tokens in and out): the base of the limit, budget, shared-state and cache tests."""
    provider: dict[str, Any] = {"kind": "openai", "base_url": base_url}
    if api_key_env is not None:
        provider["api_key_env"] = api_key_env
    return {
        "providers": {"oai": provider},
        "models": [
            {
                "name": "gpt",
                "provider": "oai",
                "price": {"input_per_mtok": per_mtok, "output_per_mtok": per_mtok},
                "context_window": 100000,
                "quality": quality,
                "latency_prior": {"ttft_ms": 100, "tpot_ms": 10},
            }
        ],
    }


def routing_config(openai_url: str = "http://127.0.0.1:9/v1") -> dict[str, Any]:
    """Four models with clear trade-offs: `cheap` is cheapest, `fast` fastest, `strong` best."""
    model = {
        "provider": "openai",
        "context_window": 16000,
        "capabilities": ["chat"],
    }
    return {
        "providers": {"openai": {"kind": "openai", "base_url": openai_url}},
        "models": [
            {
                **model,
                "name": "cheap",
                "price": {"input_per_mtok": 0.1, "output_per_mtok": 0.4},
                "quality": 0.5,
                "latency_prior": {"ttft_ms": 500, "tpot_ms": 20},
            },
            {
                **model,
                "name": "fast",
                "price": {"input_per_mtok": 1.0, "output_per_mtok": 4.0},
                "quality": 0.6,
                "latency_prior": {"ttft_ms": 100, "tpot_ms": 5},
                "capabilities": ["chat", "code"],
            },
            {
                **model,
                "name": "strong",
                "price": {"input_per_mtok": 5.0, "output_per_mtok": 20.0},
                "quality": 0.95,
                "latency_prior": {"ttft_ms": 800, "tpot_ms": 25},
                "context_window": 200000,
                "capabilities": ["chat", "code"],
            },
            {
                **model,
                "name": "tiny",
                "price": {"input_per_mtok": 0.0, "output_per_mtok": 0.0},
                "quality": 0.1,
                "latency_prior": {"ttft_ms": 50, "tpot_ms": 10},
                "context_window": 1024,
            },
        ],
        "routing": {
            "default_strategy": "balanced",
            "strategies": {"thrifty": {"cost": 0.6, "latency": 0.2, "quality": 0.2}},
            "stages": {"architecture": {"models": ["strong", "fast"], "strategy": "quality-first"}},
            "fallback_chain": ["tiny", "cheap"],
        },
    }


def with_changes(base: dict[str, Any], **sections: Any) -> dict[str, Any]:
    out = copy.deepcopy(base)
    out.update(sections)
    return out


def write_config(path: Path, config: dict[str, Any]) -> None:
    """Replaced whole, as editors and config managers do: a reader never sees half a file."""
    staging = path.with_suffix(".tmp")
    staging.write_text(yaml.safe_dump(config), encoding="utf-8")
    staging.replace(path)


@asynccontextmanager
async def running_sidecar(
    config: dict[str, Any],
    environ: Mapping[str, str] | None = None,
    *,
    telemetry: Telemetry | None = None,
    config_path: Path | None = None,
    credentials: grpc.ChannelCredentials | None = None,
    http: bool = False,
) -> AsyncIterator[RunningSidecar]:
    """`config_path`: the config is written there and the sidecar reloads from it.
    `credentials`: the client dials with TLS (the server certificate names 127.0.0.1).
    `http`: the HTTP front is served too, on a free port (`sidecar.http_port`)."""
    if config_path is not None:
        write_config(config_path, config)
        loaded = load_config(config_path)
    else:
        loaded = parse_config(config)
    sidecar, port = await create_server(
        loaded,
        "127.0.0.1:0",
        environ=environ or {},
        telemetry=telemetry,
        config_path=config_path,
        http_address="127.0.0.1:0" if http else None,
    )
    try:
        await sidecar.start()
    except BaseException:
        await sidecar.stop(0)
        raise
    target = f"127.0.0.1:{port}"
    channel = (
        grpc.aio.insecure_channel(target)
        if credentials is None
        else grpc.aio.secure_channel(target, credentials)
    )
    try:
        yield RunningSidecar(sidecar, channel, router_pb2_grpc.RouterStub(channel))
    finally:
        await channel.close()
        await sidecar.stop(0)


def user(text: str) -> list[pb.Message]:
    return [pb.Message(role="user", content=text)]
