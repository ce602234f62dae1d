"""The soak's traffic: mixed Chat / ChatStream / Route calls from several tenants, sent open loop
(each call starts on its schedule whether or not earlier ones finished), and what each call's
answer was: its status, its latency and the charge it reported.

Tenants and what they send (shares of all calls):
- checkout: Chat on stage `ui` (starting on Anthropic), ChatStream on stage `api` (starting on
  OpenAI), 20 s deadline;
- batch: auto-routed Chat (strategy `best`, asking for "code"), batch priority, 20 s deadline;
- search: Chat and ChatStream on stage `api`, realtime, a tight 1.5 s deadline that stalls and
  retries can outlive (DEADLINE_EXCEEDED is an expected answer for it);
- every tenant: Route (decides only, charges nothing);
- canceller: ChatStream on `stall-model`, cancelled once its first two tokens arrived.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from benches.soak_faults import CANCEL_AFTER_CHUNKS, MAX_RETRIES, TOKENIZER
from switchpoint.tokens import TokenCounter
from switchpoint.v1 import router_pb2 as pb
from tests.providers.script import answer_tokens, echo_answer
from tests.sidecar_harness import RunningSidecar, user

MAX_TOKENS = 24
LONG_DEADLINE_S = 20.0
TIGHT_DEADLINE_S = 1.5
# The most any model of the soak config charges per million tokens, in and out.
MAX_INPUT_PER_MTOK = 2.5
MAX_OUTPUT_PER_MTOK = 10.0
STALL_INPUT_PER_MTOK = 1.0
STALL_OUTPUT_PER_MTOK = 4.0
MOST_MODELS_PER_CALL = 4
OVERDUE_SLACK_S = 5.0
TOKENS = TokenCounter()


@dataclass(frozen=True)
class Kind:
    name: str  # chat | stream | route | cancel
    tenant: str
    share: float
    deadline_s: float
    routing: pb.RoutingOptions


KINDS: tuple[Kind, ...] = (
    Kind("chat", "checkout", 0.25, LONG_DEADLINE_S, pb.RoutingOptions(stage="ui")),
    Kind("stream", "checkout", 0.20, LONG_DEADLINE_S, pb.RoutingOptions(stage="api")),
    Kind(
        "chat",
        "batch",
        0.15,
        LONG_DEADLINE_S,
        pb.RoutingOptions(strategy="best", capabilities=["code"], priority=pb.PRIORITY_BATCH),
    ),
    Kind(
        "chat",
        "search",
        0.10,
        TIGHT_DEADLINE_S,
        pb.RoutingOptions(stage="api", priority=pb.PRIORITY_REALTIME),
    ),
    Kind(
        "stream",
        "search",
        0.05,
        TIGHT_DEADLINE_S,
        pb.RoutingOptions(stage="api", priority=pb.PRIORITY_REALTIME),
    ),
    Kind("route", "checkout", 0.07, LONG_DEADLINE_S, pb.RoutingOptions()),
    Kind("route", "search", 0.07, LONG_DEADLINE_S, pb.RoutingOptions()),
    Kind("route", "batch", 0.06, LONG_DEADLINE_S, pb.RoutingOptions()),
    Kind("cancel", "canceller", 0.05, LONG_DEADLINE_S, pb.RoutingOptions(models=["stall-model"])),
)


@dataclass(slots=True)
class Call:
    """One call and its answer. `charged_usd` is what the answer reported (or, for a cancel,
    what the charging rule says it costs); `unreported_max_usd` bounds what a failed call may
    have been charged without saying (attempts that reached a provider before it failed)."""

    index: int
    kind: str
    tenant: str
    phase: str
    scheduled_s: float  # from the start of the run
    deadline_s: float
    status: str = "PENDING"
    latency_ms: float = 0.0
    charged_usd: float = 0.0
    unreported_max_usd: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def overdue(self) -> bool:
        """Answered later than its deadline allows: hung. The slack absorbs a loaded machine's
        scheduling delays; a call the sidecar forgot would take forever, not seconds."""
        return self.latency_ms > (self.deadline_s + OVERDUE_SLACK_S) * 1000.0


def prompt_for(index: int, tenant: str) -> str:
    # Distinct prompts: nothing is ever served from a cache (and the cache is off anyway).
    return f"request {index} from {tenant}: name three prime numbers and one river"


def _failed_charge_bound(prompt: str) -> float:
    """The most a failed call can have been charged unseen: every attempt of up to
    MOST_MODELS_PER_CALL models reached its provider and streamed its whole answer."""
    attempts = MOST_MODELS_PER_CALL * (MAX_RETRIES + 1)
    # A token is at least one byte; 16 covers the chat template's per-message tokens.
    prompt_tokens = len(prompt.encode()) + 16
    per_attempt = prompt_tokens * MAX_INPUT_PER_MTOK + MAX_TOKENS * MAX_OUTPUT_PER_MTOK
    return attempts * per_attempt / 1e6


def _request(kind: Kind, prompt: str) -> pb.ChatRequest:
    routing = pb.RoutingOptions()
    routing.CopyFrom(kind.routing)
    routing.tenant = kind.tenant
    return pb.ChatRequest(
        messages=user(prompt), routing=routing, params=pb.GenerationParams(max_tokens=MAX_TOKENS)
    )


async def run_call(sidecar: RunningSidecar, kind: Kind, call: Call, started: float) -> None:
    """Sends `call`, records its answer; never raises (a surprise is recorded as a problem)."""
    prompt = prompt_for(call.index, kind.tenant)
    request = _request(kind, prompt)
    try:
        if kind.name == "route":
            route = pb.RouteRequest(messages=request.messages, routing=request.routing)
            await sidecar.stub.Route(route, timeout=kind.deadline_s)
        elif kind.name == "chat":
            reply = await sidecar.stub.Chat(request, timeout=kind.deadline_s)
            call.charged_usd = reply.cost_usd
        elif kind.name == "stream":
            await _stream(sidecar, request, call)
        else:
            await _cancel(sidecar, request, prompt, call)
        if call.status == "PENDING":
            call.status = "OK"
    except grpc.aio.AioRpcError as exc:
        call.status = exc.code().name
        call.unreported_max_usd = 0.0 if kind.name == "route" else _failed_charge_bound(prompt)
    except Exception as exc:  # the soak reports every surprise instead of dying
        call.status = "CLIENT_ERROR"
        call.problems.append(f"{type(exc).__name__}: {exc}")
    call.latency_ms = (time.perf_counter() - started - call.scheduled_s) * 1000.0


async def _stream(sidecar: RunningSidecar, request: pb.ChatRequest, call: Call) -> None:
    done = 0
    async for chunk in sidecar.stub.ChatStream(request, timeout=call.deadline_s):
        if chunk.done:
            done += 1
            call.charged_usd = chunk.cost_usd
    if done != 1:
        # The stream ended OK without exactly one final chunk: its charge was never reported.
        call.status = "LOST"
        call.problems.append(f"stream ended with {done} done chunks")


async def _cancel(
    sidecar: RunningSidecar, request: pb.ChatRequest, prompt: str, call: Call
) -> None:
    """Reads the stall model's first tokens, then cancels: charged prompt + those tokens."""
    wanted = "".join(answer_tokens(echo_answer("stall-model", prompt))[:CANCEL_AFTER_CHUNKS])
    stream = sidecar.stub.ChatStream(request, timeout=call.deadline_s)
    received = ""
    prompt_tokens = 0
    while received != wanted:
        chunk = await stream.read()
        if not isinstance(chunk, pb.ChatChunk):
            call.status = "LOST"
            call.problems.append(f"stream ended after {received!r} before the cancel")
            return
        if chunk.HasField("decision"):
            prompt_tokens = chunk.decision.estimated_input_tokens
        received += chunk.delta
        if len(received) > len(wanted):
            call.problems.append(f"streamed {received!r}, more than the provider sent")
            break
    stream.cancel()
    call.status = "CANCELLED"
    streamed_tokens = TOKENS.count_text(received, TOKENIZER)
    call.charged_usd = (
        prompt_tokens * STALL_INPUT_PER_MTOK + streamed_tokens * STALL_OUTPUT_PER_MTOK
    ) / 1e6


