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
//!
//! Rate-limit leases (the lease cap of `lease.rs`), with allowances set and cleared at random and
//! minutes turning: (g) a reservation passes a lease cap only if the call fits the allowance, so
//! at a successful reserve a minute's usage is within its allowance (tokens: except for the part
//! of an oversized call beyond the per-minute limit); (h) usage per minute and the allowances
//! match the model, an allowance turning to 0 when its minute ends; (i) what
//! `take_unreported_usage` hands over sums to what finished calls consumed (a request each, and
//! the actual tokens of settled calls), nothing lost and nothing twice.

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
    /// Set rate limit `limit`'s allowances (only for the limits it has; `None` uncaps).
    Lease {
        limit: usize,
        requests: Option<u8>,
        tokens: Option<u16>,
    },
    Take {
        limit: usize,
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
        2 => (0usize..3, prop::option::weighted(0.8, 0u8..8), prop::option::weighted(0.8, 0u16..6_000))
            .prop_map(|(limit, requests, tokens)| Op::Lease { limit, requests, tokens }),
        1 => (0usize..3).prop_map(|limit| Op::Take { limit }),
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

/// A rate limit's lease cap as the model sees it: the current minute's usage and allowances, and
/// what was consumed and taken over the whole run.
#[derive(Debug, Default)]
struct LeaseModel {
    minute: i64,
    requests_done: u64,
    tokens_done: u64,
    tokens_reserved: u64,
    requests_leased: Option<u64>,
    tokens_leased: Option<u64>,
    unreported: (u64, u64),
    consumed: (u64, u64),
    taken: (u64, u64),
}

impl LeaseModel {
    fn roll(&mut self, now: f64) {
        let minute = (now / 60.0).floor() as i64;
        if minute != self.minute {
            (self.minute, self.requests_done, self.tokens_done) = (minute, 0, 0);
            self.requests_leased = self.requests_leased.map(|_| 0);
            self.tokens_leased = self.tokens_leased.map(|_| 0);
        }
    }

    /// (requests fit, tokens fit) for a call of `tokens` on rule `l`, in flight `in_flight`.
    fn fits(&self, l: usize, in_flight: u32, tokens: u64) -> (bool, bool) {
        let requests = self
            .requests_leased
            .is_none_or(|allowed| self.requests_done + u64::from(in_flight) < allowed);
        let needed = LIMITS[l].2.map_or(tokens, |tpm| tokens.min(tpm as u64));
        let tokens = self
            .tokens_leased
            .is_none_or(|allowed| self.tokens_done + self.tokens_reserved + needed <= allowed);
        (requests, tokens)
    }
}

struct Held {
    id: ReservationId,
    limits: Vec<usize>,
    budgets: Vec<usize>,
    tokens: u64,
    cost: f64,
}

struct Model {
    budgets: Vec<BudgetModel>,
    in_flight: [u32; 3],
    leases: [LeaseModel; 3],
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
            leases: std::array::from_fn(|_| LeaseModel {
                minute: (now / 60.0).floor() as i64,
                ..LeaseModel::default()
            }),
            held: Vec::new(),
            finished: Vec::new(),
        }
    }

    /// Ends a held call: settled with (tokens, cost), or released with `None`.
    fn finish(&mut self, pick: usize, actual: Option<(u64, f64)>, now: f64) -> ReservationId {
        let held = self.held.swap_remove(pick % self.held.len());
        let tokens = actual.map_or(0, |(tokens, _)| tokens);
        for &l in &held.limits {
            self.in_flight[l] -= 1;
            let lease = &mut self.leases[l];
            lease.roll(now);
            lease.tokens_reserved -= held.tokens;
            lease.requests_done += 1;
            lease.tokens_done += tokens;
            lease.unreported = (lease.unreported.0 + 1, lease.unreported.1 + tokens);
            lease.consumed = (lease.consumed.0 + 1, lease.consumed.1 + tokens);
        }
        let actual = actual.map(|(_, cost)| cost);
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
    for (id, lease) in model.leases.iter_mut().enumerate() {
        lease.roll(now);
        let state = gate.limit_state(id, now).unwrap();
        prop_assert_eq!(state.in_flight, model.in_flight[id]);
        // (h) the minute, its usage and its allowances.
        let minute = state.minute;
        prop_assert_eq!(minute.start_s, lease.minute as f64 * 60.0);
        prop_assert_eq!(
            (minute.requests_done, minute.tokens_done),
            (lease.requests_done, lease.tokens_done)
        );
        prop_assert_eq!(minute.requests_reserved, u64::from(model.in_flight[id]));
        prop_assert_eq!(minute.tokens_reserved, lease.tokens_reserved);
        prop_assert_eq!(
            minute.requests_leased,
            lease.requests_leased.map(|a| a as f64)
        );
        prop_assert_eq!(minute.tokens_leased, lease.tokens_leased.map(|a| a as f64));
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
    for &l in &limits {
        model.leases[l].roll(now);
    }
    let lease_fits: [(bool, bool); 3] =
        std::array::from_fn(|l| model.leases[l].fits(l, model.in_flight[l], tokens));
    match (gate.reserve(&limits, &budgets, tokens, cost, now), expected) {
        (Ok(id), None) => {
            for &l in &limits {
                prop_assert!(LIMITS[l].3.is_none_or(|cap| model.in_flight[l] < cap));
                // (g) admitted only within the allowance.
                prop_assert_eq!(lease_fits[l], (true, true));
                model.in_flight[l] += 1;
                let lease = &mut model.leases[l];
                lease.tokens_reserved += tokens;
                let minute = gate.limit_state(l, now).unwrap().minute;
                let oversize = LIMITS[l]
                    .2
                    .map_or(0, |tpm| tokens.saturating_sub(tpm as u64));
                if let Some(allowed) = lease.requests_leased {
                    prop_assert!(minute.requests_done + minute.requests_reserved <= allowed);
                }
                if let Some(allowed) = lease.tokens_leased {
                    prop_assert!(minute.tokens_done + minute.tokens_reserved <= allowed + oversize);
                }
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
                tokens,
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
                DenialKind::RpmLease | DenialKind::TpmLease => {
                    let l = LIMITS.iter().position(|rule| named(rule.0)).unwrap();
                    let (requests, tokens) = lease_fits[l];
                    let requests_short = denial.kind == DenialKind::RpmLease;
                    let short = if requests_short {
                        !requests
                    } else {
                        requests && !tokens
                    };
                    prop_assert!(short, "{:?} but the model has {:?}", denial, lease_fits[l]);
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
                    let id = model.finish(pick, Some((tokens, usd(cost))), now);
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
                Op::Lease { limit, requests, tokens } => {
                    let (_, rpm, tpm, _) = LIMITS[limit];
                    let requests = requests.filter(|_| rpm.is_some()).map(u64::from);
                    let tokens = tokens.filter(|_| tpm.is_some()).map(u64::from);
                    gate.set_limit_leased(limit, requests.map(|a| a as f64), tokens.map(|a| a as f64), now).unwrap();
                    let lease = &mut model.leases[limit];
                    lease.roll(now);
                    (lease.requests_leased, lease.tokens_leased) = (requests, tokens);
                }
                Op::Take { limit } => {
                    // (i) hands over exactly what finished since the last take.
                    let lease = &mut model.leases[limit];
                    prop_assert_eq!(gate.take_unreported_usage(limit).unwrap(), lease.unreported);
                    lease.taken = (lease.taken.0 + lease.unreported.0, lease.taken.1 + lease.unreported.1);
                    lease.unreported = (0, 0);
                }
                Op::Settle { .. } | Op::Release { .. } | Op::Stale { .. } => {}
            }
            check_against(&gate, &mut model, now)?;
        }
        // (c) once every call has ended, nothing is held anywhere.
        for pick in 0..model.held.len() {
            let id = model.finish(0, (pick % 2 == 0).then_some((10, 0.5)), now);
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
            // (i) everything consumed was handed over, once.
            let lease = &model.leases[id];
            let (requests, tokens) = gate.take_unreported_usage(id).unwrap();
            prop_assert_eq!((lease.taken.0 + requests, lease.taken.1 + tokens), lease.consumed);
        }
    }
}
