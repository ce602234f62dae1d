//! Unit and threaded tests of the token gate; the model-based property test is in
//! `model_tests.rs`. Amounts are binary fractions (0.25, 0.125, ...) or single values added to
//! zero, so they are exact in f64.

// Exact equality is what is meant (see above), and window boundaries are whole seconds.
#![allow(clippy::float_cmp)]

use std::sync::Arc;
use std::thread;

use super::*;
use crate::error::{DenialKind, UNKNOWN_RETRY_AFTER_S};

/// 2024-02-01T00:00:00Z: an hour, a day and a month begin.
pub(super) const FEB: f64 = 1_706_745_600.0;
/// 2024-01-01T00:00:00Z.
pub(super) const JAN: f64 = 1_704_067_200.0;

fn denied(result: Result<ReservationId>) -> Denial {
    match result {
        Err(CoreError::Denied(denial)) => denial,
        other => panic!("expected a denial, got {other:?}"),
    }
}

/// Everything observable about a gate at `now`, to show that a call changed nothing.
#[derive(Debug, PartialEq)]
pub(super) struct Snapshot {
    limits: Vec<LimitState>,
    budgets: Vec<BudgetState>,
    outstanding: usize,
}

pub(super) fn snapshot(gate: &Gate, now: f64) -> Snapshot {
    Snapshot {
        limits: (0..gate.limit_count())
            .map(|id| gate.limit_state(id, now).unwrap())
            .collect(),
        budgets: (0..gate.budget_count())
            .map(|id| gate.budget_state(id, now).unwrap())
            .collect(),
        outstanding: gate.outstanding_reservations(),
    }
}

#[test]
fn reserve_is_all_or_nothing() {
    let gate = Gate::new();
    let a = gate
        .add_rate_limit("a", Some(60.0), Some(1_000.0), Some(2))
        .unwrap();
    let b = gate.add_rate_limit("b", None, None, Some(1)).unwrap();
    let roomy = gate.add_budget("roomy", 1.0, Window::Day).unwrap();
    let tight = gate.add_budget("tight", 0.5, Window::Day).unwrap();
    let before = snapshot(&gate, FEB);
    // Two limits and a budget take their share before the last budget refuses.
    let denial = denied(gate.reserve(&[a, b], &[roomy, tight], 100, 0.75, FEB));
    assert_eq!((denial.kind, &*denial.name), (DenialKind::Budget, "tight"));
    assert_eq!(snapshot(&gate, FEB), before);

    let blocker = gate.reserve(&[b], &[], 0, 0.0, FEB).unwrap();
    let before = snapshot(&gate, FEB);
    let denial = denied(gate.reserve(&[a, b], &[roomy], 100, 0.25, FEB));
    assert_eq!((denial.kind, &*denial.name), (DenialKind::Concurrency, "b"));
    assert_eq!(snapshot(&gate, FEB), before);

    gate.release(blocker, FEB).unwrap();
    let id = gate
        .reserve(&[a, b], &[roomy, tight], 100, 0.25, FEB)
        .unwrap();
    // The refused attempts took nothing: this is the first request counted.
    let state = gate.limit_state(a, FEB).unwrap();
    assert_eq!(state.requests_available, Some(59.0));
    assert_eq!((state.tokens_available, state.in_flight), (Some(900.0), 1));
    assert_eq!(gate.budget_state(tight, FEB).unwrap().reserved_usd, 0.25);
    gate.settle(id, 100, 0.25, FEB).unwrap();
    assert_eq!(gate.outstanding_reservations(), 0);
}

#[test]
fn check_agrees_with_reserve_and_changes_nothing() {
    let gate = Gate::new();
    let rpm = gate.add_rate_limit("rpm", Some(2.0), None, None).unwrap();
    let budget = gate.add_budget("b", 1.0, Window::Hour).unwrap();
    for _ in 0..2 {
        let before = snapshot(&gate, FEB);
        assert_eq!(gate.check(&[rpm], &[budget], 0, 0.1, FEB).unwrap(), None);
        assert_eq!(snapshot(&gate, FEB), before);
        gate.reserve(&[rpm], &[budget], 0, 0.1, FEB).unwrap();
    }
    let expected = gate.check(&[rpm], &[budget], 0, 0.1, FEB).unwrap().unwrap();
    assert_eq!(expected.kind, DenialKind::Rpm);
    // Two per minute: one request back every 30 s.
    assert!((expected.retry_after_s - 30.0).abs() < 1e-9, "{expected:?}");
    assert_eq!(
        denied(gate.reserve(&[rpm], &[budget], 0, 0.1, FEB)),
        expected
    );
}

