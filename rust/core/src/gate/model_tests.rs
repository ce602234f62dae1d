//! The model-based property test of the token gate: random interleavings of reserve, settle,
//! release, stale settles and the passing of time across hour, day and month boundaries, checked
//! after every step against a simple model of what each budget and limit must hold. Costs are
//! multiples of 1/32 USD, so every sum is exact in f64 and ledgers are compared for equality.
//!
//! Properties, as lettered in the gate's issue: (a) a reservation is admitted only if it fits, and
//! leaves `spent + reserved <= limit`; (b) `spent` is exactly the sum of the actual costs settled
//! in the current window; (c) once every call has ended nothing is reserved, in flight or
//! outstanding; (d) `spent + reserved <= limit + excess`, where `excess` sums `max(0, actual -
//! estimate)` over the settles since the last admission; (e) windows start where the model's
//! independent calendar says; (f) a stale settle or release is refused and changes nothing.
//! `check` agrees with `reserve` and a refusal leaves no trace (all or nothing).

// Exact equality is the point (see above).
#![allow(clippy::float_cmp)]

use proptest::prelude::*;

use super::tests::{snapshot, FEB, JAN};
use super::*;
use crate::error::DenialKind;

/// 2024-01-31T23:50:00Z: ten minutes before an hour, a day and a month all end.
const JAN_END: f64 = 1_706_745_000.0;

/// name, rpm, tpm, concurrency.
type LimitRule = (&'static str, Option<f64>, Option<f64>, Option<u32>);

const LIMITS: [LimitRule; 3] = [
    ("l0", None, None, Some(3)),
    ("l1", Some(2.0), None, None),
    ("l2", Some(20.0), Some(2_000.0), Some(5)),
];
const BUDGETS: [(&str, f64, Window); 3] = [
    ("hourly", 4.0, Window::Hour),
    ("monthly", 2.5, Window::Month),
    ("lifetime", 6.0, Window::Total),
];

#[derive(Debug, Clone)]
enum Op {
    /// Bit i of `limits` / `budgets` lists rule i.
    Reserve {
        limits: u8,
        budgets: u8,
        tokens: u64,
        cost: u8,
    },
    Settle {
        pick: usize,
        tokens: u64,
        cost: u8,
    },
    Release {
        pick: usize,
    },
    /// Settle or release an id that was already settled or released.
    Stale {
        pick: usize,
        settle: bool,
    },
    Advance {
        seconds: u16,
    },
}

fn usd(units: u8) -> f64 {
    f64::from(units) / 32.0
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..8, 0u8..8, 0u64..3_000, 0u8..64).prop_map(|(limits, budgets, tokens, cost)| {
            Op::Reserve { limits, budgets, tokens, cost }
        }),
        // Actual costs reach 3 USD against estimates below 2, so overshoot happens.
        2 => (any::<usize>(), 0u64..4_000, 0u8..96)
            .prop_map(|(pick, tokens, cost)| Op::Settle { pick, tokens, cost }),
        1 => any::<usize>().prop_map(|pick| Op::Release { pick }),
        1 => (any::<usize>(), any::<bool>()).prop_map(|(pick, settle)| Op::Stale { pick, settle }),
        1 => (0u16..900).prop_map(|seconds| Op::Advance { seconds }),
    ]
}

fn members(mask: u8) -> Vec<usize> {
    (0..3).filter(|i| mask & (1 << i) != 0).collect()
}

/// A budget as the model sees it. `excess` is the sum of `max(0, actual - estimate)` over the
/// settles since the last successful reservation on this budget: the overshoot bound.
#[derive(Debug)]
struct BudgetModel {
    limit: f64,
    window: Window,
    key: i64,
    spent: f64,
    reserved: f64,
    excess: f64,
}

