"""How long a large one-letter prompt takes through the running sidecar, and how long a 5-byte
Route sent meanwhile waits.

A sidecar in this process (a model counted with o200k_base, the exact BPE count) is called over
loopback gRPC. For each size: the large Route is sent; once a worker thread computes it, 5-byte
Routes are sent one after another from a second client until it is answered, each timed. At the
default `server.limits` a megabyte is refused (by gRPC's receive limit, before it is parsed): that
refusal is timed too.

Run with the release build (`make env`): `.venv/bin/python -m benches.abuse_timing`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import asdict, dataclass
from typing import Any

import grpc

from switchpoint.config import parse_config
from switchpoint.server import create_server
from switchpoint.v1 import router_pb2 as pb
from switchpoint.v1 import router_pb2_grpc

MIB = 1024 * 1024
RAISED = {"max_message_bytes": 64 * MIB, "message_bytes": 32 * MIB, "prompt_bytes": 32 * MIB}


@dataclass
class Timing:
    case: str
    prompt_bytes: int
    outcome: str
    large_s: float
    # 5-byte Routes sent one after another (from another client) while the large one ran.
    small_calls: int
    small_first_ms: float | None
    small_median_ms: float | None
    small_max_ms: float | None


def _config(limits: dict[str, int]) -> dict[str, Any]:
    return {
        "server": {"limits": limits, "reload_poll_s": None},
        "providers": {"oai": {"kind": "openai", "base_url": "http://127.0.0.1:9/v1"}},
        "models": [
            {
                "name": "gpt",
                "provider": "oai",
                "tokenizer": "o200k_base",
                "context_window": 100_000_000,
                "quality": 0.5,
                "price": {"input_per_mtok": 1.0, "output_per_mtok": 1.0},
                "latency_prior": {"ttft_ms": 100, "tpot_ms": 10},
            }
        ],
    }


def _route(text: str) -> pb.RouteRequest:
    return pb.RouteRequest(messages=[pb.Message(role="user", content=text)])


async def _measure(case: str, limits: dict[str, int], size: int) -> Timing:
    sidecar, port = await create_server(parse_config(_config(limits)), "127.0.0.1:0", environ={})
    await sidecar.start()
    # The large request's client and the small calls' client: two connections, as two callers.
    large_channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    small_channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    large_stub = router_pb2_grpc.RouterStub(large_channel)
    small_stub = router_pb2_grpc.RouterStub(small_channel)
    offload = sidecar.offload
    assert offload is not None
    try:
        # Warm: the encoding is loaded, both connections are up.
        await large_stub.Route(_route("hello"))
        await small_stub.Route(_route("hello"))
        started = time.perf_counter()
        large = asyncio.ensure_future(large_stub.Route(_route("a" * size)))
        for _ in range(100_000):  # until a worker thread computes it (or it was refused)
            if large.done() or offload.running:
                break
            await asyncio.sleep(0.0005)
        waits: list[float] = []
        while not large.done():
            sent = time.perf_counter()
            await small_stub.Route(_route("hello"))
            waits.append((time.perf_counter() - sent) * 1000.0)
        try:
            decision = await large
            outcome = f"routed, {decision.estimated_input_tokens} tokens"
        except grpc.aio.AioRpcError as refused:
            outcome = f"{refused.code().name}: {refused.details()}"
        large_s = time.perf_counter() - started
        ordered = sorted(waits)
        return Timing(
            case,
            size,
            outcome,
            large_s,
            len(waits),
            waits[0] if waits else None,
            ordered[len(ordered) // 2] if waits else None,
            ordered[-1] if waits else None,
        )
    finally:
        await large_channel.close()
        await small_channel.close()
        await sidecar.stop(0)


async def _main(as_json: bool) -> None:
    cases = [
        ("1 MiB, default limits", {}, MIB),
        ("1 MiB, limits raised", RAISED, MIB),
        ("160 KB, default limits", {}, 160_000),
    ]
    timings = [await _measure(name, limits, size) for name, limits, size in cases]
    if as_json:
        print(json.dumps([asdict(t) for t in timings], indent=2))
        return
    for t in timings:
        print(f"{t.case}: large {t.large_s * 1000:.1f} ms ({t.outcome[:100]})")
        if t.small_calls:
            print(
                f"  {t.small_calls} 5-byte Routes meanwhile: first {t.small_first_ms:.2f} ms, "
                f"median {t.small_median_ms:.2f} ms, max {t.small_max_ms:.2f} ms"
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    asyncio.run(_main(parser.parse_args().json))
