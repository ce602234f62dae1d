"""Where a request's CPU goes in the real sidecar: py-spy samples under load, as a table.

Runs `switchpoint serve` (pinned like the other RPC benches) and loads it with one RPC while
py-spy samples the process, counting only samples where a thread holds the GIL (`--gil`: the
Python work that serialises requests). Prints each function's share of those samples, self and
inclusive, and the sidecar's CPU time per call over the same window, so a share converts to
microseconds per call.

- `route`: Route on the 4-model `routing_config()`, 8 concurrent callers back to back;
- `chat`: Chat to a loopback OpenAI provider answering after 20 ms, open loop at 200/s (the
  proxy-overhead bench's setup);
- `empty`: the RPC floor's server (an empty unary call, `benches.rpc_floor`) under Route's load,
  to tell what any grpc.aio call costs from what Route adds.

    .venv/bin/python -m benches.profile route [--seconds 8] [--top 25] [--log-level INFO]

Needs py-spy (a dev dependency) and permission to ptrace the sidecar (root, or
kernel.yama.ptrace_scope = 0). The raw samples are kept in benches/results/profile-<rpc>.txt
(flamegraph.pl's collapsed format).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import sys
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc

from benches import proxy_overhead
from benches.loadgen import (
    closed_loop,
    open_loop,
    pinned_self,
    plan_cores,
    process_cpu_s,
    server_process,
    sidecar_process,
    wait_ready,
)
from switchpoint.bench.floor import EMPTY_METHOD
from switchpoint.v1 import router_pb2 as pb
from switchpoint.v1 import router_pb2_grpc
from tests.sidecar_harness import routing_config, user

RESULTS_DIR = Path(__file__).parent / "results"
SAMPLE_RATE_HZ = 1000
CHAT_RATE_PER_S = 200.0
ROUTE_CALLERS = 8
_LINE = re.compile(r":\d+\)$")


@dataclass(frozen=True)
class Profile:
    rpc: str
    calls: int
    cpu_us_per_call: float
    samples: int
    self_share: list[tuple[str, float]]
    inclusive_share: list[tuple[str, float]]


def read_samples(path: Path) -> tuple[int, Counter[str], Counter[str]]:
    """Total samples, and samples per function (file:line dropped) by self and inclusive."""
    total = 0
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        total += n
        frames = [_LINE.sub(")", frame) for frame in stack.split(";")]
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    return total, own, inclusive


@contextmanager
def _sidecar_for(rpc: str, core: int | None, log_level: str) -> Iterator[tuple[int, int, object]]:
    """(port, pid, request) of a sidecar set up for `rpc`, with its provider when it needs one."""
    with ExitStack() as stack:
        if rpc == "empty":
            floor = stack.enter_context(
                server_process("floor", "benches.rpc_floor", ["empty-server"], core=core)
            )
            yield floor.port, floor.pid, b""
            return
        if rpc == "route":
            sidecar = stack.enter_context(
                sidecar_process(routing_config(), core=core, log_level=log_level)
            )
            request: object = pb.RouteRequest(
                messages=user("hello there, route me please"),
                routing=pb.RoutingOptions(tenant="acme"),
            )
        else:
            provider = stack.enter_context(
                server_process("provider", "benches.proxy_overhead", ["provider"], core=None)
            )
            config = proxy_overhead.config(f"http://127.0.0.1:{provider.port}/v1")
            sidecar = stack.enter_context(
                sidecar_process(config, core=core, env=proxy_overhead.ENV, log_level=log_level)
            )
            request = proxy_overhead.chat_request()
        yield sidecar.port, sidecar.pid, request


async def _load(rpc: str, port: int, pid: int, request: object, seconds: float) -> Profile:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    raw = RESULTS_DIR / f"profile-{rpc}.txt"
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        await wait_ready(channel)
        stub = router_pb2_grpc.RouterStub(channel)
        methods: dict[str, Callable[..., Awaitable[object]]] = {
            "route": stub.Route,
            "chat": stub.Chat,
            "empty": channel.unary_unary(EMPTY_METHOD),
        }
        method = methods[rpc]

        async def call() -> object:
            return await method(request, timeout=10.0)

        async def run(duration: float) -> int:
            if rpc in ("route", "empty"):
                calls, _ = await closed_loop(call, ROUTE_CALLERS, duration)
                return calls
            result = await open_loop(call, CHAT_RATE_PER_S, round(CHAT_RATE_PER_S * duration))
            return len(result.latencies_ms) + result.errors

        await run(2.0)  # warm-up: connections, pools, first-call paths
        sampler = await asyncio.create_subprocess_exec(
            py_spy, "record", "--gil", "--rate", str(SAMPLE_RATE_HZ), "--duration",
            str(round(seconds)), "--format", "raw", "--output", str(raw), "--pid", str(pid),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        before = process_cpu_s(pid)
        calls = await run(seconds)
        cpu_s = process_cpu_s(pid) - before
        _, err = await sampler.communicate()
        if sampler.returncode != 0:
            raise RuntimeError(f"py-spy failed: {err.decode(errors='replace').strip()}")
    finally:
        await channel.close()
    total, own, inclusive = read_samples(raw)
    return Profile(
        rpc=rpc,
        calls=calls,
        cpu_us_per_call=cpu_s / max(calls, 1) * 1e6,
        samples=total,
        self_share=[(name, n / total) for name, n in own.most_common()],
        inclusive_share=[(name, n / total) for name, n in inclusive.most_common()],
    )


def measure(rpc: str, seconds: float, log_level: str = "WARNING") -> Profile:
    cores = plan_cores()
    with (
        _sidecar_for(rpc, cores.servers, log_level) as (port, pid, request),
        pinned_self(cores.loadgen),
    ):
        return asyncio.run(_load(rpc, port, pid, request, seconds))


def table(profile: Profile, top: int) -> str:
    per_call = profile.cpu_us_per_call
    rows = [
        f"{profile.rpc}: {profile.calls} calls, sidecar CPU {per_call:.0f} us/call, "
        f"{profile.samples} GIL-holding samples; us/call = share x CPU per call",
        f"{'self':>6} {'us':>6}  function",
    ]
    for name, share in profile.self_share[:top]:
        rows.append(f"{share:6.1%} {share * per_call:6.1f}  {name}")
    rows.append(f"{'incl.':>6} {'us':>6}  function (switchpoint's own frames)")
    own = [(n, s) for n, s in profile.inclusive_share if "switchpoint/" in n]
    for name, share in own[:top]:
        rows.append(f"{share:6.1%} {share * per_call:6.1f}  {name}")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rpc", choices=("route", "chat", "empty"))
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--top", type=int, default=25)
    # INFO is the sidecar's default: a request line per call.
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args()
    print(table(measure(args.rpc, args.seconds, args.log_level), args.top))


if __name__ == "__main__":
    main()
