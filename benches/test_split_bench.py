"""What an A/B split adds to a Route answered from its bytes, in process: the request decoded,
placed in its arm, re-encoded, the decision's bytes given the reason, the arm counted; against
`Router.route_wire` itself, in the same run. Without splits Route's bytes path only reads
`engine.splits.active`.

Nothing is asserted about time; the figures are printed. `make bench` runs it.
"""

from __future__ import annotations

from typing import Any

from switchpoint.bench.figures import per_op_ns
from switchpoint.config import parse_config
from switchpoint.engine.building import build_engine
from switchpoint.splits.book import SplitBook
from switchpoint.v1 import router_pb2 as pb
from tests.sidecar_harness import routing_config, user

Benchmark = Any
ITERATIONS = 20_000


def test_split_on_the_route_bytes_path(benchmark: Benchmark) -> None:
    config = routing_config()
    config["routing"]["splits"] = {
        "pricing": {
            "sticky": "user",
            "arms": [
                {"name": "a", "weight": 70, "strategy": "cost-first"},
                {"name": "b", "weight": 30, "models": ["strong", "fast"]},
            ],
        }
    }
    engine = build_engine(parse_config(config), environ={}).engine
    raw = pb.RouteRequest(
        messages=user("hello there, route me please"),
        routing=pb.RoutingOptions(tenant="acme", user="user-7"),
    ).SerializeToString()
    book = SplitBook()

    def plain() -> bytes:
        return engine.router.route_wire(raw, now=engine.gate.now()).decision

    def split() -> bytes:
        message = pb.RouteRequest.FromString(raw)
        placed = engine.splits.assign_message(message)
        assert placed is not None
        wire = message.SerializeToString() if placed.applied else raw
        answer = engine.router.route_wire(wire, now=engine.gate.now()).decision
        book.record(placed, ok=True)
        return placed.annotate(answer)

    assert "split 'pricing' arm" in pb.RouteDecision.FromString(split()).reasons[-1]
    benchmark(split)
    plain_ns = per_op_ns(plain, ITERATIONS)
    split_ns = per_op_ns(split, ITERATIONS)
    print(
        f"\n[A/B split] route_wire {plain_ns / 1000:.2f} us   with a split "
        f"{split_ns / 1000:.2f} us (+{(split_ns - plain_ns) / 1000:.2f} us)"
    )
