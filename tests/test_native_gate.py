"""The token gate through its Python API (`switchpoint._native.Gate`).

Time is passed explicitly, so windows and buckets move only when a test says so.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from switchpoint._native import (
    BudgetState,
    CoreError,
    Denial,
    Gate,
    GateDenied,
    LimitState,
    LimitUsage,
)

FEB = 1_706_745_600.0  # 2024-02-01T00:00:00Z: an hour, a day and a month begin
MARCH = 1_709_251_200.0  # 2024-03-01T00:00:00Z
UNKNOWN_WAIT_S = 0.05


def _denied(denial: Denial | None) -> tuple[str, str, float] | None:
    return None if denial is None else (denial.kind, denial.name, denial.retry_after_s)


def _limit(state: LimitState) -> tuple[float | None, float | None, int]:
    return (state.requests_available, state.tokens_available, state.in_flight)


def _budget(state: BudgetState) -> tuple[float, float, float, float, float]:
    return (
        state.limit_usd,
        state.spent_usd,
        state.reserved_usd,
        state.window_start_s,
        state.window_end_s,
    )


def _usage(m: LimitUsage) -> tuple[float, int, int, int, int, float | None, float | None]:
    return (
        m.minute_start_s,
        m.requests_done,
        m.tokens_done,
        m.requests_reserved,
        m.tokens_reserved,
        m.requests_leased,
        m.tokens_leased,
    )


def test_budget_state_reports_remaining_and_share_used() -> None:
    gate = Gate()
    budget = gate.add_budget("b", limit_usd=1.0, window="day")
    gate.settle(gate.reserve([], [budget], 0, 0.25, FEB), 0, 0.25, FEB)
    gate.reserve([], [budget], 0, 0.5, FEB)
    state = gate.budget_state(budget, FEB)
    assert (state.remaining_usd, state.share_used) == (0.25, 0.75)
    assert state.fits(0.25)
    assert not state.fits(0.26)
    gate.set_budget_limit(budget, 0.5)
    assert gate.budget_state(budget, FEB).remaining_usd == 0.0
    gate.set_budget_limit(budget, 0.0)
    assert gate.budget_state(budget, FEB).share_used == 1.0


def test_reserve_is_all_or_nothing() -> None:
    gate = Gate()
    a = gate.add_rate_limit("a", rpm=60, tpm=1_000, concurrency=2)
    b = gate.add_rate_limit("b", concurrency=1)
    roomy = gate.add_budget("roomy", limit_usd=1.0, window="day")
    tight = gate.add_budget("tight", limit_usd=0.5, window="day")
    # Both limits and the first budget take their share before the last budget refuses.
    with pytest.raises(GateDenied) as denied:
        gate.reserve([a, b], [roomy, tight], 100, 0.75, FEB)
    assert (denied.value.kind, denied.value.name) == ("budget", "tight")
    assert _limit(gate.limit_state(a, FEB)) == (60.0, 1_000.0, 0)
    assert _limit(gate.limit_state(b, FEB)) == (None, None, 0)
    assert _budget(gate.budget_state(roomy, FEB))[1:3] == (0.0, 0.0)
    assert gate.outstanding() == 0

    reservation = gate.reserve([a, b], [roomy, tight], 100, 0.25, FEB)
    assert _limit(gate.limit_state(a, FEB)) == (59.0, 900.0, 1)
    assert _budget(gate.budget_state(tight, FEB))[1:3] == (0.0, 0.25)
    gate.settle(reservation, 80, 0.2, FEB)
    assert _limit(gate.limit_state(a, FEB)) == (59.0, 920.0, 0)
    assert gate.outstanding() == 0


@pytest.mark.parametrize(
    ("kind", "wait"),
    [("rpm", 30.0), ("tpm", 10.0), ("concurrency", UNKNOWN_WAIT_S), ("budget", 3_600.0)],
)
def test_denial_kinds_and_retry_after(kind: str, wait: float) -> None:
    gate = Gate()
    limit = {
        "rpm": lambda: gate.add_rate_limit("rule", rpm=2),  # one request back every 30 s
        "tpm": lambda: gate.add_rate_limit("rule", tpm=600),  # 10 tokens a second
        "concurrency": lambda: gate.add_rate_limit("rule", concurrency=2),
        "budget": lambda: gate.add_rate_limit("unlimited"),
    }[kind]()
    budget = gate.add_budget("rule" if kind == "budget" else "roomy", limit_usd=0.5, window="hour")
    for _ in range(2):
        gate.settle(gate.reserve([limit], [budget], 250, 0.25, FEB), 250, 0.25, FEB)
        if kind == "concurrency":
            gate.reserve([limit], [], 0, 0.0, FEB)
    call = ([limit], [budget], 200, 0.25 if kind == "budget" else 0.0, FEB)
    # tpm: 600 - 500 leaves 100 of the 200 tokens; budget: spent fills the hour until its end.
    checked = gate.check(*call)
    assert checked is not None
    assert (checked.kind, checked.name) == (kind, "rule")
    assert checked.retry_after_s == pytest.approx(wait)
    with pytest.raises(GateDenied) as denied:
        gate.reserve(*call)
    assert isinstance(denied.value, CoreError)
    assert denied.value.args == (kind, "rule", pytest.approx(wait))
    assert denied.value.kind == kind
    assert denied.value.name == "rule"
    assert denied.value.retry_after_s == pytest.approx(wait)
    assert str(denied.value).startswith(f'{kind} limit "rule" denies the call; retry after')


def test_windows_roll_over_at_utc_boundaries() -> None:
    gate = Gate()
    hourly = gate.add_budget("hourly", limit_usd=1.0, window="hour")
    monthly = gate.add_budget("monthly", limit_usd=5.0, window="month")
    gate.settle(gate.reserve([], [hourly, monthly], 0, 1.0, FEB - 10), 0, 1.0, FEB - 5)
    with pytest.raises(GateDenied) as denied:
        gate.reserve([], [hourly], 0, 0.5, FEB - 1)
    assert denied.value.retry_after_s == pytest.approx(1.0)
    assert _budget(gate.budget_state(hourly, FEB - 0.001)) == (1.0, 1.0, 0.0, FEB - 3_600, FEB)
    assert _budget(gate.budget_state(hourly, FEB)) == (1.0, 0.0, 0.0, FEB, FEB + 3_600)
    assert _budget(gate.budget_state(monthly, FEB))[3:] == (FEB, MARCH)
    # Reserved in January, finished in February: charged to February.
    reservation = gate.reserve([], [monthly], 0, 0.5, FEB - 1)
    gate.reserve([], [hourly], 0, 0.5, FEB)
    gate.settle(reservation, 0, 0.75, FEB + 10)
    assert _budget(gate.budget_state(monthly, FEB + 10))[1:4] == (0.75, 0.0, FEB)
    total = gate.add_budget("lifetime", limit_usd=1.0, window="total")
    assert _budget(gate.budget_state(total, FEB))[3:] == (0.0, float("inf"))


def test_settle_charges_a_larger_actual_cost() -> None:
    gate = Gate()
    budget = gate.add_budget("b", limit_usd=1.0, window="month")
    gate.settle(gate.reserve([], [budget], 0, 0.5, FEB), 0, 0.875, FEB)
    assert _budget(gate.budget_state(budget, FEB))[:3] == (1.0, 0.875, 0.0)
    with pytest.raises(GateDenied) as denied:
        gate.reserve([], [budget], 0, 0.25, FEB)
    # Spent alone blocks it: nothing helps before March.
    assert denied.value.retry_after_s == pytest.approx(MARCH - FEB)
    assert gate.take_unreported_spend(budget) == 0.875
    assert gate.take_unreported_spend(budget) == 0.0
    gate.set_budget_limit(budget, 2.0)
    gate.reserve([], [budget], 0, 0.25, FEB)


def test_double_settle_is_an_error_and_changes_nothing() -> None:
    gate = Gate()
    limit = gate.add_rate_limit("l", tpm=1_000, concurrency=1)
    budget = gate.add_budget("b", limit_usd=1.0, window="day")
    reservation = gate.reserve([limit], [budget], 100, 0.5, FEB)
    gate.settle(reservation, 100, 0.5, FEB)
    before = (_limit(gate.limit_state(limit, FEB)), _budget(gate.budget_state(budget, FEB)))
    with pytest.raises(CoreError, match="already settled or released") as raised:
        gate.settle(reservation, 100, 0.5, FEB)
    assert not isinstance(raised.value, GateDenied)
    with pytest.raises(CoreError, match=f"reservation {reservation} is unknown"):
        gate.release(reservation, FEB)
    with pytest.raises(CoreError, match="reservation -1 is unknown"):
        gate.release(-1, FEB)
    assert (_limit(gate.limit_state(limit, FEB)), _budget(gate.budget_state(budget, FEB))) == before
    assert gate.outstanding() == 0


def test_release_frees_concurrency_but_keeps_the_request() -> None:
    gate = Gate()
    limit = gate.add_rate_limit("l", rpm=10, tpm=1_000, concurrency=1)
    budget = gate.add_budget("b", limit_usd=1.0, window="day")
    reservation = gate.reserve([limit], [budget], 400, 0.5, FEB)
    with pytest.raises(GateDenied) as denied:
        gate.reserve([limit], [budget], 400, 0.5, FEB)
    assert denied.value.kind == "concurrency"
    gate.release(reservation, FEB)
    assert _limit(gate.limit_state(limit, FEB)) == (9.0, 1_000.0, 0)
    assert _budget(gate.budget_state(budget, FEB))[1:3] == (0.0, 0.0)
    gate.settle(gate.reserve([limit], [budget], 400, 0.5, FEB), 400, 0.5, FEB)


def test_leases_cap_a_budget_until_their_window_ends() -> None:
    gate = Gate()
    budget = gate.add_budget("shared", limit_usd=100.0, window="hour")
    gate.set_leased(budget, 1.0, FEB)
    gate.reserve([], [budget], 0, 0.75, FEB)
    assert _denied(gate.check([], [budget], 0, 0.5, FEB)) == ("budget", "shared", UNKNOWN_WAIT_S)
    # The next hour needs a new lease.
    assert gate.check([], [budget], 0, 0.01, FEB + 3_600) is not None
    gate.set_leased(budget, None, FEB + 3_600)
    assert gate.check([], [budget], 0, 0.5, FEB + 3_600) is None


def test_two_hundred_threads_fill_a_budget_of_fifty_exactly() -> None:
    gate = Gate()
    budget = gate.add_budget("team", limit_usd=50 * 0.125, window="day")
    start = threading.Barrier(200, timeout=30)

    def attempt() -> int | str:
        """A reservation id, or the kind of the refusal."""
        start.wait()
        try:
            return gate.reserve([], [budget], 10, 0.125, FEB)
        except GateDenied as denied:
            return denied.kind

    with ThreadPoolExecutor(max_workers=200) as pool:
        outcomes = list(pool.map(lambda _: attempt(), range(200)))
    admitted = [outcome for outcome in outcomes if isinstance(outcome, int)]
    refused = [outcome for outcome in outcomes if isinstance(outcome, str)]
    assert (len(admitted), refused) == (50, ["budget"] * 150)
    assert len(set(admitted)) == 50
    assert gate.outstanding() == 50
    assert _budget(gate.budget_state(budget, FEB))[1:3] == (0.0, 6.25)
    for reservation in admitted:
        gate.settle(reservation, 10, 0.125, FEB)
    assert _budget(gate.budget_state(budget, FEB))[1:3] == (6.25, 0.0)
    assert gate.outstanding() == 0


def test_bad_arguments_raise_core_error() -> None:
    gate = Gate()
    limit = gate.add_rate_limit("l", concurrency=1)
    budget = gate.add_budget("b", limit_usd=1.0, window="day")
    with pytest.raises(CoreError, match=r"^rate limit 1 is unknown \(gate has 1\)"):
        gate.reserve([1], [], 0, 0.0, FEB)
    with pytest.raises(CoreError, match=r"^budget -1 is unknown"):
        gate.check([], [-1], 0, 0.0, FEB)
    with pytest.raises(CoreError, match=r"^limits: lists rate limit 0 twice"):
        gate.reserve([limit, limit], [], 0, 0.0, FEB)
    with pytest.raises(CoreError, match=r"^tokens: must be >= 0"):
        gate.reserve([limit], [], -1, 0.0, FEB)
    with pytest.raises(CoreError, match=r"^cost_usd: must be finite and >= 0"):
        gate.reserve([], [budget], 0, float("nan"), FEB)
    with pytest.raises(CoreError, match=r"^now: must be finite seconds"):
        gate.reserve([], [budget], 0, 0.1, FEB * 1_000)  # milliseconds by mistake
    with pytest.raises(CoreError, match=r"^window: must be"):
        gate.add_budget("w", limit_usd=1.0, window="week")  # type: ignore[arg-type]
    with pytest.raises(CoreError, match=r"^concurrency: must be >= 1"):
        gate.add_rate_limit("c", concurrency=-1)
    with pytest.raises(CoreError, match=r"^rpm: must be finite and > 0"):
        gate.add_rate_limit("r", rpm=0)
    with pytest.raises(CoreError, match=r"^limit_usd: must be finite and >= 0"):
        gate.set_budget_limit(budget, -1.0)
    assert (gate.limit_count(), gate.budget_count(), gate.outstanding()) == (1, 1, 0)
    assert repr(gate) == "Gate(limits=1, budgets=1, outstanding=0)"


def test_rate_leases_cap_a_minute_and_hand_over_usage_once() -> None:
    gate = Gate()
    limit = gate.add_rate_limit("shared", rpm=600, tpm=60_000)
    assert _usage(gate.limit_usage(limit, FEB)) == (FEB, 0, 0, 0, 0, None, None)
    gate.set_limit_leased(limit, 2, 1_000, FEB)
    first = gate.reserve([limit], [], 600, 0.0, FEB)
    with pytest.raises(GateDenied) as denied:
        gate.reserve([limit], [], 500, 0.0, FEB)
    assert denied.value.args == ("tpm-lease", "shared", UNKNOWN_WAIT_S)
    second = gate.reserve([limit], [], 400, 0.0, FEB)
    assert _denied(gate.check([limit], [], 0, 0.0, FEB)) == ("rpm-lease", "shared", UNKNOWN_WAIT_S)
    gate.settle(first, 700, 0.0, FEB + 1)
    gate.release(second, FEB + 1)
    assert _usage(gate.limit_usage(limit, FEB + 1)) == (FEB, 2, 700, 0, 0, 2.0, 1_000.0)
    assert gate.take_unreported_usage(limit) == (2, 700)
    assert gate.take_unreported_usage(limit) == (0, 0)
    # The next minute starts with nothing leased.
    assert _usage(gate.limit_usage(limit, FEB + 60))[5:] == (0.0, 0.0)
    with pytest.raises(CoreError, match="tokens: must be finite and >= 0"):
        gate.set_limit_leased(limit, None, -1.0, FEB)
    rpm_only = gate.add_rate_limit("r", rpm=1)
    with pytest.raises(CoreError, match='tokens: rate limit "r" has no tpm to lease'):
        gate.set_limit_leased(rpm_only, None, 1.0, FEB)