#[test]
fn bad_calls_are_refused_and_change_nothing() {
    let gate = Gate::new();
    let limit = gate.add_rate_limit("l", None, None, Some(1)).unwrap();
    let budget = gate.add_budget("b", 1.0, Window::Day).unwrap();
    let before = snapshot(&gate, FEB);
    let many: Vec<usize> = vec![limit; MAX_RULES + 1];
    let cases: [(Result<ReservationId>, &str); 8] = [
        (
            gate.reserve(&[1], &[], 0, 0.0, FEB),
            "rate limit 1 is unknown (gate has 1)",
        ),
        (
            gate.reserve(&[], &[3], 0, 0.0, FEB),
            "budget 3 is unknown (gate has 1)",
        ),
        (
            gate.reserve(&[limit, limit], &[], 0, 0.0, FEB),
            "limits: lists rate limit 0 twice",
        ),
        (
            gate.reserve(&many, &[], 0, 0.0, FEB),
            "limits: a call may name at most 16",
        ),
        (
            gate.reserve(&[], &[budget], 0, -0.1, FEB),
            "cost_usd: must be finite and >= 0",
        ),
        (
            gate.reserve(&[], &[budget], 0, f64::NAN, FEB),
            "cost_usd: must be finite",
        ),
        (
            gate.reserve(&[], &[budget], 0, 0.1, -1.0),
            "now: must be finite seconds",
        ),
        (
            gate.reserve(&[], &[budget], 0, 0.1, f64::INFINITY),
            "now: must be finite",
        ),
    ];
    for (result, message) in cases {
        let err = result.unwrap_err();
        assert!(err.to_string().starts_with(message), "{err} vs {message}");
    }
    assert!(gate.check(&[], &[budget, budget], 0, 0.0, FEB).is_err());
    assert!(gate.budget_state(1, FEB).is_err());
    assert!(gate.limit_state(1, FEB).is_err());
    assert!(gate.set_budget_limit(budget, f64::NAN).is_err());
    assert!(gate.set_leased(budget, Some(-1.0), FEB).is_err());
    assert!(gate.take_unreported_spend(9).is_err());
    assert_eq!(snapshot(&gate, FEB), before);

    // A settle with a bad argument leaves the reservation outstanding, to be settled properly.
    let id = gate.reserve(&[limit], &[budget], 0, 0.5, FEB).unwrap();
    assert!(gate.settle(id, 0, f64::NAN, FEB).is_err());
    assert!(gate.release(id, -5.0).is_err());
    assert_eq!(gate.outstanding_reservations(), 1);
    gate.settle(id, 0, 0.5, FEB).unwrap();
}

#[test]
fn settle_charges_the_actual_cost_once() {
    let gate = Gate::new();
    let budget = gate.add_budget("b", 1.0, Window::Month).unwrap();
    let id = gate.reserve(&[], &[budget], 0, 0.5, FEB).unwrap();
    gate.settle(id, 0, 0.9, FEB).unwrap();
    let state = gate.budget_state(budget, FEB).unwrap();
    assert_eq!((state.spent_usd, state.reserved_usd), (0.9, 0.0));
    let before = snapshot(&gate, FEB);
    let unknown = CoreError::UnknownReservation {
        id: i128::from(id.get()),
    };
    assert_eq!(gate.settle(id, 0, 0.9, FEB), Err(unknown.clone()));
    assert_eq!(gate.release(id, FEB), Err(unknown));
    assert_eq!(snapshot(&gate, FEB), before);
    // 0.9 spent leaves 0.1; the whole month is left to wait for anything larger.
    let denial = denied(gate.reserve(&[], &[budget], 0, 0.2, FEB));
    let march = 1_709_251_200.0;
    assert!(
        (denial.retry_after_s - (march - FEB)).abs() < 1e-6,
        "{denial:?}"
    );
    assert!((gate.take_unreported_spend(budget).unwrap() - 0.9).abs() < f64::EPSILON);
}

