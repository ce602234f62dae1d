"""Chat proxy overhead: Chat through the sidecar to a loopback provider, minus the provider direct.

A loopback OpenAI provider (`tests.providers.OpenAIServer`, every answer after a fixed 20 ms,
`hang(0.02)`) runs in its own process; the real sidecar, `switchpoint serve`, runs in another,
configured with one model on it (no retries), at its default log level INFO (a request line per
call; `--log-level WARNING` for the quiet case). The compiled load generator
(`benches/loadgen.py`, `run_load`) sends open loop at each rate (default 50, 100, 200, 400, 600,
800 req/s), latency from each call's scheduled send time, in alternating segments of

- sidecar: the gRPC Chat RPC (HTTP/2);
- direct: the same request as the sidecar sends, POSTed to the provider's /v1/chat/completions
  over HTTP/1.1 keep-alive connections;
- http: the same chat as OpenAI JSON to the sidecar's HTTP front, `POST /v1/chat/completions` on
  `server.http_address` over HTTP/1.1 keep-alive (`benches/proxy_overhead_http.py`), when the
  build has the front and it answers; otherwise its rows are skipped with the reason printed.

Each call's prompt carries its sequence number (an 8-digit slot), on both paths alike.

Overhead at a percentile is the difference of the two distributions' percentiles at that rate
(sidecar p99 minus direct p99; the calls are not paired). It includes the difference between the
two client protocols (HTTP/2 + gRPC vs HTTP/1.1), not only the sidecar. CPU time per request is
the sidecar process's utime+stime over its segments divided by its calls.

A rate at which the load generator fell behind its schedule (its sends' p99 lag over
`SEND_LAG_LIMIT_US`, both modes together) measures the load generator's core, not the sidecar: it
is marked, never reported as a figure, and the highest rate held is only claimed below it.

Pinning, where the machine has two or more CPUs: the sidecar alone on one; the load generator and
the provider on another (the provider is "the outside world" in both modes).

Run directly (`.venv/bin/python -m benches.proxy_overhead`) or through
`benches/test_proxy_overhead_bench.py` under `make bench`; `python -m benches.proxy_overhead
provider` runs the provider alone (it prints `port N`). Writes
`benches/results/proxy_overhead.json` and `benches/results/overhead.png`.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc

from benches import proxy_overhead_http
from benches.loadgen import (
    SEND_LAG_LIMIT_US,
    SLOT_DIGITS,
    GrpcTarget,
    HttpTarget,
    OpenLoopMode,
    Phase,
    PhaseReport,
    held_schedule,
    machine,
    percentiles,
    plan_cores,
    run_load,
    server_process,
    sidecar_process,
    slot_offset,
)
from switchpoint.v1 import router_pb2 as pb
from tests.providers.fixtures import OPENAI_TEST_KEY
from tests.sidecar_harness import user

RESULTS_DIR = Path(__file__).parent / "results"
RESULT_FILE = RESULTS_DIR / "proxy_overhead.json"
PLOT_FILE = RESULTS_DIR / "overhead.png"
MODEL = "loop-20ms"
PROVIDER_LATENCY_S = 0.02
PROMPT = f"{SLOT_DIGITS.decode()} say hello in five words"
CHAT_METHOD = f"/{pb.DESCRIPTOR.services_by_name['Router'].full_name}/Chat"
MAX_TOKENS = 16
RATES = (50.0, 100.0, 200.0, 400.0, 600.0, 800.0)
MODES = ("sidecar", "direct")
HTTP_MODE = "http"
CALL_TIMEOUT_S = 10.0
P99_OVERHEAD_HELD_MS = 5.0
ENV = {"T_OAI": OPENAI_TEST_KEY}


# -- the provider (its own process) --------------------------------------------------------------


def serve_provider(latency_s: float | None = PROVIDER_LATENCY_S) -> None:
    """The loopback OpenAI provider until SIGTERM, answering after `latency_s` (None: at once);
    prints its port first."""
    from tests.providers.openai_server import OpenAIServer
    from tests.providers.script import hang

    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    with OpenAIServer(api_key=OPENAI_TEST_KEY) as server:
        if latency_s is not None:
            server.script.default = hang(latency_s)
        print(f"port {server.port}", flush=True)
        while not stopping:
            time.sleep(0.1)


# -- config and requests -------------------------------------------------------------------------


def config(provider_url: str, ttft_ms: float = 20, model: str = MODEL) -> dict[str, Any]:
    return {
        "providers": {
            "loop": {
                "kind": "openai",
                "base_url": provider_url,
                "api_key_env": "T_OAI",
                "timeout_s": 5.0,
                "retry": {"max_retries": 0},
            }
        },
        "models": [
            {
                "name": model,
                "provider": "loop",
                "upstream_model": model,
                "price": {"input_per_mtok": 0.1, "output_per_mtok": 0.1},
                "context_window": 16000,
                "quality": 0.5,
                "latency_prior": {"ttft_ms": ttft_ms, "tpot_ms": 1},
            }
        ],
        "routing": {"fallback_chain": [model]},
    }


def chat_request() -> pb.ChatRequest:
    return pb.ChatRequest(messages=user(PROMPT), params=pb.GenerationParams(max_tokens=MAX_TOKENS))


def direct_body() -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": MAX_TOKENS,
    }


# -- results -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModeAtRate:
    calls: int
    errors: int
    latency_ms: dict[str, float]  # p50/p95/p99/max from the scheduled send
    max_send_lag_ms: float
    loadgen_cpu_us_per_call: float  # this process, over the mode's segments


@dataclass(frozen=True)
class RateResult:
    rate_per_s: float
    seconds_per_mode: float
    sidecar: ModeAtRate
    direct: ModeAtRate
    overhead_ms: dict[str, float]  # sidecar percentile minus direct percentile
    sidecar_cpu_us_per_call: float
    provider_cpu_us_per_call_sidecar: float
    provider_cpu_us_per_call_direct: float
    # The load generator fell behind its schedule: this rate measures its core, not the sidecar.
    loadgen_saturated: bool
    # The HTTP front's rows; None when they were skipped (ProxyOverheadResult.http_skipped).
    http: ModeAtRate | None = None
    http_overhead_ms: dict[str, float] | None = None  # HTTP front percentile minus direct
    sidecar_cpu_us_per_call_http: float | None = None


@dataclass(frozen=True)
class ProxyOverheadResult:
    provider_latency_ms: float
    log_level: str
    warmup: int
    segment_s: float
    rates: list[RateResult]
    highest_rate_p99_overhead_under_5ms: float | None
    pinning: dict[str, Any]
    machine: dict[str, Any]
    wall_s: float
    targets: dict[str, float]
    http_skipped: str | None = None  # why the HTTP front's rows are missing


def check_chat(port: int, body: bytes) -> None:
    """One Chat from a plain grpc client: the request is one the sidecar proxies."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(CHAT_METHOD)
        reply = pb.ChatResponse.FromString(call(body, timeout=CALL_TIMEOUT_S))
    if reply.model != MODEL:
        raise RuntimeError(f"unexpected model {reply.model!r}")


