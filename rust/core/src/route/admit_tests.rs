//! The one entry point's second half: the gate's and the breakers' say over a ranked decision,
//! and budget pressure on the first half.

// The day's end is a whole number of seconds away, exact in f64.
#![allow(clippy::float_cmp)]

use std::sync::Arc;

use super::admit::general3;
use super::tests::{ask, router_with};
use super::*;
use crate::error::{DenialKind, Refusal};
use crate::gate::{BudgetRule, Gate, Pressure, RuleBook, RuleMatch, ScopeKey, Wanted};
use crate::window::Window;

/// 2024-02-01T00:00:00Z.
const NOW: f64 = 1_706_745_600.0;

/// A budget per model of `limit_usd` a day, and one of $100 per tenant whose `pressure` at 75 %
/// shifts balanced to cost-first.
fn per_model_budget(limit_usd: f64, pressure: bool) -> Arc<RuleBook> {
    let rule = BudgetRule {
        name: "b".into(),
        matches: RuleMatch::new(vec![(ScopeKey::Model, Wanted::Each)]),
        window: Window::Day,
        limit_usd,
        pressure: None,
    };
    let tenant_rule = BudgetRule {
        name: "t".into(),
        matches: RuleMatch::new(vec![(ScopeKey::Tenant, Wanted::Each)]),
        window: Window::Day,
        limit_usd: 100.0,
        pressure: pressure.then(|| Pressure {
            at_share: 0.75,
            strategy: "cost-first".into(),
            applies_to: vec!["balanced".into()],
        }),
    };
    Arc::new(RuleBook::new(
        Arc::new(Gate::new()),
        vec![],
        vec![rule, tenant_rule],
        1_000,
        1_000,
    ))
}

fn spend(book: &RuleBook, model: &str, tenant: &str, usd: f64) {
    let ids = book.ids_for(tenant, "", model, "p").unwrap();
    let gate = book.gate();
    let reservation = gate.reserve(&[], &ids.budgets, 1, usd, NOW).unwrap();
    gate.settle(reservation, 1, usd, NOW).unwrap();
}

fn names(router: &Router, decision: &Decision) -> Vec<String> {
    decision
        .candidates
        .iter()
        .map(|c| router.name(c.index).to_owned())
        .collect()
}

#[test]
fn a_candidate_over_its_budget_leaves_the_ranking_with_its_reason() {
    let book = per_model_budget(1.0, false);
    let router = router_with(&[], Some(Arc::clone(&book)));
    let input = ask("hello there");
    let all = router.route(&input, Stop::never(), NOW).unwrap();
    spend(&book, "big", "", 1.0);
    let decision = router.decide(&input, &[], Stop::never(), NOW).unwrap();
    let expected: Vec<String> = names(&router, &all)
        .into_iter()
        .filter(|name| name != "big")
        .collect();
    assert_eq!(names(&router, &decision), expected);
    assert!(decision
        .reasons
        .iter()
        .any(|r| r.starts_with("big excluded: budget 'b[model=big]' is exhausted; retry after ")));
}

#[test]
fn with_every_candidate_refused_the_soonest_clearing_denial_is_the_answer() {
    let book = per_model_budget(1.0, false);
    let router = router_with(&[], Some(Arc::clone(&book)));
    for model in ["cheap", "coder", "big"] {
        spend(&book, model, "", 1.0);
    }
    match router.decide(&ask("hello"), &[], Stop::never(), NOW) {
        Err(CoreError::Refused(Refusal::Quota(denial))) => {
            assert_eq!(denial.kind, DenialKind::Budget);
            assert!(denial.name.starts_with("b[model="));
            // The day's end.
            assert_eq!(denial.retry_after_s, 86_400.0);
        }
        other => panic!("expected a quota refusal, got {other:?}"),
    }
}

#[test]
fn budget_pressure_shifts_the_named_strategy() {
    let book = per_model_budget(1_000.0, true);
    let router = router_with(&[], Some(Arc::clone(&book)));
    let mut input = ask("a question of medium difficulty about the weather today");
    input.routing.strategy = "balanced";
    input.routing.tenant = "acme";
    assert_eq!(
        router.route(&input, Stop::never(), NOW).unwrap().strategy,
        "balanced"
    );
    spend(&book, "cheap", "acme", 87.5);
    let decision = router.route(&input, Stop::never(), NOW).unwrap();
    assert_eq!(decision.strategy, "cost-first");
    assert!(decision
        .reasons
        .contains(&"budget 't' is 88% used (>= 75%): balanced becomes cost-first".to_owned()));
}

#[test]
fn open_breakers_leave_the_ranking_unless_every_candidate_is_open() {
    let router = router_with(&[], None);
    let input = ask("hello there");
    let all = router.route(&input, Stop::never(), NOW).unwrap();
    let chosen = names(&router, &all)[0].clone();
    let open = [OpenBreaker {
        model: &chosen,
        retry_in_s: 12.34,
    }];
    let decision = router.decide(&input, &open, Stop::never(), NOW).unwrap();
    assert!(!names(&router, &decision).contains(&chosen));
    assert!(decision.reasons.contains(&format!(
        "{chosen} excluded: circuit breaker open (retry in 12.3s)"
    )));
    let every: Vec<String> = names(&router, &all);
    let open: Vec<OpenBreaker<'_>> = every
        .iter()
        .map(|model| OpenBreaker {
            model,
            retry_in_s: 1.0,
        })
        .collect();
    let decision = router.decide(&input, &open, Stop::never(), NOW).unwrap();
    assert_eq!(names(&router, &decision), every);
    assert_eq!(
        decision.reasons.len(),
        all.reasons.len() + every.len(),
        "{:?}",
        decision.reasons
    );
}

#[test]
fn retry_waits_read_as_python_writes_them() {
    for (x, written) in [
        (3600.0, "3.6e+03"),
        (86_400.0, "8.64e+04"),
        (0.05, "0.05"),
        (59.3, "59.3"),
        (123.456, "123"),
        (1e-5, "1e-05"),
        (0.000_123_4, "0.000123"),
        (999.7, "1e+03"),
        (1.0, "1"),
        (0.0, "0"),
    ] {
        assert_eq!(general3(x), written, "{x}");
    }
}