#[test]
fn release_frees_concurrency_and_tokens_but_keeps_the_request() {
    let gate = Gate::new();
    let limit = gate
        .add_rate_limit("l", Some(10.0), Some(1_000.0), Some(1))
        .unwrap();
    let budget = gate.add_budget("b", 1.0, Window::Day).unwrap();
    let id = gate.reserve(&[limit], &[budget], 400, 0.5, FEB).unwrap();
    let denial = denied(gate.reserve(&[limit], &[budget], 400, 0.5, FEB));
    assert_eq!(denial.kind, DenialKind::Concurrency);
    assert!((denial.retry_after_s - UNKNOWN_RETRY_AFTER_S).abs() < f64::EPSILON);
    gate.release(id, FEB).unwrap();
    let state = gate.limit_state(limit, FEB).unwrap();
    assert_eq!(state.requests_available, Some(9.0));
    assert_eq!(
        (state.tokens_available, state.in_flight),
        (Some(1_000.0), 0)
    );
    let budget_state = gate.budget_state(budget, FEB).unwrap();
    assert_eq!(
        (budget_state.spent_usd, budget_state.reserved_usd),
        (0.0, 0.0)
    );
    assert_eq!(gate.outstanding_reservations(), 0);
}

#[test]
fn windows_roll_over_at_utc_boundaries() {
    let gate = Gate::new();
    let hourly = gate.add_budget("hourly", 1.0, Window::Hour).unwrap();
    let monthly = gate.add_budget("monthly", 5.0, Window::Month).unwrap();
    let id = gate
        .reserve(&[], &[hourly, monthly], 0, 1.0, FEB - 2.0)
        .unwrap();
    let denial = denied(gate.reserve(&[], &[hourly], 0, 0.5, FEB - 2.0));
    assert!((denial.retry_after_s - UNKNOWN_RETRY_AFTER_S).abs() < f64::EPSILON);
    gate.settle(id, 0, 1.0, FEB - 1.0).unwrap();
    // Spent alone fills the hour: wait one second, for the hour (and day and month) to end.
    let denial = denied(gate.reserve(&[], &[hourly], 0, 0.5, FEB - 1.0));
    assert!((denial.retry_after_s - 1.0).abs() < 1e-9, "{denial:?}");
    let last = gate.budget_state(hourly, FEB - 1e-3).unwrap();
    assert_eq!((last.spent_usd, last.window_end_s), (1.0, FEB));
    let first = gate.budget_state(hourly, FEB).unwrap();
    assert_eq!((first.spent_usd, first.window_start_s), (0.0, FEB));
    assert_eq!(
        gate.budget_state(monthly, FEB - 1.0)
            .unwrap()
            .window_start_s,
        JAN
    );

    // A call reserved in January and finishing in February is charged to February.
    let id = gate
        .reserve(&[], &[hourly, monthly], 0, 0.0, FEB - 1.0)
        .unwrap();
    assert!(gate.reserve(&[], &[hourly], 0, 0.5, FEB).is_ok());
    gate.settle(id, 0, 0.25, FEB + 10.0).unwrap();
    let state = gate.budget_state(monthly, FEB + 10.0).unwrap();
    assert_eq!((state.spent_usd, state.window_start_s), (0.25, FEB));
}

#[test]
fn leases_cap_the_budget_and_spend_is_reported_once() {
    let gate = Gate::new();
    let budget = gate.add_budget("shared", 100.0, Window::Day).unwrap();
    gate.set_leased(budget, Some(1.0), FEB).unwrap();
    let id = gate.reserve(&[], &[budget], 0, 0.75, FEB).unwrap();
    assert_eq!(
        denied(gate.reserve(&[], &[budget], 0, 0.5, FEB)).kind,
        DenialKind::Budget
    );
    gate.settle(id, 0, 0.5, FEB).unwrap();
    gate.set_budget_limit(budget, 0.75).unwrap();
    assert!(gate.check(&[], &[budget], 0, 0.25, FEB).unwrap().is_none());
    assert!(gate.check(&[], &[budget], 0, 0.5, FEB).unwrap().is_some());
    gate.set_leased(budget, None, FEB).unwrap();
    assert_eq!(gate.take_unreported_spend(budget).unwrap(), 0.5);
    assert_eq!(gate.take_unreported_spend(budget).unwrap(), 0.0);
    assert_eq!(gate.budget_state(budget, FEB).unwrap().limit_usd, 0.75);
}