def pick_kind(rng: random.Random) -> Kind:
    draw = rng.random() * sum(k.share for k in KINDS)
    for kind in KINDS:
        if draw < kind.share:
            return kind
        draw -= kind.share
    return KINDS[-1]


async def open_loop(
    sidecar: RunningSidecar,
    calls: list[Call],
    *,
    rate: float,
    seconds: float,
    seed: int,
    phase_at: Callable[[float], str],
    started: float,
) -> tuple[set[asyncio.Task[None]], list[float]]:
    """Starts `rate` calls/s for `seconds` on schedule, appending each to `calls` as it starts;
    returns the tasks still running (for the caller to await) and each send's lag in seconds."""
    rng = random.Random(seed)
    running: set[asyncio.Task[None]] = set()  # finished tasks are dropped: memory stays flat
    lags: list[float] = []
    for index in range(round(rate * seconds)):
        scheduled = index / rate
        delay = started + scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        lags.append(time.perf_counter() - started - scheduled)
        kind = pick_kind(rng)
        call = Call(index, kind.name, kind.tenant, phase_at(scheduled), scheduled, kind.deadline_s)
        calls.append(call)
        task = asyncio.create_task(run_call(sidecar, kind, call, started))
        running.add(task)
        task.add_done_callback(running.discard)
    return running, lags
