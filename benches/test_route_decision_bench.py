"""A whole Route decision in process: `Router.route_wire` (decode, validate, count, classify, the
levels, scoring, encode) against reading the same request with protobuf's own parser, and the
engine's path (protobuf in, `Engine.decide`, the decision's bytes out), in the same run.

Nothing is asserted about time; the ratios are printed. `make bench` runs it.
"""

from __future__ import annotations

from typing import Any

from switchpoint.bench.figures import per_op_ns
from switchpoint.config import parse_config
from switchpoint.engine.building import build_engine
from switchpoint.server import convert
from switchpoint.v1 import router_pb2 as pb
from tests.sidecar_harness import routing_config, user

Benchmark = Any
ITERATIONS = 20_000


def test_route_decision_in_process(benchmark: Benchmark) -> None:
    engine = build_engine(parse_config(routing_config()), environ={}).engine
    # With its own id: otherwise each path draws one and the answers differ in it alone.
    request = pb.RouteRequest(
        messages=user("hello there, route me please"),
        routing=pb.RoutingOptions(tenant="acme"),
        request_id="bench-route-1",
    )
    raw = request.SerializeToString()

    def wire() -> bytes:
        return engine.router.route_wire(raw, now=engine.gate.now()).decision

    def engine_path() -> bytes:
        return engine.decide(convert.chat_input(pb.RouteRequest.FromString(raw))).encode()

    def parse_only() -> object:
        return pb.RouteRequest.FromString(raw)

    # The same answer both ways, or the comparison means nothing.
    assert wire() == engine_path()
    benchmark(wire)
    wire_ns = per_op_ns(wire, ITERATIONS)
    engine_ns = per_op_ns(engine_path, ITERATIONS)
    parse_ns = per_op_ns(parse_only, ITERATIONS)
    print(
        f"\n[Route decision] route_wire {wire_ns / 1000:.2f} us   "
        f"protobuf parse alone {parse_ns / 1000:.2f} us ({wire_ns / parse_ns:.1f}x)   "
        f"engine path {engine_ns / 1000:.2f} us ({engine_ns / wire_ns:.1f}x slower)"
    )