#[test]
fn rate_leases_cap_the_limit_and_usage_is_reported_once() {
    let gate = Gate::new();
    let limit = gate
        .add_rate_limit("shared", Some(600.0), Some(60_000.0), None)
        .unwrap();
    let budget = gate.add_budget("b", 1.0, Window::Day).unwrap();
    gate.set_limit_leased(limit, Some(2.0), Some(1_000.0), FEB)
        .unwrap();
    let first = gate.reserve(&[limit], &[budget], 600, 0.0, FEB).unwrap();
    // The lease refuses after the buckets (which have plenty) and leaves the budget untouched.
    let denial = denied(gate.reserve(&[limit], &[budget], 500, 0.0, FEB));
    assert_eq!(
        (denial.kind, &*denial.name),
        (DenialKind::TpmLease, "shared")
    );
    assert_eq!(denial.retry_after_s, UNKNOWN_RETRY_AFTER_S);
    assert_eq!(
        denial.to_string(),
        "tpm-lease limit \"shared\" denies the call; retry after 0.05 s"
    );
    let second = gate.reserve(&[limit], &[budget], 400, 0.0, FEB).unwrap();
    let denial = denied(gate.reserve(&[limit], &[], 0, 0.0, FEB));
    assert_eq!(denial.kind, DenialKind::RpmLease);
    gate.settle(first, 700, 0.0, FEB + 1.0).unwrap();
    gate.release(second, FEB + 1.0).unwrap();
    let minute = gate.limit_state(limit, FEB + 1.0).unwrap().minute;
    assert_eq!((minute.requests_done, minute.tokens_done), (2, 700));
    assert_eq!(gate.take_unreported_usage(limit).unwrap(), (2, 700));
    assert_eq!(gate.take_unreported_usage(limit).unwrap(), (0, 0));
    // The next minute has no lease until one is set; `None` uncaps.
    assert!(gate
        .check(&[limit], &[], 0, 0.0, FEB + 60.0)
        .unwrap()
        .is_some());
    gate.set_limit_leased(limit, None, None, FEB + 60.0)
        .unwrap();
    assert!(gate
        .check(&[limit], &[], 0, 0.0, FEB + 60.0)
        .unwrap()
        .is_none());
    let rpm_only = gate.add_rate_limit("r", Some(1.0), None, None).unwrap();
    assert!(gate
        .set_limit_leased(rpm_only, None, Some(1.0), FEB)
        .is_err());
    assert!(gate.set_limit_leased(9, None, None, FEB).is_err());
    assert!(gate.take_unreported_usage(9).is_err());
}

#[test]
fn threads_never_push_a_budget_past_its_limit() {
    // Actual cost equals the estimate, so `spent + reserved <= limit` must hold at every moment
    // anyone can observe, and the budget ends exactly full.
    const COST: f64 = 0.125;
    let gate = Arc::new(Gate::new());
    let slots = gate.add_rate_limit("slots", None, None, Some(6)).unwrap();
    let team = gate.add_budget("team", 10.0, Window::Total).unwrap();
    let org = gate.add_budget("org", 12.0, Window::Total).unwrap();
    let workers: Vec<_> = (0..8)
        .map(|worker| {
            let gate = Arc::clone(&gate);
            thread::spawn(move || {
                let mut held = Vec::new();
                let mut settled = 0u32;
                for i in 0..3_000u32 {
                    match gate.reserve(&[slots], &[team, org], 1, COST, FEB) {
                        Ok(id) => held.push(id),
                        Err(CoreError::Denied(_)) => {}
                        Err(other) => panic!("{other}"),
                    }
                    let state = gate.budget_state(team, FEB).unwrap();
                    assert!(state.spent_usd + state.reserved_usd <= 10.0, "{state:?}");
                    assert!(gate.limit_state(slots, FEB).unwrap().in_flight <= 6);
                    if held.len() >= 2 || (i + worker) % 3 == 0 {
                        if let Some(id) = held.pop() {
                            if i % 5 == 0 {
                                gate.release(id, FEB).unwrap();
                            } else {
                                gate.settle(id, 1, COST, FEB).unwrap();
                                settled += 1;
                            }
                        }
                    }
                }
                for id in held {
                    gate.release(id, FEB).unwrap();
                }
                settled
            })
        })
        .collect();
    let settled: u32 = workers.into_iter().map(|w| w.join().unwrap()).sum();
    assert_eq!(settled, 80, "the budget holds exactly 80 calls");
    let state = gate.budget_state(team, FEB).unwrap();
    assert_eq!((state.spent_usd, state.reserved_usd), (10.0, 0.0));
    assert_eq!(gate.budget_state(org, FEB).unwrap().spent_usd, 10.0);
    assert_eq!(gate.limit_state(slots, FEB).unwrap().in_flight, 0);
    assert_eq!(gate.outstanding_reservations(), 0);
}

