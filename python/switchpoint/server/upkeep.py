"""What runs beside a live engine for as long as a front serves it, whichever front that is (the
sidecar, or the library in an application's process): the gauges read at scrape time and the
sweep that frees idle rule instances."""

from __future__ import annotations

import asyncio
import logging

from switchpoint.errors import CoreError
from switchpoint.reload import LiveEngine
from switchpoint.telemetry import BREAKER_CLOSED, BREAKER_HALF_OPEN, BREAKER_OPEN, Telemetry

log = logging.getLogger("switchpoint.server")

# Idle rule instances are looked for every quarter of `server.state.idle_expiry_s`, at most this
# long apart.
SCOPE_SWEEP_MAX_S = 30.0


def observe_gauges(telemetry: Telemetry, live: LiveEngine) -> None:
    """Install the queue, budget and breaker gauge sources: read at scrape time, always from the
    current engine (reloads swap it)."""

    def queue_depths() -> dict[str, int]:
        return {name: q.depth for name, q in live.engine.scheduler.snapshot().items()}

    def budgets_remaining() -> list[tuple[dict[str, str], float]]:
        """Per budget instance of a known scope: a tenant the config does not name has no gauge
        of its own (there would be one per name a caller sends)."""
        gate = live.engine.gate
        now = gate.now()
        out: list[tuple[dict[str, str], float]] = []
        for instance in gate.budget_instances():
            if not gate.labels.knows(instance.scope):
                continue
            try:
                remaining_usd = gate.gate.budget_state(instance.gate_id, now).remaining_usd
            except CoreError:
                continue  # freed since the list was taken (this runs on the metrics thread)
            labels: dict[str, str] = {"budget": instance.rule.name}
            labels.update(instance.scope)
            out.append((labels, remaining_usd))
        return out

    def breaker_states() -> list[tuple[str, int]]:
        codes = {"closed": BREAKER_CLOSED, "half_open": BREAKER_HALF_OPEN, "open": BREAKER_OPEN}
        engine = live.engine
        breakers = engine.breakers
        return [(m.name, codes[breakers.get(m.name).state]) for m in engine.registry.models]

    telemetry.observe(
        queues=queue_depths, budgets_remaining=budgets_remaining, breakers=breaker_states
    )


async def sweep_idle_scopes(live: LiveEngine) -> None:
    """Free idle rule instances until cancelled. The interval is read each round: a reload may
    change the expiry."""
    while True:
        config = live.engine.config
        await asyncio.sleep(min(config.server.state.idle_expiry_s / 4, SCOPE_SWEEP_MAX_S))
        try:
            freed = live.engine.gate.expire_idle()
        except Exception:
            # A bug in one sweep must not end the loop: idle instances would pile up again.
            log.exception("freeing idle rule instances failed")
            continue
        if freed:
            log.debug("freed %d idle rule instances", freed)
