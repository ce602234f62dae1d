"""The `shared_state` config section: where the shared Redis is and how replicas lease budget and
rate limits from it (`quota.shared`)."""

from __future__ import annotations

import os
import socket
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

Policy = Literal["fail-open", "fail-closed"]


class SharedStateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # None: budgets are per replica (single replica, nothing shared).
    redis_url: str | None = None
    # Each lease tops a replica up to this much unspent budget. Smaller slices spread a nearly
    # spent budget more fairly over replicas; larger ones mean fewer Redis round trips.
    slice_usd: Annotated[float, Field(gt=0)] = 1.0
    sync_interval_s: Annotated[float, Field(gt=0)] = 0.5
    # While Redis is unreachable: fail-closed spends only what is already leased; fail-open lets
    # each replica spend up to the full limit locally (overshoot up to replicas x limit).
    policy: Policy = "fail-closed"
    key_prefix: Annotated[str, Field(min_length=1, pattern=r"^\S+$")] = "switchpoint"
    # Must differ between live replicas; None takes hostname-pid, distinct across pods.
    replica_id: Annotated[str, Field(min_length=1, pattern=r"^\S+$")] | None = None
    # Connect and per-command timeout: how long a hanging Redis holds up a sync or a top-up
    # before the replica treats it as unreachable.
    timeout_s: Annotated[float, Field(gt=0)] = 1.0

    def resolved_replica_id(self) -> str:
        return self.replica_id or f"{socket.gethostname()}-{os.getpid()}"
