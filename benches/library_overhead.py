"""In-process overhead of `switchpoint.Router.chat`, beside LiteLLM's `Router.acompletion`, both
against calling the same loopback provider directly with httpx, measured side by side in one run.

A loopback OpenAI provider (`tests.providers.OpenAIServer`, answering at once) runs in its own
process, pinned apart where the machine has two cores. This process, pinned to the other core,
runs one event loop and sends one call at a time (closed loop: latency is the call's own, with
nothing queued behind it), in alternating segments of

- direct: the request body switchpoint sends, POSTed with one keep-alive `httpx.AsyncClient`;
- direct-lean: the same through switchpoint's own HTTP/1.1 transport for httpx
  (`switchpoint.providers.connections`), the one its adapters use: switchpoint minus this row
  is the engine's own time, with the transport's saving taken out;
- switchpoint: `Router.chat` at the default config's observability (INFO logging through
  switchpoint's handler, one request line per call, formatted and discarded; metrics on, their
  listener bound to a free loopback port; no span exporter);
- litellm: `litellm.Router.acompletion` with one deployment on the provider (its model cost map
  read from the package, no network); skipped with the reason when litellm is not installed or
  cannot run offline.

Overhead is the mode's percentile minus direct's at the same percentile (the calls are not
paired); the ratio is the mode's over direct's. Everything else (the provider's own time, the
loopback's) is the same in each mode.

Run directly (`.venv/bin/python -m benches.library_overhead`) or through
`benches/test_library_overhead_bench.py` under `make bench`. Writes
`benches/results/library_overhead.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import importlib.metadata
import io
import json
import logging
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from benches.loadgen import machine, pinned_self, plan_cores, server_process
from benches.proxy_overhead import config as loopback_config
from benches.proxy_overhead import serve_provider
from switchpoint.providers.connections import PooledHTTP1Transport
from tests.providers.fixtures import OPENAI_TEST_KEY

RESULTS_DIR = Path(__file__).parent / "results"
RESULT_FILE = RESULTS_DIR / "library_overhead.json"
PROMPT = "say hello in five words"
MAX_TOKENS = 16
MODES = ("direct", "direct-lean", "switchpoint", "litellm")
MODEL = "loop-now"
ENV = {"T_OAI": OPENAI_TEST_KEY}

Call = Callable[[], Awaitable[object]]


def config(provider_url: str) -> dict[str, Any]:
    """The proxy-overhead bench's config, for a provider that answers at once, at the default
    config's observability (metrics served, on a free loopback port here)."""
    return {
        **loopback_config(provider_url, ttft_ms=1, model=MODEL),
        "telemetry": {"metrics_address": "127.0.0.1:0"},
    }


# -- results -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModeResult:
    mode: str
    calls: int
    errors: int
    p50_ms: float
    p99_ms: float
    mean_ms: float
    # Percentile minus direct's, and the ratio to direct's; 0 and 1 for direct itself.
    overhead_p50_ms: float
    overhead_p99_ms: float
    ratio_p50: float
    ratio_p99: float
    # Percentile minus direct-lean's: the time spent above the same transport.
    over_lean_p50_ms: float
    over_lean_p99_ms: float


@dataclass(frozen=True)
class LibraryOverheadResult:
    modes: list[ModeResult]
    litellm_skipped: str | None
    litellm_version: str | None
    machine: dict[str, Any]
    seconds: float


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- the modes -----------------------------------------------------------------------------------


async def _direct(stack: AsyncExitStack, base_url: str, *, lean: bool = False) -> Call:
    transport = PooledHTTP1Transport(max_connections=10, trust_env=False) if lean else None
    client = await stack.enter_async_context(
        httpx.AsyncClient(
            base_url=base_url,
            headers={"authorization": f"Bearer {OPENAI_TEST_KEY}"},
            transport=transport,
        )
    )
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": MAX_TOKENS,
    }

    async def call() -> object:
        response = await client.post("/chat/completions", json=body)
        response.raise_for_status()
        return response.json()

    return call


async def _switchpoint(stack: AsyncExitStack, base_url: str) -> Call:
    from switchpoint import Router
    from switchpoint.logs import configure_logging

    configure_logging("INFO", stream=_Discard())
    router = await stack.enter_async_context(Router.from_config(config(base_url), environ=ENV))
    messages = [{"role": "user", "content": PROMPT}]

    async def call() -> object:
        return await router.chat(messages, max_tokens=MAX_TOKENS)

    return call


class _Discard(io.StringIO):
    """Where log lines go: formatted and written, as to a file, and dropped."""

    def write(self, text: str) -> int:
        return len(text)


def litellm_available() -> tuple[str | None, str | None]:
    """(version, None) when litellm imports, else (None, why not)."""
    # Read the model cost map from the package: the run must not reach the network.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    try:
        # Optional, and untyped: the other rows are measured without it.
        litellm = importlib.import_module("litellm")
    except Exception as exc:  # any import failure: the row is skipped with the reason
        return None, f"litellm cannot be imported: {type(exc).__name__}: {exc}"[:300]
    version = getattr(litellm, "__version__", None) or _dist_version("litellm")
    return version, None


def _dist_version(name: str) -> str:
    return importlib.metadata.version(name)


