"""The requests a Feedback call may still name: bounded in number and in age.

Each holds what an outcome needs without the prompt's text: its embedding and length, its tenant
(tenants score only their own requests), the model that served it and the models already scored.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from switchpoint.routing.predictor.service import Prompt


@dataclass(slots=True)
class Pending:
    tenant: str
    prompt: Prompt
    model: str
    expires_s: float
    scored: set[str] = field(default_factory=set)


class RecentRequests:
    """Oldest first; a request past `window_s`, or pushed out by `capacity` newer ones, is gone."""

    def __init__(self, *, capacity: int, window_s: float) -> None:
        self.capacity = capacity
        self.window_s = window_s
        self._pending: OrderedDict[str, Pending] = OrderedDict()

    def __len__(self) -> int:
        return len(self._pending)

    def remember(
        self, request_id: str, tenant: str, prompt: Prompt, model: str, now_s: float
    ) -> None:
        self._expire(now_s)
        self._pending[request_id] = Pending(tenant, prompt, model, now_s + self.window_s)
        self._pending.move_to_end(request_id)
        while len(self._pending) > self.capacity:
            self._pending.popitem(last=False)

    def served(self, request_id: str, model: str) -> None:
        """The model that answered, when it was not the one routing chose (a fallback)."""
        pending = self._pending.get(request_id)
        if pending is not None:
            pending.model = model

    def find(self, request_id: str, tenant: str, now_s: float) -> Pending | None:
        """The request, if it is still held and is `tenant`'s: another tenant's request is as
        unknown as an expired one, so ids reveal nothing across tenants."""
        self._expire(now_s)
        pending = self._pending.get(request_id)
        return pending if pending is not None and pending.tenant == tenant else None

    def _expire(self, now_s: float) -> None:
        while self._pending:
            oldest = next(iter(self._pending.values()))
            if oldest.expires_s > now_s:
                return
            self._pending.popitem(last=False)
