"""A/B splits without a server: the config's checks, where keys fall, the split ratios over many
users, stickiness, and what a request that names its own policy keeps."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import pytest

from switchpoint.config import Config, parse_config
from switchpoint.errors import ConfigError
from switchpoint.providers.base import ChatMessage
from switchpoint.quota.labels import Labels
from switchpoint.request import ChatInput, RoutingOptions
from switchpoint.splits.assign import Splits, arm_point
from switchpoint.splits.book import SplitBook
from switchpoint.v1 import router_pb2 as pb
from tests.sidecar_harness import routing_config

USERS = 10_000


def _config(splits: dict[str, Any], **routing: Any) -> Config:
    base = routing_config()
    base["routing"] = {**base["routing"], **routing, "splits": splits}
    return parse_config(base)


def _pricing(weights: tuple[float, float] = (70, 30), **split: Any) -> dict[str, Any]:
    return {
        "pricing": {
            "sticky": "user",
            "arms": [
                {"name": "a", "weight": weights[0], "strategy": "cost-first"},
                {"name": "b", "weight": weights[1], "models": ["strong", "fast"]},
            ],
            **split,
        }
    }


def _splits(config: Config) -> Splits:
    return Splits(config.routing.splits, Labels.of(config))


def _request(**routing: Any) -> ChatInput:
    return ChatInput(messages=(ChatMessage("user", "hi"),), routing=RoutingOptions(**routing))


def _arm(splits: Splits, **routing: Any) -> str:
    _, assignment = splits.assign(_request(**routing))
    assert assignment is not None
    return assignment.arm


def _refused(splits: dict[str, Any], **routing: Any) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        _config(splits, **routing)
    return caught.value.errors


def test_a_key_falls_at_the_same_point_in_every_process() -> None:
    # Pinned: Python's own hash() of a string changes with every process (PYTHONHASHSEED), so
    # replicas and restarts would disagree; the keyed blake2b does not.
    assert arm_point("pricing", "user-1") == 0.5242329504894256
    assert arm_point("pricing", "user-2") == 0.1789907465989716
    # The split's name is part of the key: two splits place the same user independently.
    assert arm_point("other", "user-1") == 0.7982120140220083


def test_70_30_over_10000_users_is_within_four_standard_deviations() -> None:
    splits = _splits(_config(_pricing()))
    counts = Counter(_arm(splits, user=f"user-{i}") for i in range(USERS))
    sigma = math.sqrt(USERS * 0.7 * 0.3)  # about 46 users
    assert abs(counts["a"] - 0.7 * USERS) < 4 * sigma, counts
    assert counts["a"] + counts["b"] == USERS


def test_three_arms_and_a_drained_arm_keep_their_shares() -> None:
    arms = [
        {"name": "half", "weight": 5},
        {"name": "drained", "weight": 0, "strategy": "quality-first"},
        {"name": "third", "weight": 3, "strategy": "cost-first"},
        {"name": "fifth", "weight": 2, "strategy": "latency-first"},
    ]
    splits = _splits(_config({"mix": {"sticky": "tenant", "arms": arms}}))
    counts = Counter(_arm(splits, tenant=f"t{i}") for i in range(USERS))
    assert counts["drained"] == 0
    for arm, share in (("half", 0.5), ("third", 0.3), ("fifth", 0.2)):
        sigma = math.sqrt(USERS * share * (1 - share))
        assert abs(counts[arm] - share * USERS) < 4 * sigma, counts


def test_a_user_keeps_its_arm_across_requests_and_rebuilds() -> None:
    config = _config(_pricing())
    first = {f"u{i}": _arm(_splits(config), user=f"u{i}") for i in range(500)}
    again = _splits(parse_config(config.model_dump(mode="json")))  # a reload of the same file
    assert {user: _arm(again, user=user) for user in first} == first
    assert set(first.values()) == {"a", "b"}


def test_a_weight_change_moves_users_only_towards_the_grown_arm() -> None:
    before = _splits(_config(_pricing((70, 30))))
    after = _splits(_config(_pricing((60, 40))))
    moves = Counter((_arm(before, user=f"u{i}"), _arm(after, user=f"u{i}")) for i in range(2000))
    assert moves[("b", "a")] == 0
    assert moves[("a", "b")] > 0


def test_the_arm_sets_what_the_request_left_unset() -> None:
    splits = _splits(_config(_pricing()))
    user_a = next(f"u{i}" for i in range(100) if _arm(splits, user=f"u{i}") == "a")
    user_b = next(f"u{i}" for i in range(100) if _arm(splits, user=f"u{i}") == "b")
    routed, assignment = splits.assign(_request(user=user_a, tenant="acme"))
    assert routed.routing.strategy == "cost-first"
    assert routed.routing.tenant == "acme"
    assert assignment is not None
    assert assignment.reason == "split 'pricing' arm a (70%)"
    routed, assignment = splits.assign(_request(user=user_b))
    assert tuple(routed.routing.models) == ("strong", "fast")
    assert assignment is not None
    assert assignment.reason == "split 'pricing' arm b (30%)"


@pytest.mark.parametrize(
    ("routing", "why"),
    [
        ({"models": ["cheap"]}, "the request names its models"),
        ({"strategy": "balanced"}, "the request names its strategy"),
        ({"weights": (1.0, 0.0, 0.0)}, "the request names its weights"),
        ({"tenant": "acme"}, "the request names no user"),
    ],
)
def test_a_request_that_names_its_policy_keeps_it(routing: dict[str, Any], why: str) -> None:
    splits = _splits(_config(_pricing()))
    request = _request(**({"user": "u1"} if "tenant" not in routing else {}), **routing)
    routed, assignment = splits.assign(request)
    assert routed == request
    assert assignment is not None
    assert not assignment.applied
    assert assignment.reason == f"split 'pricing' did not apply: {why}"


def test_a_split_takes_only_the_stages_it_applies_to() -> None:
    splits = _splits(
        _config(
            {
                "arch": {
                    "sticky": "tenant",
                    "applies_to": {"stages": ["architecture"]},
                    "arms": [{"name": "x", "weight": 1, "models": ["strong"]}],
                }
            }
        )
    )
    assert splits.assign(_request(tenant="acme"))[1] is None
    assert _arm(splits, tenant="acme", stage="architecture") == "x"


def test_the_book_counts_applied_requests_per_arm_and_tenant() -> None:
    splits = _splits(_config(_pricing()))
    book = SplitBook()
    user_a = next(f"u{i}" for i in range(100) if _arm(splits, user=f"u{i}") == "a")
    for user, ok in ((user_a, True), (user_a, False)):
        _, assignment = splits.assign(_request(user=user))
        assert assignment is not None
        book.record(assignment, ok=ok, input_tokens=3, output_tokens=4, cost_usd=0.5)
    _, skipped = splits.assign(_request(user=user_a, strategy="balanced"))
    assert skipped is not None
    book.record(skipped, ok=True)
    counted = book.total("pricing", "a")
    assert (counted.requests, counted.errors, counted.input_tokens, counted.cost_usd) == (
        2,
        1,
        6,
        1.0,
    )
    assert book.total("pricing", "b").requests == 0


def test_the_reason_appended_to_decision_bytes_is_the_last_reason() -> None:
    splits = _splits(_config(_pricing()))
    _, assignment = splits.assign(_request(user="u1"))
    assert assignment is not None
    original = pb.RouteDecision(model="cheap", reasons=["first"], complexity=0.5)
    merged = pb.RouteDecision.FromString(assignment.annotate(original.SerializeToString()))
    assert list(merged.reasons) == ["first", assignment.reason]
    assert (merged.model, merged.complexity) == ("cheap", 0.5)


def test_bad_splits_are_refused_with_their_paths() -> None:
    errors = _refused(
        {
            "pricing": {
                "sticky": "user",
                "arms": [
                    {"name": "a", "weight": 1, "strategy": "cheapest"},
                    {"name": "a", "weight": 1, "models": ["gpt-9"]},
                ],
            },
            "also": {"sticky": "tenant", "arms": [{"name": "x", "weight": 1}]},
            "staged": {
                "sticky": "tenant",
                "applies_to": {"stages": ["nowhere"]},
                "arms": [{"name": "x", "weight": 1}],
            },
        }
    )
    assert errors == [
        "routing.splits.pricing.arms[0].strategy: unknown strategy 'cheapest'",
        "routing.splits.pricing.arms[1].name: duplicate arm name 'a'",
        "routing.splits.pricing.arms[1].models[0]: unknown model 'gpt-9'",
        "routing.splits.also.applies_to: takes requests split 'pricing' takes already",
        "routing.splits.staged.applies_to.stages[0]: unknown stage 'nowhere'",
        "routing.splits.staged.applies_to: takes requests split 'pricing' takes already",
    ]


def test_an_arm_outside_its_stages_models_and_shape_errors_are_refused() -> None:
    errors = _refused(
        {
            "arch": {
                "sticky": "tenant",
                "applies_to": {"stages": ["architecture"]},
                "arms": [{"name": "x", "weight": 1, "models": ["cheap"]}],
            }
        }
    )
    assert errors == [
        "routing.splits.arch.arms[0].models[0]: 'cheap' is not a model of stage 'architecture'"
    ]
    # Without applies_to the split takes the stage's requests too.
    everywhere = {"sticky": "user", "arms": [{"name": "x", "weight": 1, "models": ["cheap"]}]}
    assert _refused({"all": everywhere}) == [
        "routing.splits.all.arms[0].models[0]: 'cheap' is not a model of stage 'architecture'"
    ]
    assert _refused({"bad name": {"sticky": "tenant", "arms": [{"name": "x", "weight": 1}]}}) == [
        "routing.splits.bad name: a split's name is 1-64 letters, digits, '_', '.' or '-'"
    ]
    zero = {"sticky": "user", "arms": [{"name": "x", "weight": 0}]}
    assert _refused({"zero": zero}) == [
        "routing.splits.zero: the arms' weights must not all be zero"
    ]
    assert _refused({"s": {"sticky": "session", "arms": [{"name": "x", "weight": 1}], "x": 1}}) == [
        "routing.splits.s.sticky: Input should be 'tenant' or 'user'",
        "routing.splits.s.x: unknown key",
    ]