async def _litellm(stack: AsyncExitStack, base_url: str) -> Call:
    litellm: Any = importlib.import_module("litellm")
    litellm.suppress_debug_info = True
    # Its INFO lines go where switchpoint's do (the root handler, discarded): the same
    # logging level and sink for both libraries.
    for name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    router = litellm.Router(
        model_list=[
            {
                "model_name": MODEL,
                "litellm_params": {
                    "model": f"openai/{MODEL}",
                    "api_base": base_url,
                    "api_key": OPENAI_TEST_KEY,
                    "max_retries": 0,
                },
            }
        ],
        num_retries=0,
    )
    messages = [{"role": "user", "content": PROMPT}]

    async def call() -> object:
        return await router.acompletion(model=MODEL, messages=messages, max_tokens=MAX_TOKENS)

    return call


# -- the run -------------------------------------------------------------------------------------


async def _run(
    base_url: str, *, rounds: int, per_segment: int, warmup: int, with_litellm: bool
) -> dict[str, tuple[list[float], int]]:
    async with AsyncExitStack() as stack:
        calls: dict[str, Call] = {
            "direct": await _direct(stack, base_url),
            "direct-lean": await _direct(stack, base_url, lean=True),
            "switchpoint": await _switchpoint(stack, base_url),
        }
        if with_litellm:
            calls["litellm"] = await _litellm(stack, base_url)
        for call in calls.values():
            for _ in range(warmup):
                await call()
        samples: dict[str, list[float]] = {mode: [] for mode in calls}
        errors = dict.fromkeys(calls, 0)
        for _ in range(rounds):
            for mode, call in calls.items():
                for _ in range(per_segment):
                    started = time.perf_counter()
                    try:
                        await call()
                    except Exception:
                        errors[mode] += 1
                        continue
                    samples[mode].append((time.perf_counter() - started) * 1000.0)
        return {mode: (samples[mode], errors[mode]) for mode in calls}


def measure(
    *, rounds: int = 10, per_segment: int = 200, warmup: int = 100
) -> LibraryOverheadResult:
    started = time.perf_counter()
    cores = plan_cores()
    litellm_version, skipped = litellm_available()
    with (
        server_process(
            "provider", "benches.library_overhead", ["provider"], core=cores.loadgen
        ) as provider,
        pinned_self(cores.servers),
    ):
        base_url = f"http://127.0.0.1:{provider.port}/v1"
        try:
            measured = asyncio.run(
                _run(
                    base_url,
                    rounds=rounds,
                    per_segment=per_segment,
                    warmup=warmup,
                    with_litellm=skipped is None,
                )
            )
        finally:
            logging.getLogger().handlers.clear()
    direct = measured["direct"][0]
    base_p50, base_p99 = _percentile(direct, 0.5), _percentile(direct, 0.99)
    lean = measured["direct-lean"][0]
    lean_p50, lean_p99 = _percentile(lean, 0.5), _percentile(lean, 0.99)
    modes = []
    for mode, (samples, errors) in measured.items():
        p50, p99 = _percentile(samples, 0.5), _percentile(samples, 0.99)
        modes.append(
            ModeResult(
                mode=mode,
                calls=len(samples),
                errors=errors,
                p50_ms=p50,
                p99_ms=p99,
                mean_ms=statistics.fmean(samples),
                overhead_p50_ms=p50 - base_p50,
                overhead_p99_ms=p99 - base_p99,
                ratio_p50=p50 / base_p50,
                ratio_p99=p99 / base_p99,
                over_lean_p50_ms=p50 - lean_p50,
                over_lean_p99_ms=p99 - lean_p99,
            )
        )
    return LibraryOverheadResult(
        modes=modes,
        litellm_skipped=skipped,
        litellm_version=litellm_version,
        machine=machine(),
        seconds=time.perf_counter() - started,
    )


def table(result: LibraryOverheadResult) -> str:
    lines = [
        "| path | calls | p50 ms | p99 ms | over direct p50 ms | over direct p99 ms "
        "| x direct p50 | x direct p99 | over direct-lean p50 ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for m in result.modes:
        lines.append(
            f"| {m.mode} | {m.calls} | {m.p50_ms:.3f} | {m.p99_ms:.3f} | "
            f"{m.overhead_p50_ms:+.3f} | {m.overhead_p99_ms:+.3f} | {m.ratio_p50:.2f} | "
            f"{m.ratio_p99:.2f} | {m.over_lean_p50_ms:+.3f} |"
        )
    if result.litellm_skipped is not None:
        lines.append(f"litellm skipped: {result.litellm_skipped}")
    elif result.litellm_version:
        lines.append(f"litellm {result.litellm_version}")
    return "\n".join(lines)


def write_json(result: LibraryOverheadResult, path: Path = RESULT_FILE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(result), indent=2) + "\n", encoding="utf-8")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("role", nargs="?", choices=["provider"], help="run the provider alone")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--per-segment", type=int, default=200)
    args = parser.parse_args()
    if args.role == "provider":
        serve_provider(latency_s=None)
        return
    result = measure(rounds=args.rounds, per_segment=args.per_segment)
    print(table(result))
    print(f"wrote {write_json(result)}")


if __name__ == "__main__":
    main()
