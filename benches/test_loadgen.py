"""The compiled load generator against real servers: it counts every call, reports errors by kind,
and puts each call's sequence number in the request's slot.

No timing is asserted. Run with `pytest benches/test_loadgen.py` (it builds the crate on first
use); `make bench` skips it (`--benchmark-only` runs only timed tests), and `cargo test -p
switchpoint-loadgen` covers the pure parts (plan checks, the slot, the schedule).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import pytest

from benches.loadgen import (
    LOADGEN_NICE,
    SLOT_DIGITS,
    ClosedLoopMode,
    GrpcTarget,
    HttpTarget,
    OpenLoopMode,
    Phase,
    SequentialMode,
    ServerProcess,
    run_load,
    server_process,
    slot_offset,
)
from switchpoint.bench.floor import EMPTY_METHOD
from tests.providers.fixtures import OPENAI_TEST_KEY
from tests.providers.openai_server import OpenAIServer
from tests.providers.script import error

# The first build of the crate (release) can take minutes on a busy machine.
pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def empty_server() -> Iterator[ServerProcess]:
    with server_process("empty", "benches.rpc_floor", ["empty-server"], core=None) as server:
        yield server


def _empty(port: int, body: bytes = b"") -> GrpcTarget:
    return GrpcTarget(f"127.0.0.1:{port}", EMPTY_METHOD, body)


def test_every_call_is_counted_in_each_mode(empty_server: ServerProcess) -> None:
    body = b"prompt " + SLOT_DIGITS
    target = GrpcTarget(
        f"127.0.0.1:{empty_server.port}", EMPTY_METHOD, body, slot_offset=slot_offset(body)
    )
    report = run_load(
        {"empty": target},
        [
            Phase("empty", SequentialMode(calls=25)),
            Phase("empty", OpenLoopMode(rate=500.0, calls=40)),
            Phase("empty", ClosedLoopMode(callers=4, seconds=0.2)),
        ],
        watch_pids={"server": empty_server.pid},
    )
    sequential, opened, closed = report.phases
    assert (sequential.mode, opened.mode, closed.mode) == ("sequential", "open_loop", "closed_loop")
    assert sequential.calls == len(sequential.latencies_us) == 25
    assert opened.calls == len(opened.latencies_us) == 40
    assert closed.calls == len(closed.latencies_us) > 0
    assert all(p.errors == {} for p in report.phases)
    assert all(latency > 0 for p in report.phases for latency in p.latencies_us)
    assert all(set(p.watched_cpu_s) == {"server"} for p in report.phases)
    assert report.cpu_s > 0
    # Raised where permitted, else left as inherited.
    assert report.nice in (LOADGEN_NICE, os.getpriority(os.PRIO_PROCESS, 0))


def test_errors_are_reported_by_kind_and_every_call_answered(
    empty_server: ServerProcess,
) -> None:
    # A port nothing listens on: its server has stopped.
    with server_process("gone", "benches.rpc_floor", ["empty-server"], core=None) as gone:
        dead_port = gone.port
    unknown = GrpcTarget(f"127.0.0.1:{empty_server.port}", "/no.Such/Method", b"")
    report = run_load(
        {"dead": _empty(dead_port), "unknown": unknown},
        [
            Phase("dead", SequentialMode(calls=3)),
            Phase("dead", OpenLoopMode(rate=200.0, calls=5)),
            Phase("unknown", SequentialMode(calls=4)),
        ],
        timeout_s=5.0,
    )
    dead_sequential, dead_open, unknown_method = report.phases
    assert dead_sequential.errors == {"connect": 3}
    assert dead_sequential.latencies_us == []
    assert dead_open.errors == {"connect": 5}
    assert dead_open.calls == 5
    assert unknown_method.errors == {"grpc-status 12": 4}  # UNIMPLEMENTED


def test_each_call_carries_its_own_sequence_number() -> None:
    template = {"model": "m", "messages": [{"role": "user", "content": "q 00000000 tail é"}]}
    body = json.dumps(template, ensure_ascii=False).encode()
    with OpenAIServer(api_key=OPENAI_TEST_KEY) as provider:
        provider.script.push(error(500))
        target = HttpTarget(
            f"{provider.base_url}/chat/completions",
            body,
            headers={"authorization": f"Bearer {OPENAI_TEST_KEY}"},
            slot_offset=slot_offset(body),
        )
        report = run_load({"direct": target}, [Phase("direct", SequentialMode(calls=6))])
        seen = provider.requests
    (phase,) = report.phases
    assert phase.errors == {"http-status 500": 1}
    assert len(phase.latencies_us) == 5
    contents = [r.body["messages"][0]["content"] for r in seen]  # type: ignore[index]
    assert contents == [f"q {n:08d} tail é" for n in range(6)]
    assert len({r.client_port for r in seen}) == 1, "one keep-alive connection, reused"


def test_a_bad_plan_is_refused_naming_the_field(empty_server: ServerProcess) -> None:
    target = GrpcTarget(f"127.0.0.1:{empty_server.port}", EMPTY_METHOD, b"abc", slot_offset=1)
    with pytest.raises(RuntimeError, match=r"targets\.t\.slot_offset: 1 \+ 8 is past"):
        run_load({"t": target}, [Phase("t", SequentialMode(calls=1))])
    with pytest.raises(RuntimeError, match=r"phases\[0\]\.mode\.open_loop\.rate"):
        run_load({"t": _empty(empty_server.port)}, [Phase("t", OpenLoopMode(rate=0, calls=1))])


def test_a_cpu_it_cannot_run_on_is_refused(empty_server: ServerProcess) -> None:
    with pytest.raises(RuntimeError, match="cannot pin to CPU 1000"):
        run_load({"t": _empty(empty_server.port)}, [Phase("t", SequentialMode(1))], core=1000)
