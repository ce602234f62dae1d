"""The soak (benches/soak.py) for 60 s: mixed traffic under random provider faults, a Redis outage
and a hot reload, then every check of the full run. What is asserted is behaviour and invariants
(every call answered with a documented status, nothing held, the ledger equal to the charges
reported, bounded growth), never how fast anything was."""

from __future__ import annotations

import pytest

from benches.soak import soak
from benches.soak_faults import FAULTS

SECONDS = 60.0
RATE = 10.0  # calls per second: sustainable with the providers and client in one process on 2 cores


@pytest.mark.timeout(SECONDS + 120)
async def test_a_minute_of_faults_loses_leaks_and_mischarges_nothing() -> None:
    result = await soak(seconds=SECONDS, rate=RATE)
    failed = [c for c in result["checks"] if not c["passed"]]
    assert not failed, failed
    checks = {c["name"]: c["detail"] for c in result["checks"]}
    assert set(checks) == {
        "answered",
        "server saw each",
        "nothing held",
        "ledger",
        "chaos applied",
        "resources flat",
    }
    # The run did what it claims: every fault kind reached the sidecar, clients cancelled.
    drawn = result["faults_drawn"]
    assert {f.name for f in FAULTS} <= set(drawn["oai"]) | set(drawn["ant"]), drawn
    for provider in ("oai", "ant"):
        assert sum(n for name, n in drawn[provider].items() if name != "ok") > 0, drawn
    statuses = checks["answered"]["by_status"]
    assert statuses.get("CANCELLED", 0) > 0
    assert statuses["OK"] > result["calls"] // 2
    assert checks["answered"]["calls"] == round(SECONDS * RATE)
    # Tenants whose every call was answered are charged exactly what their answers reported.
    tenants = checks["ledger"]["tenants"]
    for tenant in ("checkout", "canceller"):
        assert tenants[tenant]["exact"], tenants[tenant]
        assert tenants[tenant]["ledger_usd"] > 0
    assert [p["phase"] for p in result["phases"]] == [
        "warm-up",
        "faults",
        "redis-down",
        "after-reload",
        "drain",
    ]
    assert result["metrics_served"]
