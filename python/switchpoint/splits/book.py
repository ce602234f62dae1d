"""What each arm of each split served: the per-arm figures of GetStats and the metrics.

Kept by the server, not by one config load, so the figures survive reloads. Keys are the split
and arm names of the configs loaded and the tenant as the usage stats label it, so they stay as
many as the configs name.
"""

from __future__ import annotations

from dataclasses import dataclass

from switchpoint.splits.assign import Assignment, Splits
from switchpoint.v1 import router_pb2 as pb


@dataclass(slots=True)
class ArmCounters:
    requests: int = 0
    errors: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0


class SplitBook:
    def __init__(self) -> None:
        self._counters: dict[tuple[str, str, str], ArmCounters] = {}

    def record(
        self,
        assignment: Assignment,
        *,
        ok: bool,
        input_tokens: int = 0,
        output_tokens: int = 0,
        cost_usd: float = 0.0,
    ) -> None:
        """One request the split sent to an arm; one it did not apply to counts nowhere."""
        if not assignment.applied:
            return
        key = (assignment.split, assignment.arm, assignment.tenant)
        counters = self._counters.get(key)
        if counters is None:
            counters = self._counters[key] = ArmCounters()
        counters.requests += 1
        counters.errors += 0 if ok else 1
        counters.input_tokens += input_tokens
        counters.output_tokens += output_tokens
        counters.cost_usd += cost_usd

    def total(self, split: str, arm: str, *, tenant: str | None = None) -> ArmCounters:
        """The arm's counters, over every tenant or for the one (labelled) `tenant`."""
        total = ArmCounters()
        for (split_name, arm_name, key_tenant), counters in self._counters.items():
            if split_name != split or arm_name != arm:
                continue
            if tenant is not None and key_tenant != tenant:
                continue
            total.requests += counters.requests
            total.errors += counters.errors
            total.input_tokens += counters.input_tokens
            total.output_tokens += counters.output_tokens
            total.cost_usd += counters.cost_usd
        return total


def arm_stats(splits: Splits, book: SplitBook, tenant: str | None) -> list[pb.SplitArmStats]:
    """GetStats' rows: every arm of the running config, for `tenant` when one is asked."""
    label = splits.labels.tenant(tenant) if tenant is not None else None
    rows = []
    for split, arm, share in splits.arms():
        counters = book.total(split, arm, tenant=label)
        rows.append(
            pb.SplitArmStats(
                split=split,
                arm=arm,
                share=share,
                requests=counters.requests,
                errors=counters.errors,
                input_tokens=counters.input_tokens,
                output_tokens=counters.output_tokens,
                cost_usd=counters.cost_usd,
            )
        )
    return rows
