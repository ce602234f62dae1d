"""`switchpoint bench`: the overhead figures a user can reproduce on their own machine in a minute.

Each figure is a ratio against a baseline measured in the same run, because absolute numbers on a
shared machine mean little: Rust scoring against the same scoring in plain Python, and the Route RPC
against an empty unary call served by the same kind of grpc.aio server. The full suites (open-loop
load, pinned processes, plots) live in benches/ and run with `make bench`.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TextIO, TypeVar

import grpc

from switchpoint._native import Gate, LatencyTracker, ModelSpec, Router
from switchpoint.bench.measure import Figure, latencies, latencies_each, percentile
from switchpoint.bench.provider import FixedLatencyProvider, sidecar_process
from switchpoint.bench.route_rpc import ROUTE_CASES, route_figures
from switchpoint.cache.config import CacheConfig
from switchpoint.cache.embedders import LocalSentenceEncoder
from switchpoint.cache.records import CachedAnswer, CacheQuery
from switchpoint.cache.store import ResponseCache
from switchpoint.config import parse_config
from switchpoint.engine.building import build_engine
from switchpoint.providers import create_adapter
from switchpoint.providers.base import ChatMessage, ProviderRequest
from switchpoint.v1 import router_pb2 as pb
from switchpoint.v1 import router_pb2_grpc

# The loopback provider's answer time in the Chat figures: short, so a run stays quick; the
# sidecar's overhead does not depend on it.
CHAT_PROVIDER_DELAY_S = 0.005
CHAT_PROMPT = "hello there, answer briefly"
OUTPUT_TOKENS = 400
WEIGHTS = (0.3, 0.3, 0.4)
SCORING_PROMPT = "compare these options and pick one"

T = TypeVar("T")


def synthetic_specs(n: int) -> list[ModelSpec]:
    """`n` models with varied prices, windows, qualities and latency priors (deterministic)."""
    return [
        ModelSpec(
            f"m{i}",
            input_per_mtok=0.1 + (i * 37 % 101) / 10.0,
            output_per_mtok=0.4 + (i * 53 % 97) / 5.0,
            context_window=8192 if i % 7 else 256,  # every 7th is too small for the request
            quality=(i * 29 % 89) / 89.0,
            ttft_prior_ms=50.0 + (i * 41 % 83) * 10.0,
            tpot_prior_ms=5.0 + (i * 17 % 31),
        )
        for i in range(n)
    ]


def python_score(
    specs: list[ModelSpec], input_tokens: int, output_tokens: int, weights: tuple[float, ...]
) -> list[int]:
    """The scorer in plain Python, the baseline: filter by context window, estimate cost and
    latency from priors, min-max normalise over the eligible set, weighted sum, sort best first."""
    total = sum(weights)
    w_cost, w_lat, w_quality = (w / total for w in weights)
    needed = input_tokens + output_tokens
    rows: list[tuple[int, float, float, float]] = []
    for index, spec in enumerate(specs):
        if needed > spec.context_window:
            continue
        cost = (input_tokens * spec.input_per_mtok + output_tokens * spec.output_per_mtok) / 1e6
        latency = spec.ttft_prior_ms + output_tokens * spec.tpot_prior_ms
        rows.append((index, cost, latency, spec.quality))
    if not rows:
        return []
    costs = [r[1] for r in rows]
    latencies = [r[2] for r in rows]
    cost_min, lat_min = min(costs), min(latencies)
    cost_range, lat_range = max(costs) - cost_min, max(latencies) - lat_min
    scored = []
    for index, cost, latency, quality in rows:
        norm_cost = (cost - cost_min) / cost_range if cost_range > 0 else 0.0
        norm_lat = (latency - lat_min) / lat_range if lat_range > 0 else 0.0
        score = w_lat * (1 - norm_lat) + w_cost * (1 - norm_cost) + w_quality * quality
        scored.append((-score, cost, -quality, index))
    scored.sort()
    return [s[3] for s in scored]


def per_op_ns(op: Callable[[], object], iterations: int, repeats: int = 5) -> float:
    """Best-of-`repeats` mean nanoseconds per call of `op` over `iterations` calls."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter_ns()
        for _ in range(iterations):
            op()
        best = min(best, (time.perf_counter_ns() - start) / iterations)
    return best


@dataclass(frozen=True, slots=True)
class ScoringSetup:
    """A router over `synthetic_specs(n)` and a RouteRequest with `WEIGHTS` that the auto level
    answers by ranking every model: scoring measured through the entry point requests take."""

    router: Router
    specs: list[ModelSpec]
    request: bytes

    def route(self) -> bytes:
        return self.router.route_wire(self.request, now=0.0).decision

    def ranked(self) -> tuple[list[int], int, int]:
        """The decision's candidates as indices into `specs`, best first, and the input and
        output tokens it counted (what the pure-Python scorer must be given to compare)."""
        decision = pb.RouteDecision.FromString(self.route())
        index = {spec.name: i for i, spec in enumerate(self.specs)}
        ranked = [index[c.model] for c in decision.candidates]
        return ranked, decision.estimated_input_tokens, decision.estimated_output_tokens