impl BudgetModel {
    /// Which window `now` falls in, computed independently of `window.rs`; the test's times stay
    /// between January 31st and February 2nd.
    fn key(window: Window, now: f64) -> (i64, f64) {
        match window {
            Window::Hour => {
                let hour = (now / 3_600.0).floor();
                (hour as i64, hour * 3_600.0)
            }
            Window::Month if now >= FEB => (1, FEB),
            Window::Month => (0, JAN),
            Window::Day => {
                let day = (now / 86_400.0).floor();
                (day as i64, day * 86_400.0)
            }
            Window::Total => (0, 0.0),
        }
    }

    fn roll(&mut self, now: f64) {
        let (key, _) = Self::key(self.window, now);
        if key != self.key {
            (self.key, self.spent) = (key, 0.0);
        }
    }
}

struct Held {
    id: ReservationId,
    limits: Vec<usize>,
    budgets: Vec<usize>,
    cost: f64,
}

struct Model {
    budgets: Vec<BudgetModel>,
    in_flight: [u32; 3],
    held: Vec<Held>,
    finished: Vec<ReservationId>,
}

impl Model {
    fn new(now: f64) -> Self {
        let budgets = BUDGETS
            .iter()
            .map(|&(_, limit, window)| BudgetModel {
                limit,
                window,
                key: BudgetModel::key(window, now).0,
                spent: 0.0,
                reserved: 0.0,
                excess: 0.0,
            })
            .collect();
        Self {
            budgets,
            in_flight: [0; 3],
            held: Vec::new(),
            finished: Vec::new(),
        }
    }

    fn finish(&mut self, pick: usize, actual: Option<f64>, now: f64) -> ReservationId {
        let held = self.held.swap_remove(pick % self.held.len());
        for &l in &held.limits {
            self.in_flight[l] -= 1;
        }
        for &b in &held.budgets {
            let budget = &mut self.budgets[b];
            budget.roll(now);
            budget.reserved = if self.held.iter().any(|h| h.budgets.contains(&b)) {
                budget.reserved - held.cost
            } else {
                0.0
            };
            if let Some(actual) = actual {
                budget.spent += actual;
                budget.excess += (actual - held.cost).max(0.0);
            }
        }
        self.finished.push(held.id);
        held.id
    }
}

/// Checks every budget, limit and the outstanding count against the model at `now`.
fn check_against(
    gate: &Gate,
    model: &mut Model,
    now: f64,
) -> std::result::Result<(), TestCaseError> {
    prop_assert_eq!(gate.outstanding_reservations(), model.held.len());
    for (id, budget) in model.budgets.iter_mut().enumerate() {
        budget.roll(now);
        let state = gate.budget_state(id, now).unwrap();
        prop_assert_eq!(state.window_start_s, BudgetModel::key(budget.window, now).1);
        prop_assert_eq!(state.spent_usd, budget.spent);
        prop_assert_eq!(state.reserved_usd, budget.reserved);
        // (d) overshoot only through settles since the last admission, each by its own error.
        prop_assert!(
            state.spent_usd + state.reserved_usd <= budget.limit + budget.excess,
            "{:?} {:?}",
            state,
            budget
        );
    }
    for (id, &in_flight) in model.in_flight.iter().enumerate() {
        prop_assert_eq!(gate.limit_state(id, now).unwrap().in_flight, in_flight);
    }
    Ok(())
}

