//! Unit tests of the rule book: matching, instances made once and capped, answers forgotten with
//! their instances, pressure, routing's check against the limits, and a reload's adoption.

// Budget amounts here are binary fractions, exact in f64.
#![allow(clippy::float_cmp)]

use super::*;
use crate::error::DenialKind;
use crate::gate::matching::{Pressure, RuleMatch, Wanted};
use crate::window::Window;

/// 2024-02-01T00:00:00Z.
const NOW: f64 = 1_706_745_600.0;

fn each(key: ScopeKey) -> (ScopeKey, Wanted) {
    (key, Wanted::Each)
}

fn limit(name: &str, pairs: Vec<(ScopeKey, Wanted)>, rpm: Option<f64>) -> LimitRule {
    LimitRule {
        name: name.into(),
        matches: RuleMatch::new(pairs),
        rpm,
        tpm: None,
        concurrency: None,
    }
}

fn budget(name: &str, pairs: Vec<(ScopeKey, Wanted)>, limit_usd: f64) -> BudgetRule {
    BudgetRule {
        name: name.into(),
        matches: RuleMatch::new(pairs),
        window: Window::Day,
        limit_usd,
        pressure: None,
    }
}

fn book(limits: Vec<LimitRule>, budgets: Vec<BudgetRule>, max_scopes: usize) -> RuleBook {
    RuleBook::new(Arc::new(Gate::new()), limits, budgets, max_scopes, 1_000)
}

fn ids(book: &RuleBook, tenant: &str, model: &str) -> RuleIds {
    (*book.ids_for(tenant, "", model, "p").unwrap()).clone()
}

#[test]
fn a_match_selects_one_instance_per_value_of_each_star_key() {
    let tenant_stage = RuleMatch::new(vec![
        (ScopeKey::Tenant, Wanted::Each),
        (ScopeKey::Stage, Wanted::Only("review".into())),
    ]);
    let subject = |tenant, stage| Subject {
        tenant,
        stage,
        model: None,
    };
    assert_eq!(
        tenant_stage.select(&subject("acme", "review")),
        Some(vec![
            (ScopeKey::Stage, "review".into()),
            (ScopeKey::Tenant, "acme".into())
        ])
    );
    assert_eq!(tenant_stage.select(&subject("acme", "other")), None);
    // A rule on models applies only once a model is considered.
    let per_model = RuleMatch::new(vec![each(ScopeKey::Model)]);
    assert_eq!(per_model.select(&subject("acme", "")), None);
    assert_eq!(RuleMatch::default().select(&subject("x", "")), Some(vec![]));
}

#[test]
fn instances_are_made_once_queued_for_the_owner_and_named_by_scope() {
    let book = book(
        vec![limit("rpm", vec![each(ScopeKey::Tenant)], Some(60.0))],
        vec![budget("spend", vec![], 1.0)],
        100,
    );
    let first = ids(&book, "acme", "m");
    assert_eq!(ids(&book, "acme", "m"), first);
    // Another model of the same tenant shares both instances; another tenant gets its own limit.
    assert_eq!(ids(&book, "acme", "n"), first);
    let other = ids(&book, "bolt", "m");
    assert_ne!(other.limits, first.limits);
    assert_eq!(other.budgets, first.budgets);
    let created = book.take_created();
    let names: Vec<&str> = created.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["rpm[tenant=acme]", "spend", "rpm[tenant=bolt]"]);
    assert!(book.take_created().is_empty());
    assert_eq!(book.gate().limit_count() + book.gate().budget_count(), 3);
}

#[test]
fn past_max_scopes_no_instance_is_made_until_one_is_freed() {
    let book = book(
        vec![limit("rpm", vec![each(ScopeKey::Tenant)], Some(60.0))],
        vec![],
        2,
    );
    ids(&book, "a", "m");
    ids(&book, "b", "m");
    assert!(matches!(
        book.ids_for("c", "", "m", "p"),
        Err(CoreError::NoRoom { live: 2, max: 2 })
    ));
    // Known answers still come back.
    assert_eq!(ids(&book, "a", "m").limits.len(), 1);
    let freed = ids(&book, "b", "m").limits[0];
    book.forget(RuleKind::Limit, freed);
    assert!(book.gate().remove_rate_limit(freed).unwrap());
    assert_eq!(ids(&book, "c", "m").limits.len(), 1);
}

#[test]
fn forgetting_an_instance_drops_every_answer_naming_it() {
    let book = book(
        vec![],
        vec![budget("b", vec![each(ScopeKey::Tenant)], 1.0)],
        100,
    );
    let old = ids(&book, "t", "m").budgets[0];
    ids(&book, "t", "n");
    assert_eq!(book.answers(), 2);
    book.forget(RuleKind::Budget, old);
    assert_eq!(book.answers(), 0);
    book.gate().remove_budget(old).unwrap();
    let new = ids(&book, "t", "m").budgets[0];
    assert_ne!(new, old);
}

#[test]
fn answers_are_bounded_oldest_first() {
    let book = RuleBook::new(
        Arc::new(Gate::new()),
        vec![limit("l", vec![], Some(60.0))],
        vec![],
        100,
        3,
    );
    for tenant in ["a", "b", "c", "d", "e"] {
        ids(&book, tenant, "m");
    }
    assert_eq!(book.answers(), 3);
}