def scoring_setup(n: int) -> ScoringSetup:
    specs = synthetic_specs(n)
    config = parse_config(
        {
            "providers": {"p": {"kind": "openai", "base_url": "http://127.0.0.1:9/v1"}},
            "models": [
                {
                    "name": spec.name,
                    "provider": "p",
                    "context_window": spec.context_window,
                    "quality": spec.quality,
                    "price": {
                        "input_per_mtok": spec.input_per_mtok,
                        "output_per_mtok": spec.output_per_mtok,
                    },
                    "latency_prior": {"ttft_ms": spec.ttft_prior_ms, "tpot_ms": spec.tpot_prior_ms},
                }
                for spec in specs
            ],
            "routing": {"auto": {"enabled": True}},
        }
    )
    cost, latency, quality = WEIGHTS
    request = pb.RouteRequest(
        messages=[pb.Message(role="user", content=SCORING_PROMPT)],
        routing=pb.RoutingOptions(weights=pb.Weights(cost=cost, latency=latency, quality=quality)),
        params=pb.GenerationParams(max_tokens=OUTPUT_TOKENS),
    )
    router = build_engine(config, environ={}).engine.router
    return ScoringSetup(router, specs, request.SerializeToString())


def scoring_figure(n: int, iterations: int) -> Figure:
    """A Route decision over `n` candidates (decode, validate, count, score, encode) against the
    scoring alone in plain Python."""
    setup = scoring_setup(n)
    _, input_tokens, output_tokens = setup.ranked()
    rust = per_op_ns(setup.route, iterations)
    python = per_op_ns(
        lambda: python_score(setup.specs, input_tokens, output_tokens, WEIGHTS), iterations
    )
    return Figure(f"score {n} candidates", rust / 1000, "pure Python", python / 1000, speedup=True)


def _do_nothing() -> None:
    """The baseline of the per-call figures: a Python call that does nothing."""


def gate_figure(iterations: int) -> Figure:
    gate = Gate()
    limits = [gate.add_rate_limit(f"l{i}", rpm=1e12, tpm=1e15, concurrency=10**9) for i in range(3)]
    budgets = [gate.add_budget(f"b{i}", limit_usd=1e12, window="day") for i in range(2)]
    now = time.time()

    def reserve_settle() -> None:
        reservation = gate.reserve(limits, budgets, 1200, 0.01, now)
        gate.settle(reservation, 1100, 0.009, now)

    return Figure(
        "gate reserve + settle",
        per_op_ns(reserve_settle, iterations) / 1000,
        "empty Python call",
        per_op_ns(_do_nothing, iterations) / 1000,
    )


def latency_record_figure(iterations: int) -> Figure:
    """One observed call (total, TTFT, output tokens) into a model's decayed histograms."""
    tracker = LatencyTracker()
    slot = tracker.slot("bench-model")

    def record() -> None:
        tracker.record(slot, 850.0, 120.0, 180)

    return Figure(
        "latency record",
        per_op_ns(record, iterations) / 1000,
        "empty Python call",
        per_op_ns(_do_nothing, iterations) / 1000,
    )


def _chat_config(provider_port: int) -> dict[str, object]:
    return {
        "providers": {"p": {"kind": "openai", "base_url": f"http://127.0.0.1:{provider_port}/v1"}},
        "models": [
            {
                "name": "m0",
                "provider": "p",
                "context_window": 16000,
                "quality": 0.8,
                "price": {"input_per_mtok": 1.0, "output_per_mtok": 2.0},
                "latency_prior": {"ttft_ms": 100, "tpot_ms": 10},
            }
        ],
    }


