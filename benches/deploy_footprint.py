"""Resident memory and CPU per Chat of the sidecar on the Kubernetes base config
(deploy/kubernetes/base/switchpoint.yaml: semantic cache on, 20,000 entries), the figures the
pod's resource requests are sized from (docs/operations.md#sizing).

    python -m benches.deploy_footprint [--chats N] [--no-cache]

One process: the sidecar, its caller and a loopback OpenAI provider answering at once. Chats
are sent one after another with distinct prompts, so every one misses the cache, is embedded,
answered and stored. CPU is the whole process's, over the calls after the first WARM_UP (the
caller's and the provider's share included: an upper bound for the sidecar's own)."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

import yaml

from switchpoint.v1 import router_pb2 as pb
from tests.providers.fixtures import OPENAI_TEST_KEY
from tests.providers.openai_server import OpenAIServer
from tests.sidecar_harness import running_sidecar, user

BASE_CONFIG = Path(__file__).resolve().parents[1] / "deploy/kubernetes/base/switchpoint.yaml"
WARM_UP = 500
KEY_ENV = "FOOTPRINT_OPENAI_KEY"


def resident_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def footprint_config(base_url: str, *, cache: bool) -> dict[str, Any]:
    """The base config with its first model on the loopback provider, and no TLS, tenant keys,
    metrics listener or snapshot directory (the pod's mounts are not here)."""
    config: dict[str, Any] = yaml.safe_load(BASE_CONFIG.read_text())
    for section in ("auth", "telemetry"):
        config.pop(section)
    config["server"].pop("tls")
    config["server"]["grpc_address"] = "127.0.0.1:0"
    config["cache"].update(enabled=cache, directory=None)
    model = config["models"][0]
    config["providers"] = {
        model["provider"]: {"kind": "openai", "base_url": base_url, "api_key_env": KEY_ENV}
    }
    config["models"] = [model]
    config["routing"]["fallback_chain"] = [model["name"]]
    return config


async def measure(chats: int, *, cache: bool) -> dict[str, float]:
    figures = {"rss_mib_before_start": resident_mib()}
    with OpenAIServer(api_key=OPENAI_TEST_KEY) as provider:
        config = footprint_config(provider.base_url, cache=cache)
        async with running_sidecar(config, {KEY_ENV: OPENAI_TEST_KEY}) as running:
            figures["rss_mib_started"] = resident_mib()
            started_cpu = time.process_time()
            for i in range(chats):
                if i == WARM_UP:
                    started_cpu = time.process_time()
                prompt = f"question {i}: how do I cook dish {i * 7919 % 100003} for {i % 50}?"
                await running.stub.Chat(pb.ChatRequest(messages=user(prompt)))
            counted = chats - WARM_UP if chats > WARM_UP else chats
            figures["cpu_ms_per_chat"] = (time.process_time() - started_cpu) / counted * 1000
            figures["rss_mib_after_chats"] = resident_mib()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chats", type=int, default=3000)
    parser.add_argument("--no-cache", action="store_true")
    args = parser.parse_args()
    figures = asyncio.run(measure(args.chats, cache=not args.no_cache))
    print(json.dumps({"chats": args.chats, "cache": not args.no_cache, **figures}, indent=2))


if __name__ == "__main__":
    main()
