"""The token gate's rule instances, capped in number and freed when idle.

A rule whose `match` has "*" gets an instance per distinct value (`tenant: "*"`: one per tenant),
created in the Rust gate when a request first needs it. Tenants are named by callers, so without a
bound a loop over random names would grow the gate (and, with shared state, the Redis traffic of
every sync round) for ever. `ScopeTable` keeps every instance of one Rust gate, across config
reloads, and frees an instance only when freeing loses nothing:

- no reservation names it (the Rust gate refuses to free one that is held);
- a rate limit's buckets are full again (a minute after its last call at most), so a new instance
  for the same scope would start where this one stands;
- a budget without shared state has no spend and nothing reserved in its current window: its spend
  lives only here, and an instance made afresh would start from zero within the same window. Such
  an instance is kept until its window ends (a `total` budget with spend: for the process's life),
  and counts against the cap meanwhile;
- a shared budget or rate limit keeps its spend in Redis: its unreported spend is handed to the
  lease manager to report, and a new instance leases against the spend Redis already holds.

An instance unused for `idle_expiry_s` is freed by `expire_idle` (the sidecar runs it
periodically). When `max_scopes` instances are alive and a request needs a new one, `make_room`
frees the least recently used instances that can be freed (a tenth of the cap at once, so a flood
of new scopes does not rescan for each); if none can, the request is refused with
RESOURCE_EXHAUSTED rather than forgetting spend, and new scopes are refused without a rescan for
`RESCAN_AFTER_S`.

The gates that use an instance (`owners`, `TokenGate`s) cache its id; freeing asks each to forget
it first, so no stale id is used after the Rust gate hands the slot to another rule.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from switchpoint._native import Gate
from switchpoint.errors import QuotaExceededError
from switchpoint.quota.instances_config import StateConfig
from switchpoint.quota.shared import SharedQuota

Kind = Literal["limit", "budget"]

# After a full table was found with nothing to free, new scopes are refused this long without
# scanning it again: a flood of new tenants costs a dict lookup each, not a scan of the table.
RESCAN_AFTER_S = 1.0


class InstanceOwner(Protocol):
    def forget_instance(self, instance: Instance) -> None:
        """Drop every reference to `instance`'s gate id: it is about to be freed."""


@dataclass(eq=False, slots=True)
class Instance:
    kind: Kind
    gate_id: int
    name: str
    # The gates whose caches hold its id: its creator, and after a reload the new config's gate
    # too (the old one may still serve calls in flight).
    owners: list[InstanceOwner]
    created_s: float
    # A rate limit's per-minute limits, to tell when its buckets are full again.
    rpm: float | None = None
    tpm: float | None = None


class ScopeTable:
    """Every rule instance of one Rust gate; shared by the `TokenGate`s of successive configs."""

    def __init__(
        self,
        gate: Gate,
        config: StateConfig,
        *,
        shared: SharedQuota | None,
        clock: Callable[[], float],
    ) -> None:
        self._gate = gate
        self._config = config
        self._shared = shared
        self._clock = clock
        self._instances: dict[tuple[Kind, int], Instance] = {}
        self._full_until = -math.inf
        # Instances made for the answer being computed (`TokenGate.ids_for`): never freed to make
        # room for the next one of the same answer, which would hand back a freed id.
        self._pinned: set[tuple[Kind, int]] = set()
        # Moves on whenever instances are freed: a caller that awaited may hold freed ids.
        self.epoch = 0

    def configure(self, config: StateConfig) -> None:
        """A reloaded config's cap and expiry, from the next decision on."""
        self._config = config
        self._full_until = -math.inf

    @property
    def max_scopes(self) -> int:
        return self._config.max_scopes

    def __len__(self) -> int:
        return len(self._instances)

    def alive(self, kind: Kind, gate_id: int) -> bool:
        return (kind, gate_id) in self._instances

    def get(self, kind: Kind, gate_id: int) -> Instance | None:
        return self._instances.get((kind, gate_id))

    def add(self, instance: Instance) -> None:
        """A new instance, pinned until `unpin`."""
        key = (instance.kind, instance.gate_id)
        self._instances[key] = instance
        self._pinned.add(key)

    def unpin(self) -> None:
        """The answer that made the pinned instances is complete (or failed)."""
        self._pinned.clear()

    def make_room(self) -> None:
        """Before an instance is created: frees idle ones if the table is full, or raises
        `QuotaExceededError` ("scopes") when none can be freed."""
        cap = self._config.max_scopes
        if len(self._instances) < cap:
            return
        now = self._clock()
        if now >= self._full_until:
            target = cap - max(1, cap // 10)
            idle = sorted(self._idle(now), key=lambda pair: pair[0])
            for _, instance in idle:
                if len(self._instances) <= target:
                    break
                self._free(instance)
            if len(self._instances) < cap:
                return
            self._full_until = now + RESCAN_AFTER_S
        raise QuotaExceededError(
            "scopes",
            "server.state.max_scopes",
            max(self._full_until - now, 0.0),
            detail=f"{len(self._instances)} rule instances are live (max_scopes={cap}) and "
            "none can be freed yet",
        )

    def expire_idle(self) -> int:
        """Frees every instance unused for `idle_expiry_s` that can be freed; returns how many."""
        now = self._clock()
        cutoff = now - self._config.idle_expiry_s
        expired = [instance for since, instance in self._idle(now) if since <= cutoff]
        for instance in expired:
            self._free(instance)
        return len(expired)

    def _idle(self, now: float) -> list[tuple[float, Instance]]:
        """(idle since, instance) for every instance that could be freed now."""
        out = []
        for key, instance in list(self._instances.items()):
            if key in self._pinned:
                continue
            since = self._idle_since(instance)
            if since is not None and self._at_rest(instance, now):
                out.append((since, instance))
        return out

    def _idle_since(self, instance: Instance) -> float | None:
        if instance.kind == "limit":
            activity = self._gate.limit_activity(instance.gate_id)
        else:
            activity = self._gate.budget_activity(instance.gate_id)
        if activity.holds:
            return None
        last_used = activity.last_used_s
        return instance.created_s if last_used is None else max(last_used, instance.created_s)

    def _at_rest(self, instance: Instance, now: float) -> bool:
        """Whether freeing `instance` now would lose nothing (see the module docstring)."""
        shared = self._shared
        if instance.kind == "limit":
            if shared is not None and not shared.can_forget("limit", instance.gate_id):
                return False
            state = self._gate.limit_state(instance.gate_id, now)
            requests, tokens = state.requests_available, state.tokens_available
            return (
                state.in_flight == 0
                and (instance.rpm is None or (requests is not None and requests >= instance.rpm))
                and (instance.tpm is None or (tokens is not None and tokens >= instance.tpm))
            )
        if shared is not None and shared.shares_budget(instance.gate_id):
            return shared.can_forget("budget", instance.gate_id)
        budget = self._gate.budget_state(instance.gate_id, now)
        return budget.spent_usd == 0.0 and budget.reserved_usd == 0.0

    def _free(self, instance: Instance) -> None:
        for owner in instance.owners:
            owner.forget_instance(instance)
        del self._instances[(instance.kind, instance.gate_id)]
        self.epoch += 1
        if self._shared is not None:
            self._shared.forget(instance.kind, instance.gate_id)
        if instance.kind == "limit":
            self._gate.remove_rate_limit(instance.gate_id)
        else:
            self._gate.remove_budget(instance.gate_id)