#[test]
fn a_rule_is_freed_only_when_no_reservation_names_it() {
    let gate = Gate::new();
    let limit = gate.add_rate_limit("l", Some(60.0), None, None).unwrap();
    let budget = gate.add_budget("b", 1.0, Window::Day).unwrap();
    let unused = gate.add_budget("unused", 1.0, Window::Day).unwrap();
    assert_eq!(
        gate.budget_activity(unused).unwrap(),
        RuleActivity {
            holds: 0,
            last_used_s: None
        }
    );
    let held = gate.reserve(&[limit], &[budget], 10, 0.25, FEB).unwrap();
    assert!(!gate.remove_rate_limit(limit).unwrap());
    assert!(!gate.remove_budget(budget).unwrap());
    assert_eq!(gate.limit_activity(limit).unwrap().holds, 1);
    gate.settle(held, 10, 0.25, FEB + 5.0).unwrap();
    assert_eq!(
        gate.budget_activity(budget).unwrap(),
        RuleActivity {
            holds: 0,
            last_used_s: Some(FEB + 5.0)
        }
    );
    // A refused reservation gives its hold back on the rules it had taken.
    denied(gate.reserve(&[limit], &[budget], 10, 0.9, FEB + 6.0));
    assert_eq!(gate.limit_activity(limit).unwrap().holds, 0);

    assert!(gate.remove_rate_limit(limit).unwrap());
    assert!(gate.remove_budget(budget).unwrap());
    assert_eq!((gate.limit_count(), gate.budget_count()), (0, 1));
    for result in [
        gate.budget_state(budget, FEB).map(|_| ()),
        gate.limit_state(limit, FEB).map(|_| ()),
        gate.check(&[], &[budget], 1, 0.0, FEB).map(|_| ()),
        gate.reserve(&[limit], &[], 1, 0.0, FEB).map(|_| ()),
        gate.remove_budget(budget).map(|_| ()),
    ] {
        assert!(
            matches!(result, Err(CoreError::UnknownRule { .. })),
            "{result:?}"
        );
    }
    // The freed slot serves the next budget, under an id the old one does not match; it starts
    // with nothing spent.
    let next = gate.add_budget("next", 1.0, Window::Day).unwrap();
    assert_ne!(next, budget);
    assert_eq!(gate.rule_slots(), (1, 2));
    assert_eq!(gate.budget_state(next, FEB).unwrap().spent_usd, 0.0);
    assert_eq!(gate.outstanding_reservations(), 0);
}

#[test]
fn a_denied_reserve_on_a_freed_rule_gives_back_what_it_took() {
    let gate = Gate::new();
    let kept = gate.add_rate_limit("kept", None, None, Some(1)).unwrap();
    let freed = gate.add_budget("freed", 1.0, Window::Day).unwrap();
    assert!(gate.remove_budget(freed).unwrap());
    assert!(gate.reserve(&[kept], &[freed], 1, 0.0, FEB).is_err());
    assert_eq!(gate.limit_state(kept, FEB).unwrap().in_flight, 0);
    assert_eq!(gate.limit_activity(kept).unwrap().holds, 0);
}
