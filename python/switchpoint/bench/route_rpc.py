"""`switchpoint bench`'s Route figures: the Route RPC against an empty unary RPC carrying the same
bytes, both served in this process by the same kind of grpc.aio server, for prompts of the sizes
and tokenizers people run (a five-word question with the estimate, 20 KB counted by o200k_base,
100 KB by cl100k_base). Every call carries a prompt of its own, so no remembered count answers it,
and the sidecar writes its INFO request lines as it does by default (`switchpoint bench` points
them at the null device)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
from dataclasses import dataclass

import grpc

from switchpoint.bench.floor import EMPTY_METHOD, empty_rpc_server
from switchpoint.bench.measure import Figure, latencies_each, percentile
from switchpoint.config import TelemetryConfig, parse_config
from switchpoint.server import create_server
from switchpoint.telemetry import Telemetry
from switchpoint.v1 import router_pb2 as pb

ROUTE_METHOD = "/switchpoint.v1.Router/Route"
# English prose from the standard library's own documentation, to cut any prompt from.
_PROSE = " ".join(
    " ".join(str(module.__doc__).split()) for module in (argparse, asyncio, json, logging)
)
WARM_UP_CALLS = 20


@dataclass(frozen=True)
class RouteCase:
    label: str
    prompt_bytes: int
    tokenizer: str


ROUTE_CASES = (
    RouteCase("50 B, estimate", 50, "estimate"),
    RouteCase("20 KB, o200k_base", 20 * 1024, "o200k_base"),
    RouteCase("100 KB, cl100k_base", 100 * 1024, "cl100k_base"),
)


def route_config(tokenizer: str) -> dict[str, object]:
    """Four models with the context windows of the embedded default config's (2k to 200k)."""
    model = {
        "provider": "p",
        "latency_prior": {"ttft_ms": 100, "tpot_ms": 10},
        "tokenizer": tokenizer,
    }
    return {
        "providers": {"p": {"kind": "openai", "base_url": "http://127.0.0.1:9/v1"}},
        "models": [
            {
                **model,
                "name": f"m{i}",
                "quality": q,
                "price": {"input_per_mtok": p, "output_per_mtok": p},
                "context_window": window,
            }
            for i, (q, p, window) in enumerate(
                [(0.5, 0.1, 16_000), (0.6, 1.0, 128_000), (0.95, 5.0, 200_000), (0.1, 0.0, 2048)]
            )
        ],
    }


def prompt(i: int, size: int) -> str:
    """`size` bytes of prose, its first words the call's own number."""
    head = f"Question {i:08d}: "
    body = (_PROSE * (size // len(_PROSE) + 1))[: max(0, size - len(head))]
    return head + body


async def route_figures(case: RouteCase, calls: int) -> tuple[Figure, Figure]:
    """Route vs the empty RPC for `case` (p50 and p99 in microseconds), alternating blocks."""
    telemetry = Telemetry(TelemetryConfig(), environ={})
    sidecar, port = await create_server(
        parse_config(route_config(case.tokenizer)), "127.0.0.1:0", environ={}, telemetry=telemetry
    )
    empty_server, empty_port = empty_rpc_server()
    await sidecar.start()
    await empty_server.start()
    requests = [
        pb.RouteRequest(
            messages=[pb.Message(role="user", content=prompt(i, case.prompt_bytes))]
        ).SerializeToString()
        for i in range(WARM_UP_CALLS + calls)
    ]
    try:
        async with (
            grpc.aio.insecure_channel(f"127.0.0.1:{port}") as route_channel,
            grpc.aio.insecure_channel(f"127.0.0.1:{empty_port}") as empty_channel,
        ):
            route: grpc.aio.UnaryUnaryMultiCallable[bytes, pb.RouteDecision] = (
                route_channel.unary_unary(
                    ROUTE_METHOD, response_deserializer=pb.RouteDecision.FromString
                )
            )
            empty: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = empty_channel.unary_unary(
                EMPTY_METHOD
            )
            # Connections, the encodings' first load, the first-call paths: not measured.
            await latencies_each(route, requests[:WARM_UP_CALLS])
            await latencies_each(empty, requests[:WARM_UP_CALLS])
            route_samples: list[float] = []
            empty_samples: list[float] = []
            # Alternating blocks, so noise on the shared machine lands on both alike.
            block = max(calls // 10, 1)
            for start in range(WARM_UP_CALLS, len(requests), block):
                chunk = requests[start : start + block]
                route_samples += await latencies_each(route, chunk)
                empty_samples += await latencies_each(empty, chunk)
    finally:
        await sidecar.stop(0)
        await empty_server.stop(0)
    return (
        Figure(
            f"Route RPC p50, {case.label}",
            percentile(route_samples, 50),
            "empty RPC p50, same bytes",
            percentile(empty_samples, 50),
        ),
        Figure(
            f"Route RPC p99, {case.label}",
            percentile(route_samples, 99),
            "empty RPC p99, same bytes",
            percentile(empty_samples, 99),
        ),
    )
