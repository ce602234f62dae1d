"""What a rule instance is for and one attempt's hold on the instances: the request's scope
(`RequestScope`; which instances it selects is the core's `RuleBook`'s to decide), a budget
instance as stats see it, and `Reservation`, which makes the release unconditional (errors,
timeouts, cancellation)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from switchpoint._native import Gate
from switchpoint.config import BudgetConfig, ScopeKey

Scope = tuple[tuple[ScopeKey, str], ...]


class RequestScope(NamedTuple):
    """The request attributes rules can match on, besides the model and provider."""

    tenant: str
    stage: str


@dataclass(frozen=True, slots=True)
class BudgetInstance:
    rule: BudgetConfig
    scope: Scope
    gate_id: int


class Reservation:
    """One attempt's hold on the gate. Settle it with real usage; leaving the `with` block
    releases whatever was not settled, so errors, timeouts and cancellation never leak quota."""

    __slots__ = ("_clock", "_gate", "_id")

    def __init__(
        self, gate: Gate | None, reservation_id: int | None, clock: Callable[[], float]
    ) -> None:
        self._gate = gate
        self._id = reservation_id
        self._clock = clock

    def settle(self, tokens: int, cost_usd: float) -> None:
        """Charge the actual usage. A settle the gate refuses (a cost that is not a finite
        non-negative number) raises after releasing the hold, so no slot or budget leaks."""
        if self._gate is not None and self._id is not None:
            try:
                self._gate.settle(self._id, tokens, cost_usd, self._clock())
            except BaseException:
                self.release()
                raise
            self._id = None

    def release(self) -> None:
        if self._gate is not None and self._id is not None:
            reservation, self._id = self._id, None
            self._gate.release(reservation, self._clock())

    def __enter__(self) -> Reservation:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()
