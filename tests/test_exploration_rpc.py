"""Exploration through the running sidecar: at the configured rate a request is served by another
eligible model within the cost bound, the probability of every choice is in the decision, its
reasons and the request line, and it applies only where configured."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import pytest

from switchpoint.config import parse_config
from switchpoint.errors import ConfigError
from switchpoint.v1 import router_pb2 as pb
from tests.sidecar_harness import running_sidecar, user
from tests.support.log_records import recorded

RATE = 0.3
CALLS = 400


def exploring_config(**exploration: Any) -> dict[str, Any]:
    """`cheap` scores best under cost-first; `mid` is within twice its cost, `dear` far above."""
    model = {
        "provider": "oai",
        "context_window": 100000,
        "quality": 0.5,
        "latency_prior": {"ttft_ms": 100, "tpot_ms": 10},
    }
    return {
        "providers": {"oai": {"kind": "openai", "base_url": "http://127.0.0.1:9/v1"}},
        "models": [
            {**model, "name": n, "price": {"input_per_mtok": p, "output_per_mtok": p}}
            for n, p in (("cheap", 1.0), ("mid", 1.5), ("dear", 100.0))
        ],
        "routing": {
            "default_strategy": "cost-first",
            "auto": {"enabled": True, "hard_complexity": 1.0, "easy_complexity": 0.0},
            "exploration": {"rate": RATE, "max_cost_ratio": 2.0, **exploration},
        },
    }


def route(strategy: str = "cost-first") -> pb.RouteRequest:
    return pb.RouteRequest(messages=user("say hello"), routing=pb.RoutingOptions(strategy=strategy))


async def test_exploration_chooses_at_its_rate_and_says_with_what_probability() -> None:
    with recorded("switchpoint.request") as lines:
        async with running_sidecar(exploring_config()) as running:
            decisions = [await running.stub.Route(route()) for _ in range(CALLS)]
    chosen = Counter(d.model for d in decisions)
    # Only `mid` is within the cost bound: it is the only model explored, at the rate.
    assert set(chosen) == {"cheap", "mid"}
    spread = 4 * math.sqrt(CALLS * RATE * (1 - RATE))
    assert abs(chosen["mid"] - CALLS * RATE) < spread
    for decision in decisions:
        if decision.model == "mid":
            assert decision.choice_probability == pytest.approx(RATE)
            assert any(
                r.startswith("explored: chose mid with probability") for r in decision.reasons
            )
        else:
            assert decision.choice_probability == pytest.approx(1 - RATE)
            assert any(r.startswith("exploration: the best-scored cheap") for r in decision.reasons)
    # Each Route's request line carries the probability of the choice it made, for offline
    # evaluation of other policies.
    logged = {vars(r)["request_id"]: vars(r) for r in lines.records}
    for decision in decisions:
        line = logged[decision.request_id]
        assert line["model"] == decision.model
        assert line["choice_probability"] == pytest.approx(decision.choice_probability)


async def test_exploration_applies_only_where_configured() -> None:
    config = exploring_config(strategies=["cost-first"])
    with recorded("switchpoint.request") as lines:
        async with running_sidecar(config) as running:
            elsewhere = [await running.stub.Route(route("balanced")) for _ in range(50)]
            named = await running.stub.Route(
                pb.RouteRequest(
                    messages=user("say hello"),
                    routing=pb.RoutingOptions(models=["cheap", "mid"], strategy="cost-first"),
                )
            )
    for decision in [*elsewhere, named]:
        assert decision.choice_probability == 1.0
        assert not any("explor" in reason for reason in decision.reasons)
    assert "choice_probability" not in vars(lines.records[0])


def test_exploration_config_names_known_strategies_and_stages() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(exploring_config(strategies=["nope"], stages=["ui"]))
    assert "routing.exploration.strategies[0]: unknown strategy 'nope'" in caught.value.errors
    assert "routing.exploration.stages[0]: unknown stage 'ui'" in caught.value.errors