def targets(
    sidecar_port: int, provider_port: int, http_address: str | None = None
) -> dict[str, GrpcTarget | HttpTarget]:
    chat = chat_request().SerializeToString()
    direct = json.dumps(direct_body(), ensure_ascii=False).encode()
    front: dict[str, GrpcTarget | HttpTarget] = {}
    if http_address is not None:
        front[HTTP_MODE] = proxy_overhead_http.target(http_address, PROMPT, MAX_TOKENS)
    return {
        **front,
        "sidecar": GrpcTarget(f"127.0.0.1:{sidecar_port}", CHAT_METHOD, chat, slot_offset(chat)),
        "direct": HttpTarget(
            f"http://127.0.0.1:{provider_port}/v1/chat/completions",
            direct,
            headers={
                "authorization": f"Bearer {OPENAI_TEST_KEY}",
                "content-type": "application/json",
            },
            slot_offset=slot_offset(direct),
        ),
    }


def _rate_result(
    rate: float, segments: int, segment_s: float, phases: list[PhaseReport], modes: tuple[str, ...]
) -> RateResult:
    by_mode = {mode: [p for p in phases if p.target == mode] for mode in modes}
    sides: dict[str, ModeAtRate] = {}
    for mode, done in by_mode.items():
        sent = sum(p.calls for p in done)
        sides[mode] = ModeAtRate(
            calls=sent,
            errors=sum(sum(p.errors.values()) for p in done),
            latency_ms=percentiles([us / 1000.0 for p in done for us in p.latencies_us]),
            max_send_lag_ms=max(p.max_send_lag_us for p in done) / 1000.0,
            loadgen_cpu_us_per_call=sum(p.cpu_s for p in done) / max(1, sent) * 1e6,
        )

    def cpu(process: str, mode: str) -> float:
        spent = sum(p.watched_cpu_s[process] for p in by_mode[mode])
        return spent / max(1, sides[mode].calls) * 1e6

    s, d = sides["sidecar"].latency_ms, sides["direct"].latency_ms
    front = sides.get(HTTP_MODE)
    return RateResult(
        rate_per_s=rate,
        seconds_per_mode=segments * segment_s,
        sidecar=sides["sidecar"],
        direct=sides["direct"],
        overhead_ms={k: s[k] - d[k] for k in ("p50", "p95", "p99") if k in s and k in d},
        sidecar_cpu_us_per_call=cpu("sidecar", "sidecar"),
        provider_cpu_us_per_call_sidecar=cpu("provider", "sidecar"),
        provider_cpu_us_per_call_direct=cpu("provider", "direct"),
        loadgen_saturated=not held_schedule(phases),
        http=front,
        http_overhead_ms=None
        if front is None
        else {k: front.latency_ms[k] - d[k] for k in ("p50", "p95", "p99") if k in d},
        sidecar_cpu_us_per_call_http=None if front is None else cpu("sidecar", HTTP_MODE),
    )


