"""Which arm of which split a request belongs to, and the request as that arm routes it.

The arm is a function of the split's name and the request's tenant or user alone: a keyed hash
(blake2b, not Python's per-process `hash`) placed on the arms' cumulative weights. Every replica
and every restart with the same config puts a key in the same arm, and changing one weight moves
only the keys near the boundaries it shifts.

An arm sets only what a request leaves unset. A request that names anything an arm of its split
would set (models, a strategy, weights) is left out of the split altogether rather than served
half by the arm: otherwise one arm would see only the requests that named nothing, and the arms'
figures would not compare like with like.
"""

from __future__ import annotations

from collections.abc import Mapping
from hashlib import blake2b
from typing import NamedTuple

from switchpoint.quota.labels import Labels
from switchpoint.request import ChatInput, RoutingOptions
from switchpoint.splits.config import ArmConfig, SplitConfig
from switchpoint.v1 import router_pb2 as pb

_POINTS = float(1 << 64)


def arm_point(split: str, key: str) -> float:
    """Where `key` falls in [0, 1) for `split`: the same in every process and on every host."""
    digest = blake2b(key.encode(), digest_size=8, key=split.encode()).digest()
    return int.from_bytes(digest, "big") / _POINTS


class Assignment(NamedTuple):
    """A request's place in a split: `arm` is "" when the split did not apply (`reason` says
    why)."""

    split: str
    arm: str
    reason: str
    # The tenant as GetStats and the usage stats label it (switchpoint.quota.labels).
    tenant: str

    @property
    def applied(self) -> bool:
        return bool(self.arm)

    def annotate(self, decision: bytes) -> bytes:
        """`decision` (RouteDecision bytes) with the reason appended to its reasons: protobuf
        merges concatenated messages, appending repeated fields, so nothing is decoded."""
        return decision + pb.RouteDecision(reasons=[self.reason]).SerializeToString()

    def annotate_message(self, decision: pb.RouteDecision) -> None:
        decision.reasons.append(self.reason)


class _Split:
    """One configured split, ready to place keys: the arms' cumulative weights, and which
    request options its arms set."""

    def __init__(self, name: str, config: SplitConfig) -> None:
        self.name = name
        self.sticky = config.sticky
        total = sum(arm.weight for arm in config.arms)
        self.arms = config.arms
        self.shares = tuple(arm.weight / total for arm in config.arms)
        bounds, running = [], 0.0
        for share in self.shares:
            running += share
            bounds.append(running)
        self._bounds = bounds
        self.sets_models = any(arm.models for arm in config.arms)
        self.sets_strategy = any(arm.strategy for arm in config.arms)

    def arm_of(self, key: str) -> tuple[ArmConfig, float]:
        point = arm_point(self.name, key)
        for arm, share, bound in zip(self.arms, self.shares, self._bounds, strict=True):
            if point < bound and share > 0:
                return arm, share
        # Rounding can leave the last bound a hair under 1: the last arm with weight takes it.
        index = max(i for i, share in enumerate(self.shares) if share > 0)
        return self.arms[index], self.shares[index]

    def conflict(self, routing: RoutingOptions) -> str:
        """What the request names that an arm would set; "" when nothing."""
        if self.sets_models and routing.models:
            return "the request names its models"
        if self.sets_strategy and routing.strategy:
            return "the request names its strategy"
        if self.sets_strategy and routing.weights is not None:
            return "the request names its weights"
        return ""


class Splits:
    """The splits of one config load; `assign` is the one place a request meets them."""

    def __init__(self, splits: Mapping[str, SplitConfig], labels: Labels) -> None:
        self.labels = labels
        self._all = [_Split(name, config) for name, config in splits.items()]
        # A plain attribute: Route reads it on every call, and a `__bool__` costs ~80 ns more.
        self.active = bool(self._all)
        # Config checks leave each stage (and "*", every request) to at most one split.
        self._by_stage: dict[str, _Split] = {}
        for split, config in zip(self._all, splits.values(), strict=True):
            for stage in config.applies_to.stages or ("*",):
                self._by_stage[stage] = split

    def arms(self) -> list[tuple[str, str, float]]:
        """(split, arm, share) of every arm, in config order."""
        return [
            (split.name, arm.name, share)
            for split in self._all
            for arm, share in zip(split.arms, split.shares, strict=True)
        ]

    def assign(self, request: ChatInput) -> tuple[ChatInput, Assignment | None]:
        """The request as its arm routes it, and its place in the split; the request unchanged
        and None when no split takes its stage."""
        if not self.active:
            return request, None
        routing = request.routing
        split = self._by_stage.get(routing.stage) or self._by_stage.get("*")
        if split is None:
            return request, None
        tenant = self.labels.tenant(routing.tenant)
        key = routing.tenant if split.sticky == "tenant" else routing.user
        if not key:
            reason = f"split '{split.name}' did not apply: the request names no {split.sticky}"
            return request, Assignment(split.name, "", reason, tenant)
        conflict = split.conflict(routing)
        if conflict:
            reason = f"split '{split.name}' did not apply: {conflict}"
            return request, Assignment(split.name, "", reason, tenant)
        arm, share = split.arm_of(key)
        routing = routing._replace(
            models=tuple(arm.models) if arm.models else routing.models,
            strategy=arm.strategy or routing.strategy,
        )
        reason = f"split '{split.name}' arm {arm.name} ({share:.0%})"
        return request._replace(routing=routing), Assignment(split.name, arm.name, reason, tenant)