async def chat_figures(calls: int) -> tuple[Figure, Figure]:
    """Chat through the sidecar (`switchpoint serve`, a process of its own, as it runs beside an
    application) against the same completion sent straight to the provider through the same
    adapter code, from this process, one call at a time in alternating blocks. The provider runs
    in this process and answers after `CHAT_PROVIDER_DELAY_S`: both paths pay for it alike."""
    provider = FixedLatencyProvider(CHAT_PROVIDER_DELAY_S)
    provider_port = await provider.start()
    adapter = create_adapter("p", "openai", f"http://127.0.0.1:{provider_port}/v1", None)
    direct_request = ProviderRequest(
        upstream_model="m0", messages=(ChatMessage("user", CHAT_PROMPT),), max_tokens=16
    )
    request = pb.ChatRequest(
        messages=[pb.Message(role="user", content=CHAT_PROMPT)],
        params=pb.GenerationParams(max_tokens=16),
    )
    via: list[float] = []
    direct: list[float] = []
    try:
        async with (
            sidecar_process(_chat_config(provider_port)) as port,
            grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
        ):
            stub = router_pb2_grpc.RouterStub(channel)
            block = max(calls // 10, 1)
            for _ in range(max(calls // block, 1)):
                via += await latencies(lambda: stub.Chat(request), block)
                direct += await latencies(
                    lambda: adapter.complete(direct_request, timeout_s=10.0), block
                )
    finally:
        await adapter.aclose()
        await provider.close()
    return (
        Figure(
            "Chat via sidecar p50",
            percentile(via, 50),
            "provider direct p50",
            percentile(direct, 50),
            added=True,
        ),
        Figure(
            "Chat via sidecar p99",
            percentile(via, 99),
            "provider direct p99",
            percentile(direct, 99),
            added=True,
        ),
    )


def _question(i: int) -> str:
    """Distinct, plausible questions (deterministic), so each embeds to its own vector."""
    subjects = ("a list", "a string", "a date", "a file", "a JSON object", "a CSV table", "a URL")
    tasks = ("sort", "reverse", "parse", "validate", "compress", "split", "merge", "format")
    tools = ("Python", "Rust", "Go", "SQL", "bash", "TypeScript", "Java", "Kotlin", "C#")
    return (
        f"How do I {tasks[i % len(tasks)]} {subjects[i // len(tasks) % len(subjects)]} in "
        f"{tools[i // (len(tasks) * len(subjects)) % len(tools)]}? (case {i})"
    )


async def cache_figure(entries: int, lookups: int) -> Figure:
    """A semantic-cache lookup (exact miss, embedding the question with the local model, the FAISS
    search, the guard) against embedding the question alone, with `entries` answers stored."""
    config = CacheConfig(enabled=True)
    # No text LRU: every lookup and every baseline call embeds, as a new question would.
    embedder = LocalSentenceEncoder(lru_size=0)
    cache = ResponseCache(config, embedder)
    try:
        answer = CachedAnswer("cached", "m0", 0.8, "stop", 12, 1, 0.0)
        for i in range(entries):
            await cache.store(_cache_query(_question(i)), answer)
        await cache.wait_for_rebuilds()
        # Half ask again what is stored (in other words), half ask something new.
        asked = [
            f"Could you tell me: {_question(i)}" if i % 2 else _question(entries + i)
            for i in range(lookups)
        ]
        looked_up = await latencies_each(lambda text: cache.lookup(_cache_query(text)), asked)
        # The same questions, so the baseline embeds texts of the same lengths.
        embedded = await latencies_each(lambda text: embedder.embed([text]), asked)
    finally:
        await cache.close()
        embedder.close()
    return Figure(
        f"cache lookup ({entries} entries) p50",
        percentile(looked_up, 50),
        "embedding the question p50",
        percentile(embedded, 50),
    )


def _cache_query(text: str) -> CacheQuery:
    return CacheQuery(tenant="bench", model="m0", quality=0.8, messages=(("user", text),))


def _progress(out: TextIO, done: int, total: int, label: str) -> None:
    width = 24
    filled = round(width * done / total)
    out.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {label:<28}")
    out.flush()


def run(*, quick: bool = False, progress: TextIO | None = sys.stderr) -> list[Figure]:
    scale = 0.1 if quick else 1.0
    steps: list[tuple[str, Callable[[], list[Figure]]]] = [
        *(
            (f"scoring {n}", lambda n=n: [scoring_figure(n, max(20, int(20_000 * scale) // n))])
            for n in (10, 100, 1000)
        ),
        ("gate", lambda: [gate_figure(max(1000, int(50_000 * scale)))]),
        ("latency record", lambda: [latency_record_figure(max(1000, int(50_000 * scale)))]),
        *(
            (
                f"Route vs empty RPC, {case.label}",
                lambda case=case: list(
                    asyncio.run(route_figures(case, max(200, int(2000 * scale))))
                ),
            )
            for case in ROUTE_CASES
        ),
        ("Chat vs direct", lambda: list(asyncio.run(chat_figures(max(50, int(500 * scale)))))),
        (
            "cache lookup",
            lambda: [
                asyncio.run(cache_figure(max(200, int(2000 * scale)), max(50, int(300 * scale))))
            ],
        ),
    ]
    figures: list[Figure] = []
    for done, (label, step) in enumerate(steps):
        if progress is not None:
            _progress(progress, done, len(steps), label)
        figures += step()
    if progress is not None:
        _progress(progress, len(steps), len(steps), "done")
        progress.write("\n")
    return figures


def render(figures: list[Figure]) -> str:
    name_width = max([len("measure"), *(len(f.name) for f in figures)])
    base_width = max([len("baseline (same run)"), *(len(f.baseline_name) for f in figures)])
    rows = [
        f"{'measure':<{name_width}} {'switchpoint':>12}  {'baseline (same run)':<{base_width}} "
        f"{'value':>10}  ratio"
    ]
    for f in figures:
        rows.append(
            f"{f.name:<{name_width}} {f.value_us:>10.2f}us  {f.baseline_name:<{base_width}} "
            f"{f.baseline_us:>8.2f}us  {f.ratio:.2f}x{' faster' if f.speedup else ''}"
            + (f" (+{f.value_us - f.baseline_us:.0f}us)" if f.added else "")
        )
    return "\n".join(rows)


def as_dicts(figures: list[Figure]) -> list[dict[str, object]]:
    return [{**asdict(f), "ratio": f.ratio} for f in figures]