def run(
    ports: dict[str, int],
    pids: dict[str, int],
    *,
    core: int | None,
    rates: tuple[float, ...],
    seconds: float,
    segment_s: float,
    warmup: int,
    http_address: str | None = None,
) -> list[RateResult]:
    """Every rate in one load generator run: connections persist, the modes alternate (the HTTP
    front's too when `http_address` is given)."""
    check_chat(ports["sidecar"], chat_request().SerializeToString())
    modes = MODES if http_address is None else (*MODES, HTTP_MODE)
    segments = max(1, round(seconds / segment_s))
    # Untimed: connections and pools warm on both paths.
    labelled = [(0.0, Phase(mode, OpenLoopMode(50.0, warmup))) for mode in modes]
    for rate in rates:
        per_segment = max(1, round(rate * segment_s))
        for index in range(segments):
            for mode in modes if index % 2 == 0 else modes[::-1]:
                labelled.append((rate, Phase(mode, OpenLoopMode(rate, per_segment))))
    report = run_load(
        targets(ports["sidecar"], ports["provider"], http_address),
        [phase for _, phase in labelled],
        core=core,
        timeout_s=CALL_TIMEOUT_S,
        watch_pids=pids,
    )
    done = list(zip((rate for rate, _ in labelled), report.phases, strict=True))
    return [
        _rate_result(rate, segments, segment_s, [p for r, p in done if r == rate], modes)
        for rate in rates
    ]


def highest_rate_held(
    rates: list[RateResult], limit_ms: float = P99_OVERHEAD_HELD_MS
) -> float | None:
    """The highest rate such that it and every lower rate kept p99 overhead under `limit_ms`
    without errors, with the load generator keeping its schedule."""
    held: float | None = None
    for r in sorted(rates, key=lambda r: r.rate_per_s):
        p99 = r.overhead_ms.get("p99")
        if r.loadgen_saturated or p99 is None or p99 >= limit_ms:
            break
        if r.sidecar.errors or r.direct.errors:
            break
        held = r.rate_per_s
    return held


def measure(
    *,
    rates: tuple[float, ...] = RATES,
    seconds: float = 6.0,
    segment_s: float = 1.0,
    warmup: int = 50,
    log_level: str = "INFO",
) -> ProxyOverheadResult:
    started = time.perf_counter()
    cores = plan_cores()
    described = machine()
    http_address, http_skipped = proxy_overhead_http.front_address()
    with (
        server_process(
            "provider", "benches.proxy_overhead", ["provider"], core=cores.loadgen
        ) as provider,
        sidecar_process(
            proxy_overhead_http.with_front(
                config(f"http://127.0.0.1:{provider.port}/v1"), http_address
            ),
            core=cores.servers,
            env=ENV,
            log_level=log_level,
        ) as sidecar,
    ):
        if http_address is not None:
            http_skipped = proxy_overhead_http.probe(http_address, PROMPT, MAX_TOKENS, MODEL)
        if http_skipped is not None:
            http_address = None
            print(f"HTTP front rows skipped: {http_skipped}", flush=True)
        results = run(
            {"sidecar": sidecar.port, "provider": provider.port},
            {"sidecar": sidecar.pid, "provider": provider.pid},
            core=cores.loadgen,
            rates=rates,
            seconds=seconds,
            segment_s=segment_s,
            warmup=warmup,
            http_address=http_address,
        )
    return ProxyOverheadResult(
        provider_latency_ms=PROVIDER_LATENCY_S * 1000.0,
        log_level=log_level,
        warmup=warmup,
        segment_s=segment_s,
        rates=results,
        highest_rate_p99_overhead_under_5ms=highest_rate_held(results),
        pinning={
            "pinned": cores.pinned,
            "loadgen_and_provider_core": cores.loadgen,
            "sidecar_core": cores.servers,
        },
        machine=described,
        wall_s=time.perf_counter() - started,
        targets={"p50_overhead_ms_at_200": 1.0, "p99_overhead_ms_at_200": 3.0},
        http_skipped=http_skipped,
    )


