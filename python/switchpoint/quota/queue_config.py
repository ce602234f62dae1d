"""The priority queue's config keys, which live flat under `routing:` (`RoutingConfig` takes
them from here) beside the routing keys, as `routing.queue_max_age_s` always has."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field


class QueueConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # A waiter older than this is served before any newer one (no starvation).
    queue_max_age_s: Annotated[float, Field(gt=0)] = 5.0
    # Calls waiting in one model's queue at most; the next is refused (RESOURCE_EXHAUSTED).
    queue_max_depth: Annotated[int, Field(ge=1)] = 1000
    # The longest any call waits in a queue, deadline or not; then it is refused.
    queue_max_wait_s: Annotated[float, Field(gt=0)] = 60.0