#[test]
fn routing_checks_the_limit_not_this_replicas_lease() {
    let book = book(vec![], vec![budget("b", vec![], 1.0)], 100);
    let id = ids(&book, "t", "m").budgets[0];
    // A lease of nothing refuses a reserve, but the budget itself has room: admissible.
    book.gate().set_leased(id, Some(0.0), NOW).unwrap();
    assert!(book.gate().reserve(&[], &[id], 1, 0.25, NOW).is_err());
    assert_eq!(book.refusal("t", "", "m", "p", 1, 0.25, NOW).unwrap(), None);
    // Over the limit itself, refused.
    let denial = book
        .refusal("t", "", "m", "p", 1, 2.0, NOW)
        .unwrap()
        .unwrap();
    assert_eq!((denial.kind, &*denial.name), (DenialKind::Budget, "b"));
}

#[test]
fn pressure_shifts_once_the_share_is_reached() {
    let mut pressured = budget("b", vec![each(ScopeKey::Tenant)], 1.0);
    pressured.pressure = Some(Pressure {
        at_share: 0.75,
        strategy: "cost-first".into(),
        applies_to: vec!["balanced".into()],
    });
    let book = book(vec![], vec![pressured], 100);
    assert_eq!(book.shift("t", "", NOW).unwrap(), None);
    let id = ids(&book, "t", "m").budgets[0];
    let reservation = book.gate().reserve(&[], &[id], 1, 0.75, NOW).unwrap();
    book.gate().settle(reservation, 1, 0.75, NOW).unwrap();
    let shift = book.shift("t", "", NOW).unwrap().unwrap();
    assert_eq!(shift.strategy, "cost-first");
    assert_eq!(
        shift.reason,
        "budget 'b' is 75% used (>= 75%): balanced becomes cost-first"
    );
    assert_eq!(book.shift("u", "", NOW).unwrap(), None);
}

#[test]
fn an_admin_limit_applies_to_live_and_later_instances() {
    let book = book(
        vec![],
        vec![budget("b", vec![each(ScopeKey::Tenant)], 1.0)],
        100,
    );
    let a = ids(&book, "a", "m").budgets[0];
    assert_eq!(book.set_budget_limit("b", 0.5, &[]).unwrap(), 1);
    let b = ids(&book, "b", "m").budgets[0];
    for id in [a, b] {
        assert_eq!(book.gate().budget_state(id, NOW).unwrap().limit_usd, 0.5);
    }
    let scoped = [(ScopeKey::Tenant, "a".to_owned())];
    assert_eq!(book.set_budget_limit("b", 0.25, &scoped).unwrap(), 1);
    assert_eq!(book.gate().budget_state(a, NOW).unwrap().limit_usd, 0.25);
    assert_eq!(book.gate().budget_state(b, NOW).unwrap().limit_usd, 0.5);
}

#[test]
fn a_reload_adopts_the_instances_of_unchanged_rules_only() {
    let gate = Arc::new(Gate::new());
    let rules = |rpm| {
        (
            vec![limit("rpm", vec![each(ScopeKey::Tenant)], Some(rpm))],
            vec![budget("b", vec![each(ScopeKey::Tenant)], 1.0)],
        )
    };
    let (limits, budgets) = rules(60.0);
    let old = RuleBook::new(Arc::clone(&gate), limits, budgets, 100, 100);
    let before = ids(&old, "t", "m");
    old.set_budget_limit("b", 0.5, &[]).unwrap();
    let (limits, budgets) = rules(30.0);
    let new = RuleBook::new(Arc::clone(&gate), limits, budgets, 100, 100);
    let adopted = new.adopt(&old, &[], false).unwrap();
    assert_eq!(adopted, [(RuleKind::Budget, before.budgets[0])]);
    let after = ids(&new, "t", "m");
    assert_eq!(after.budgets, before.budgets);
    assert_ne!(after.limits, before.limits);
    // The admin override outlives the reload.
    assert_eq!(
        gate.budget_state(after.budgets[0], NOW).unwrap().limit_usd,
        0.5
    );
    let elsewhere = book(vec![], vec![], 10);
    assert!(new.adopt(&elsewhere, &[], false).is_err());
}

#[test]
fn reserve_finds_the_rules_and_reserves_against_all_of_them() {
    let book = book(
        vec![limit("rpm", vec![each(ScopeKey::Tenant)], Some(60.0))],
        vec![budget("b", vec![each(ScopeKey::Model)], 0.5)],
        100,
    );
    let held = book
        .reserve("t", "", "m", "p", 1, 0.5, NOW)
        .unwrap()
        .unwrap();
    assert_eq!(book.gate().outstanding_reservations(), 1);
    match book.reserve("t", "", "m", "p", 1, 0.25, NOW) {
        Err(CoreError::Denied(denial)) => assert_eq!(&*denial.name, "b[model=m]"),
        other => panic!("expected the budget's denial, got {other:?}"),
    }
    book.gate().release(held, NOW).unwrap();
    let nothing = RuleBook::new(Arc::new(Gate::new()), vec![], vec![], 100, 100);
    assert_eq!(
        nothing.reserve("t", "", "m", "p", 1, 1.0, NOW).unwrap(),
        None
    );
}