def table(result: ProxyOverheadResult) -> str:
    pin, m = result.pinning, result.machine
    where = (
        f"sidecar on CPU {pin['sidecar_core']}, load generator and provider on CPU "
        f"{pin['loadgen_and_provider_core']}"
        if pin["pinned"]
        else "not pinned (fewer than two CPUs)"
    )
    rows = [
        f"Chat via sidecar vs direct to a loopback provider ({result.provider_latency_ms:g} ms "
        f"fixed latency), sidecar at {result.log_level}, open loop, alternating "
        f"{result.segment_s:g} s segments; {where}",
        f"machine: {m['nproc']} CPUs, {m['cpu_model']}, Python {m['python']}, grpcio {m['grpcio']}",
        "latency ms from the scheduled send; overhead = sidecar percentile - direct percentile",
        f"{'rate/s':>7} {'mode':8} {'calls':>6} {'err':>4} {'p50':>7} {'p95':>7} {'p99':>7} "
        f"{'max':>7} {'lag':>6} {'loadgen CPU us/call':>19}",
    ]
    for r in result.rates:
        sides = [("sidecar", r.sidecar), ("direct", r.direct)]
        for name, side in [*sides, *([(HTTP_MODE, r.http)] if r.http else [])]:
            lat = side.latency_ms
            rows.append(
                f"{r.rate_per_s:7g} {name:8} {side.calls:6d} {side.errors:4d} "
                f"{lat.get('p50', float('nan')):7.2f} {lat.get('p95', float('nan')):7.2f} "
                f"{lat.get('p99', float('nan')):7.2f} {lat.get('max', float('nan')):7.2f} "
                f"{side.max_send_lag_ms:6.2f} {side.loadgen_cpu_us_per_call:19.0f}"
            )
        o = r.overhead_ms
        overhead = (
            f"{o.get('p50', float('nan')):7.2f} {o.get('p95', float('nan')):7.2f} "
            f"{o.get('p99', float('nan')):7.2f}"
        )
        if r.loadgen_saturated:
            overhead = f"{'not a figure: the load generator fell behind':<23}"
        rows.append(
            f"{r.rate_per_s:7g} {'overhead':8} {'':>6} {'':>4} {overhead}   "
            f"sidecar CPU {r.sidecar_cpu_us_per_call:.0f} us/req; provider CPU "
            f"{r.provider_cpu_us_per_call_sidecar:.0f} (via sidecar) / "
            f"{r.provider_cpu_us_per_call_direct:.0f} (direct) us/req"
        )
        if r.http_overhead_ms is not None and not r.loadgen_saturated:
            o = r.http_overhead_ms
            rows.append(
                f"{r.rate_per_s:7g} {'http ovh':8} {'':>6} {'':>4} "
                f"{o.get('p50', float('nan')):7.2f} {o.get('p95', float('nan')):7.2f} "
                f"{o.get('p99', float('nan')):7.2f}   "
                f"sidecar CPU {r.sidecar_cpu_us_per_call_http:.0f} us/req via the HTTP front"
            )
        if r.loadgen_saturated:
            rows.append(
                f"{'':7} send lag p99 > {SEND_LAG_LIMIT_US / 1000:g} ms: this rate measures the "
                "load generator's core, not the sidecar"
            )
    held = result.highest_rate_p99_overhead_under_5ms
    rows.append(
        f"highest rate with p99 overhead < {P99_OVERHEAD_HELD_MS:g} ms (this and all lower rates, "
        f"no errors, load generator on schedule): "
        f"{f'{held:g}/s' if held is not None else 'none of the rates tried'}"
    )
    rows.append("targets at 200/s: p50 overhead < 1 ms, p99 overhead < 3 ms (not asserted)")
    if result.http_skipped is not None:
        rows.append(f"HTTP front rows skipped: {result.http_skipped}")
    return "\n".join(rows)


def write_json(result: ProxyOverheadResult, path: Path = RESULT_FILE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": "proxy_overhead", "unit": "milliseconds", **asdict(result)}
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def main() -> None:
    if sys.argv[1:] == ["provider"]:
        serve_provider()
        return
    from benches.plot import plot_overhead

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # INFO is the sidecar's default: a request line per call.
    parser.add_argument("--log-level", default="INFO")
    result = measure(log_level=parser.parse_args().log_level)
    print(table(result))
    print(f"wrote {write_json(result)}")
    print(f"wrote {plot_overhead(result, PLOT_FILE)}")


if __name__ == "__main__":
    main()
