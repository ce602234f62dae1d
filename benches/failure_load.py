"""Chat RPC under a flaky provider, with retries and fallback ("resilient") versus none ("bare").

Two loopback OpenAI providers: A fails a seeded-random 20% of its calls with a 503 (at once) and
answers the others after a fixed 20 ms; B always answers at once. Two real sidecars run side by
side with the same models and the same lenient circuit breaker (50 failures in a row, and a
`min_calls` above the window so the failure rate never trips it: the breaker must not hide the
20%). They differ only in failure handling:

- resilient: 2 retries on A (base delay 20 ms, full jitter), fallback chain [A, B]; requests
  route at the auto level by cost, which ranks A (cheaper) first and B second;
- bare: no retries, fallback chain [A], and requests override `models=[A]`, so a failure is final.

Load is open-loop: requests go out on a fixed schedule (default 50/s for 10 s per mode), each as
its own task, and latency runs from the *scheduled* send time, so queueing in the client, the
sidecar or the providers is not hidden. The modes take turns in segments (2 s by default), so that
noise on the shared machine lands on both alike; each segment drains before the next starts. The
load generator, both sidecars and both providers share this one process (the providers on their
own threads), as in the test harness, so absolute milliseconds include that contention; the
resilient/bare ratios are the figures to read.

Run directly (`.venv/bin/python -m benches.failure_load`) or through
`benches/test_failure_bench.py` under `make bench`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import statistics
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc

from switchpoint.v1 import router_pb2 as pb
from tests.providers.fixtures import OPENAI_TEST_KEY
from tests.providers.openai_server import OpenAIServer
from tests.providers.script import Script, Step, error, hang, ok
from tests.sidecar_harness import RunningSidecar, running_sidecar, user

RESULTS_DIR = Path(__file__).parent / "results"
RESULT_FILE = RESULTS_DIR / "failure_load.json"

A_MODEL = "flaky-a"
B_MODEL = "steady-b"
FAILURE_RATE = 0.2
FAILURE_STATUS = 503
A_LATENCY_S = 0.02  # added before each of A's successful answers
SEED = 20240611
ENV = {"T_OAI": OPENAI_TEST_KEY}
PROMPT = "say hello in five words"
MAX_TOKENS = 16
CALL_TIMEOUT_S = 10.0  # gRPC deadline per call: bounds every call even if something hangs
PROVIDER_TIMEOUT_S = 5.0
RESILIENT_RETRY: dict[str, Any] = {"max_retries": 2, "base_delay_s": 0.02, "max_delay_s": 0.2}
BARE_RETRY: dict[str, Any] = {"max_retries": 0}
# High enough that neither mode's breaker opens on a 20% failure rate during the run.
LENIENT_BREAKER: dict[str, Any] = {"consecutive_failures": 50, "min_calls": 1000}
MODES = ("resilient", "bare")
_FAILED_ATTEMPTS = re.compile(r"all (\d+) attempt\(s\) failed")


class FlakyScript(Script):
    """A script whose default fails a seeded-random share of calls with `status`.

    Pushed steps still come first; after them, each call draws from its own `random.Random`:
    `error(status)` with probability `failure_rate`, else `ok_step`. Draws happen on the server
    thread, under a lock, so the sequence of outcomes is fixed by the seed.
    """

    def __init__(self, failure_rate: float, ok_step: Step, *, status: int, seed: int) -> None:
        super().__init__()
        self._rng = random.Random(seed)
        self._rng_lock = threading.Lock()
        self._failure_rate = failure_rate
        self._ok_step = ok_step
        self._failure = error(status)
        self.failures = 0
        self.successes = 0

    def next_step(self) -> Step:
        if len(self):  # only the server thread pops, so the queue cannot empty in between
            return super().next_step()
        with self._rng_lock:
            fail = self._rng.random() < self._failure_rate
            if fail:
                self.failures += 1
            else:
                self.successes += 1
        return self._failure if fail else self._ok_step


@dataclass(frozen=True)
class Call:
    ok: bool
    latency_ms: float  # from the scheduled send time to the reply (or the error)
    attempts: int | None  # None: a failed call whose status did not say
    models: tuple[str, ...]  # the attempts' models, in order (successful calls only)
    answered_by: str
    code: str


@dataclass(frozen=True)
class Mode:
    mode: str
    calls: int
    ok: int
    success_rate: float
    # Latency of successful calls, ms from the scheduled send time; None when none succeeded.
    mean_ms: float | None
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    failed_p50_ms: float | None
    # From ChatResponse.attempts, successful calls only.
    attempts_mean: float | None
    # Every call: failed calls counted from their status message ("all N attempt(s) failed").
    attempts_mean_all: float | None
    retried: int  # successful calls that needed more than one attempt
    attempts_histogram: dict[str, int]  # successful calls by attempt count
    fell_back: int  # successful calls answered by B
    first_attempt_on_a: int  # successful calls whose first attempt went to A
    failure_codes: dict[str, int]
    upstream_a: int  # requests A / B received during this mode's timed segments
    upstream_b: int
    max_send_lag_ms: float  # worst lateness of a send against its schedule


@dataclass(frozen=True)
class FailureLoadResult:
    rate_per_s: float
    duration_s_per_mode: float
    segment_s: float
    calls_per_mode: int
    warmup_per_mode: int
    failure_rate: float
    a_latency_ms: float
    seed: int
    a_failures_drawn: int
    a_successes_drawn: int
    resilient: Mode
    bare: Mode
    ratio_success_rate: float | None
    ratio_p50: float | None
    ratio_p95: float | None
    ratio_p99: float | None
    ratio_attempts: float | None
    wall_s: float


def _model(name: str, provider: str, price: float) -> dict[str, Any]:
    return {
        "name": name,
        "provider": provider,
        "upstream_model": name,
        "price": {"input_per_mtok": price, "output_per_mtok": price},
        "context_window": 16000,
        "quality": 0.5,
        "latency_prior": {"ttft_ms": 50, "tpot_ms": 5},
    }


def _provider(url: str, retry: dict[str, Any]) -> dict[str, Any]:
    return {
        "kind": "openai",
        "base_url": url,
        "api_key_env": "T_OAI",
        "timeout_s": PROVIDER_TIMEOUT_S,
        "retry": retry,
        "breaker": LENIENT_BREAKER,
    }


def config(mode: str, a_url: str, b_url: str) -> dict[str, Any]:
    """The sidecar config of `mode`: the same models and breaker, different failure handling."""
    resilient = mode == "resilient"
    retry = RESILIENT_RETRY if resilient else BARE_RETRY
    return {
        "providers": {"prov-a": _provider(a_url, retry), "prov-b": _provider(b_url, retry)},
        # A is the cheaper, so cost-first routing ranks it first.
        "models": [_model(A_MODEL, "prov-a", 0.1), _model(B_MODEL, "prov-b", 1.0)],
        "routing": {"fallback_chain": [A_MODEL, B_MODEL] if resilient else [A_MODEL]},
    }


def chat_request(mode: str) -> pb.ChatRequest:
    routing = pb.RoutingOptions(weights=pb.Weights(cost=1))
    if mode == "bare":
        routing.models.append(A_MODEL)  # an override: no fallback beyond A
    return pb.ChatRequest(
        messages=user(PROMPT), routing=routing, params=pb.GenerationParams(max_tokens=MAX_TOKENS)
    )


async def _one(
    sidecar: RunningSidecar, request: pb.ChatRequest, scheduled: float, out: list[Call]
) -> None:
    try:
        reply = await sidecar.stub.Chat(request, timeout=CALL_TIMEOUT_S)
    except grpc.aio.AioRpcError as exc:
        latency_ms = (time.perf_counter() - scheduled) * 1000.0
        found = _FAILED_ATTEMPTS.search(exc.details() or "")
        attempts = int(found.group(1)) if found else None
        out.append(Call(False, latency_ms, attempts, (), "", exc.code().name))
        return
    latency_ms = (time.perf_counter() - scheduled) * 1000.0
    models = tuple(a.model for a in reply.attempts)
    out.append(Call(True, latency_ms, len(models), models, reply.model, "OK"))


async def _segment(
    sidecar: RunningSidecar, request: pb.ChatRequest, rate: float, n: int, out: list[Call]
) -> float:
    """`n` calls sent open-loop at `rate`/s; returns the worst send lag (s). Waits for all."""
    start = time.perf_counter() + 0.005
    tasks: list[asyncio.Task[None]] = []
    max_lag = 0.0
    for i in range(n):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        max_lag = max(max_lag, time.perf_counter() - scheduled)
        tasks.append(asyncio.create_task(_one(sidecar, request, scheduled, out)))
    await asyncio.gather(*tasks)
    return max_lag


def _percentile(ascending: list[float], q: float) -> float | None:
    """Nearest-rank percentile of an ascending list; None when it is empty."""
    if not ascending:
        return None
    rank = max(1, round(q / 100.0 * len(ascending)))
    return ascending[min(rank, len(ascending)) - 1]


def _ratio(num: float | None, den: float | None) -> float | None:
    return None if num is None or den is None or den == 0 else num / den


def _summary(mode: str, calls: list[Call], upstream: tuple[int, int], max_lag_s: float) -> Mode:
    good = [c for c in calls if c.ok]
    bad = [c for c in calls if not c.ok]
    ok_ms = sorted(c.latency_ms for c in good)
    counted = [c.attempts for c in calls if c.attempts is not None]
    return Mode(
        mode=mode,
        calls=len(calls),
        ok=len(good),
        success_rate=len(good) / len(calls) if calls else 0.0,
        mean_ms=statistics.fmean(ok_ms) if ok_ms else None,
        p50_ms=_percentile(ok_ms, 50),
        p95_ms=_percentile(ok_ms, 95),
        p99_ms=_percentile(ok_ms, 99),
        max_ms=ok_ms[-1] if ok_ms else None,
        failed_p50_ms=_percentile(sorted(c.latency_ms for c in bad), 50),
        attempts_mean=statistics.fmean(c.attempts or 0 for c in good) if good else None,
        attempts_mean_all=statistics.fmean(counted) if len(counted) == len(calls) else None,
        retried=sum(1 for c in good if (c.attempts or 0) > 1),
        attempts_histogram={
            str(k): v for k, v in sorted(Counter(c.attempts for c in good).items())
        },
        fell_back=sum(1 for c in good if c.answered_by == B_MODEL),
        first_attempt_on_a=sum(1 for c in good if c.models[:1] == (A_MODEL,)),
        failure_codes=dict(Counter(c.code for c in bad)),
        upstream_a=upstream[0],
        upstream_b=upstream[1],
        max_send_lag_ms=max_lag_s * 1000.0,
    )


@contextmanager
def _providers(
    seed: int, failure_rate: float
) -> Iterator[tuple[OpenAIServer, OpenAIServer, FlakyScript]]:
    with OpenAIServer(api_key=OPENAI_TEST_KEY) as a, OpenAIServer(api_key=OPENAI_TEST_KEY) as b:
        flaky = FlakyScript(failure_rate, hang(A_LATENCY_S), status=FAILURE_STATUS, seed=seed)
        a.script = flaky
        b.script.default = ok()
        yield a, b, flaky


async def measure(
    *,
    rate: float = 50.0,
    duration_s: float = 10.0,
    segment_s: float = 2.0,
    warmup: int = 20,
    seed: int = SEED,
    failure_rate: float = FAILURE_RATE,
) -> FailureLoadResult:
    """`rate` calls/s for `duration_s` per mode, the modes alternating in `segment_s` segments."""
    per_segment = round(rate * segment_s)
    segments = max(1, round(duration_s / segment_s))
    started = time.perf_counter()
    with _providers(seed, failure_rate) as (a, b, flaky):
        async with (
            running_sidecar(config("resilient", a.base_url, b.base_url), ENV) as resilient,
            running_sidecar(config("bare", a.base_url, b.base_url), ENV) as bare,
        ):
            sidecars = {"resilient": resilient, "bare": bare}
            requests = {mode: chat_request(mode) for mode in MODES}
            for mode in MODES:  # untimed: connections, pools and caches warm on both sides
                for _ in range(warmup):
                    await _one(sidecars[mode], requests[mode], time.perf_counter(), [])
            calls: dict[str, list[Call]] = {mode: [] for mode in MODES}
            upstream = {mode: [0, 0] for mode in MODES}
            max_lag = dict.fromkeys(MODES, 0.0)
            for index in range(segments):
                # Alternate which mode goes first, so neither always follows the other.
                order = MODES if index % 2 == 0 else MODES[::-1]
                for mode in order:
                    before = (len(a.requests), len(b.requests))
                    lag = await _segment(
                        sidecars[mode], requests[mode], rate, per_segment, calls[mode]
                    )
                    upstream[mode][0] += len(a.requests) - before[0]
                    upstream[mode][1] += len(b.requests) - before[1]
                    max_lag[mode] = max(max_lag[mode], lag)
    modes = {
        mode: _summary(mode, calls[mode], (upstream[mode][0], upstream[mode][1]), max_lag[mode])
        for mode in MODES
    }
    _check(modes)
    res, bare_mode = modes["resilient"], modes["bare"]
    return FailureLoadResult(
        rate_per_s=rate,
        duration_s_per_mode=segments * segment_s,
        segment_s=segment_s,
        calls_per_mode=segments * per_segment,
        warmup_per_mode=warmup,
        failure_rate=failure_rate,
        a_latency_ms=A_LATENCY_S * 1000.0,
        seed=seed,
        a_failures_drawn=flaky.failures,
        a_successes_drawn=flaky.successes,
        resilient=res,
        bare=bare_mode,
        ratio_success_rate=_ratio(res.success_rate, bare_mode.success_rate),
        ratio_p50=_ratio(res.p50_ms, bare_mode.p50_ms),
        ratio_p95=_ratio(res.p95_ms, bare_mode.p95_ms),
        ratio_p99=_ratio(res.p99_ms, bare_mode.p99_ms),
        ratio_attempts=_ratio(res.attempts_mean, bare_mode.attempts_mean),
        wall_s=time.perf_counter() - started,
    )


def _check(modes: dict[str, Mode]) -> None:
    """The set-up did what it says (not a timing check): bare never left A, resilient began on A."""
    res, bare = modes["resilient"], modes["bare"]
    if bare.upstream_b or bare.fell_back or bare.retried:
        raise RuntimeError(f"bare mode retried or reached B: {bare}")
    if res.first_attempt_on_a != res.ok:
        raise RuntimeError(f"resilient calls did not all start on {A_MODEL}: {res}")


def _ms(value: float | None) -> str:
    return f"{value:9.1f}" if value is not None else f"{'-':>9}"


def _x(value: float | None) -> str:
    return f"{value:9.3f}" if value is not None else f"{'-':>9}"


def table(result: FailureLoadResult) -> str:
    rows = [
        f"Chat RPC, open loop {result.rate_per_s:g} req/s x {result.duration_s_per_mode:g} s per "
        f"mode ({result.calls_per_mode} calls, +{result.warmup_per_mode} warm-up), "
        f"alternating {result.segment_s:g} s segments",
        f"A: {FAILURE_STATUS} on {result.failure_rate:.0%} of calls (seed {result.seed}), "
        f"ok after {result.a_latency_ms:g} ms; B: ok at once. Latency from the scheduled send.",
        f"{'':10} {'success':>9} {'p50 ms':>9} {'p95 ms':>9} {'p99 ms':>9} {'attempts':>9} "
        f"{'retried':>8} {'fell bk':>8} {'up A/B':>9} {'lag ms':>7}",
    ]
    for side in (result.resilient, result.bare):
        rows.append(
            f"{side.mode:10} {side.success_rate:9.2%} {_ms(side.p50_ms)} {_ms(side.p95_ms)} "
            f"{_ms(side.p99_ms)} {_x(side.attempts_mean)} {side.retried:8d} "
            f"{side.fell_back:8d} {f'{side.upstream_a}/{side.upstream_b}':>9} "
            f"{side.max_send_lag_ms:7.1f}"
        )
    rows.append(
        f"{'res/bare':10} {_x(result.ratio_success_rate)} {_x(result.ratio_p50)} "
        f"{_x(result.ratio_p95)} {_x(result.ratio_p99)} {_x(result.ratio_attempts)}"
    )
    for side in (result.resilient, result.bare):
        codes = ", ".join(f"{code} x{n}" for code, n in sorted(side.failure_codes.items()))
        rows.append(
            f"{side.mode}: {side.ok}/{side.calls} ok; failures: {codes or 'none'}; "
            f"attempts over all calls {_x(side.attempts_mean_all).strip()}; ok calls by attempts "
            f"{' '.join(f'{k}:{v}' for k, v in side.attempts_histogram.items()) or '-'}; "
            f"failed-call p50 {_ms(side.failed_p50_ms).strip()} ms"
        )
    return "\n".join(rows)


def write_json(result: FailureLoadResult, path: Path = RESULT_FILE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": "failure_load", "unit": "milliseconds", **asdict(result)}
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def main() -> None:
    # Every failed attempt logs a warning; a hundred of them would bury the table.
    logging.getLogger("switchpoint").setLevel(logging.ERROR)
    result = asyncio.run(measure())
    print(table(result))
    print(f"wrote {write_json(result)}")


if __name__ == "__main__":
    main()