fn run_reserve(
    gate: &Gate,
    model: &mut Model,
    (limits, budgets, tokens, cost): (Vec<usize>, Vec<usize>, u64, f64),
    now: f64,
) -> std::result::Result<(), TestCaseError> {
    let before = snapshot(gate, now);
    let expected = gate.check(&limits, &budgets, tokens, cost, now).unwrap();
    for &b in &budgets {
        model.budgets[b].roll(now);
    }
    let fits: [bool; 3] = std::array::from_fn(|b| {
        let m = &model.budgets[b];
        m.spent + m.reserved + cost <= m.limit
    });
    match (gate.reserve(&limits, &budgets, tokens, cost, now), expected) {
        (Ok(id), None) => {
            for &l in &limits {
                prop_assert!(LIMITS[l].3.is_none_or(|cap| model.in_flight[l] < cap));
                model.in_flight[l] += 1;
            }
            for &b in &budgets {
                // (a) admitted only if it fits, and then within the limit.
                prop_assert!(fits[b]);
                let state = gate.budget_state(b, now).unwrap();
                prop_assert!(state.spent_usd + state.reserved_usd <= model.budgets[b].limit);
                model.budgets[b].reserved += cost;
                model.budgets[b].excess = 0.0;
            }
            model.held.push(Held {
                id,
                limits,
                budgets,
                cost,
            });
        }
        (Err(CoreError::Denied(denial)), Some(expected)) => {
            prop_assert_eq!(&denial, &expected);
            // All or nothing: a refusal leaves no trace.
            prop_assert_eq!(snapshot(gate, now), before);
            let named = |name: &str| denial.name.as_ref() == name;
            match denial.kind {
                DenialKind::Budget => {
                    let b = BUDGETS.iter().position(|rule| named(rule.0)).unwrap();
                    prop_assert!(!fits[b]);
                }
                DenialKind::Concurrency => {
                    let l = LIMITS.iter().position(|rule| named(rule.0)).unwrap();
                    prop_assert!(model.in_flight[l] >= LIMITS[l].3.unwrap());
                }
                DenialKind::Rpm | DenialKind::Tpm => {}
            }
        }
        (outcome, expected) => {
            prop_assert!(false, "reserve {:?} but check {:?}", outcome, expected);
        }
    }
    Ok(())
}

proptest! {
    #[test]
    fn accounting_matches_the_model(ops in prop::collection::vec(arb_op(), 1..100)) {
        let gate = Gate::new();
        for (name, rpm, tpm, concurrency) in LIMITS {
            gate.add_rate_limit(name, rpm, tpm, concurrency).unwrap();
        }
        for (name, limit, window) in BUDGETS {
            gate.add_budget(name, limit, window).unwrap();
        }
        let mut now = JAN_END;
        let mut model = Model::new(now);
        for op in ops {
            match op {
                Op::Reserve { limits, budgets, tokens, cost } => {
                    let call = (members(limits), members(budgets), tokens, usd(cost));
                    run_reserve(&gate, &mut model, call, now)?;
                }
                Op::Settle { pick, tokens, cost } if !model.held.is_empty() => {
                    let id = model.finish(pick, Some(usd(cost)), now);
                    gate.settle(id, tokens, usd(cost), now).unwrap();
                }
                Op::Release { pick } if !model.held.is_empty() => {
                    let id = model.finish(pick, None, now);
                    gate.release(id, now).unwrap();
                }
                Op::Stale { pick, settle } if !model.finished.is_empty() => {
                    // (f) a stale id is refused and changes nothing.
                    let id = model.finished[pick % model.finished.len()];
                    let before = snapshot(&gate, now);
                    let result = if settle { gate.settle(id, 1, 1.0, now) } else { gate.release(id, now) };
                    prop_assert_eq!(result, Err(CoreError::UnknownReservation { id: i128::from(id.get()) }));
                    prop_assert_eq!(snapshot(&gate, now), before);
                }
                Op::Advance { seconds } => now += f64::from(seconds),
                Op::Settle { .. } | Op::Release { .. } | Op::Stale { .. } => {}
            }
            check_against(&gate, &mut model, now)?;
        }
        // (c) once every call has ended, nothing is held anywhere.
        for pick in 0..model.held.len() {
            let id = model.finish(0, (pick % 2 == 0).then_some(0.5), now);
            let result = if pick % 2 == 0 { gate.settle(id, 10, 0.5, now) } else { gate.release(id, now) };
            result.unwrap();
        }
        check_against(&gate, &mut model, now)?;
        prop_assert_eq!(gate.outstanding_reservations(), 0);
        for id in 0..BUDGETS.len() {
            prop_assert_eq!(gate.budget_state(id, now).unwrap().reserved_usd, 0.0);
        }
        for id in 0..LIMITS.len() {
            prop_assert_eq!(gate.limit_state(id, now).unwrap().in_flight, 0);
        }
    }
}
