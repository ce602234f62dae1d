"""The `server.state` config section: how much per-scope state the sidecar keeps.

Callers name any tenant they like, and a rule matching `tenant: "*"` gives each distinct value
its own rule instance; these two numbers keep that state bounded (see `instances`).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field


class StateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # Most rule instances (rate limits and budgets, one per scope a rule selects) alive at once.
    # Past it, idle instances that hold nothing worth keeping are freed to make room; if none can
    # be, a request that needs a new scope is refused (RESOURCE_EXHAUSTED) until one can.
    max_scopes: Annotated[int, Field(ge=1)] = 10_000
    # An instance that no reservation has used for this long is freed, unless freeing it would
    # forget something (see `instances.ScopeTable`).
    idle_expiry_s: Annotated[float, Field(gt=0)] = 600.0


def check_state(state: StateConfig, rules: int) -> list[str]:
    """One request may need an instance of every rule (limit or budget) at once (they are made
    before any is freed), so a cap below the number of rules would refuse such requests for ever."""
    if state.max_scopes < rules:
        return [
            f"server.state.max_scopes: must be >= the number of limits and budgets ({rules}): "
            "one request may need an instance of each"
        ]
    return []
