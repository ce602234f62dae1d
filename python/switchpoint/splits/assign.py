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
from switchpoint.request import ChatInput
from switchpoint.splits.config import ArmConfig, SplitConfig
from switchpoint.v1 import router_pb2 as pb

_POINTS = float(1 << 64)
# Why a split leaves a request alone, besides a missing key.
_CONFLICTS = (
    "the request names its models",
    "the request names its strategy",
    "the request names its weights",
)


def _reason_wire(reason: str) -> bytes:
    """A RouteDecision holding only `reason`: appended to a decision's bytes, protobuf merges
    the two, adding the reason after the decision's own."""
    return pb.RouteDecision(reasons=[reason]).SerializeToString()


def arm_point(split: str, key: str) -> float:
    """Where `key` falls in [0, 1) for `split`: the same in every process and on every host."""
    return _point(blake2b(digest_size=8, key=split.encode()), key)


def _point(keyed: blake2b, key: str) -> float:
    hasher = keyed.copy()  # the split's name already absorbed: cheaper than keying anew
    hasher.update(key.encode())
    return int.from_bytes(hasher.digest(), "big") / _POINTS


class Assignment(NamedTuple):
    """A request's place in a split: `arm` is "" when the split did not apply (`reason` says
    why)."""

    split: str
    arm: str
    reason: str
    # The tenant as GetStats and the usage stats label it (switchpoint.quota.labels).
    tenant: str
    # `reason` as RouteDecision bytes (`_reason_wire`).
    reason_wire: bytes

    @property
    def applied(self) -> bool:
        return bool(self.arm)

    def annotate(self, decision: bytes) -> bytes:
        """`decision` (RouteDecision bytes) with the reason after its own: nothing is decoded."""
        return decision + self.reason_wire

    def annotate_message(self, decision: pb.RouteDecision) -> None:
        decision.reasons.append(self.reason)


class _Arm(NamedTuple):
    bound: float  # the arm takes the points below this and above the previous arm's
    config: ArmConfig
    reason: str
    reason_wire: bytes


class _Split:
    """One configured split, ready to place keys: its arms' cumulative bounds and reasons (made
    once: they are the same for every request), and which request options its arms set."""

    def __init__(self, name: str, config: SplitConfig) -> None:
        self.name = name
        self.sticky = config.sticky
        self._keyed = blake2b(digest_size=8, key=name.encode())
        total = sum(arm.weight for arm in config.arms)
        self.shares = tuple(arm.weight / total for arm in config.arms)
        self.arm_names = tuple(arm.name for arm in config.arms)
        arms, running = [], 0.0
        for arm, share in zip(config.arms, self.shares, strict=True):
            running += share
            if share > 0:  # a drained arm takes no point, not even on a rounding edge
                reason = f"split '{name}' arm {arm.name} ({share:.0%})"
                arms.append(_Arm(running, arm, reason, _reason_wire(reason)))
        self._arms = arms
        self.sets_models = any(arm.models for arm in config.arms)
        self.sets_strategy = any(arm.strategy for arm in config.arms)
        whys = (*_CONFLICTS, f"the request names no {self.sticky}")
        # The reason (and its bytes) of a request the split leaves alone, by why.
        self.not_applied: dict[str, tuple[str, bytes]] = {}
        for why in whys:
            reason = f"split '{name}' did not apply: {why}"
            self.not_applied[why] = (reason, _reason_wire(reason))

    def arm_of(self, key: str) -> _Arm:
        point = _point(self._keyed, key)
        for arm in self._arms:
            if point < arm.bound:
                return arm
        # Rounding can leave the last bound a hair under 1: the last arm takes the rest.
        return self._arms[-1]

    def conflict(self, models: bool, strategy: bool, weights: bool) -> str:
        """What the request names (`models`, a `strategy`, `weights`) that an arm would set;
        "" when nothing."""
        if self.sets_models and models:
            return _CONFLICTS[0]
        if self.sets_strategy and strategy:
            return _CONFLICTS[1]
        if self.sets_strategy and weights:
            return _CONFLICTS[2]
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
            (split.name, arm, share)
            for split in self._all
            for arm, share in zip(split.arm_names, split.shares, strict=True)
        ]

    def assign(self, request: ChatInput) -> tuple[ChatInput, Assignment | None]:
        """The request as its arm routes it, and its place in the split; the request unchanged
        and None when no split takes its stage."""
        if not self.active:
            return request, None
        routing = request.routing
        named = (bool(routing.models), bool(routing.strategy), routing.weights is not None)
        placed = self._place(routing.stage, routing.tenant, routing.user, named)
        if placed is None:
            return request, None
        arm, assignment = placed
        if arm is None:
            return request, assignment
        routing = routing._replace(
            models=tuple(arm.models) if arm.models else routing.models,
            strategy=arm.strategy or routing.strategy,
        )
        return request._replace(routing=routing), assignment

    def assign_message(self, request: pb.RouteRequest) -> Assignment | None:
        """`assign` for a decoded RouteRequest, changed in place: Route then answers it from its
        bytes, as without splits."""
        routing = request.routing
        named = (bool(routing.models), bool(routing.strategy), routing.HasField("weights"))
        placed = self._place(routing.stage, routing.tenant, routing.user, named)
        if placed is None:
            return None
        arm, assignment = placed
        if arm is not None and arm.models:
            routing.models[:] = arm.models
        if arm is not None and arm.strategy:
            routing.strategy = arm.strategy
        return assignment

    def _place(
        self, stage: str, tenant: str, user: str, named: tuple[bool, bool, bool]
    ) -> tuple[ArmConfig | None, Assignment] | None:
        """The arm (None when the split does not apply) and the assignment of a request of
        `stage`, `tenant` and `user` that names what `named` says (models, strategy, weights);
        None when no split takes the stage."""
        split = self._by_stage.get(stage) or self._by_stage.get("*")
        if split is None:
            return None
        label = self.labels.tenant(tenant)
        key = tenant if split.sticky == "tenant" else user
        why = split.conflict(*named) if key else f"the request names no {split.sticky}"
        if why:
            reason, wire = split.not_applied[why]
            return None, Assignment(split.name, "", reason, label, wire)
        arm = split.arm_of(key)
        return arm.config, Assignment(
            split.name, arm.config.name, arm.reason, label, arm.reason_wire
        )
