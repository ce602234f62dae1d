//! The token gate: a call's rate limits and budgets checked, reserved and settled together.
//!
//! Before a call, `reserve` takes one request, the estimated tokens and a concurrency slot from
//! every listed rate limit, and the estimated cost from every listed budget, or takes nothing.
//! After it, `settle` charges the real usage, or `release` abandons the call; either consumes the
//! reservation id, so nothing is ever refunded twice, and `outstanding_reservations` lets tests
//! (and health checks) see that nothing leaked.
//!
//! Locking: each rule has its own mutex and the gate never holds two locks at once. `reserve`
//! goes through the listed rules one at a time and, if one refuses, gives back what the earlier
//! ones took; the reservation table's shard lock is taken only after every rule lock has been
//! released. With no lock ever held while waiting for another, deadlock is impossible, and
//! callers on disjoint rules never meet. The price is that all-or-nothing holds in effect but
//! not instantaneously: for the microsecond between a refusal and its rollback, capacity taken by
//! the failing call is visible, and a concurrent call may be refused for it.
//!
//! Time is passed in by the caller. Budgets turn at UTC calendar boundaries, and rate-limit
//! leases at UTC minutes, so when a gate has budgets or leases `now` must be Unix epoch seconds;
//! the buckets only use differences between times. See `budget.rs` for the rollover rule and the
//! overshoot bound, `limits.rs` for the buckets, `lease.rs` for the rate limits' lease cap.

mod book;
mod matching;

pub use book::RuleBook;
pub use matching::{
    describe_scope, BudgetRule, Created, LimitRule, Pressure, RuleIds, RuleKind, RuleMatch, Scope,
    ScopeKey, Shift, Subject, Wanted,
};

use crate::budget::{check_usd, BudgetLedger, BudgetState};
use crate::error::{CoreError, Denial, Result};
use crate::limits::{LimitState, RateLimiter};
use crate::reservations::{Held, ReservationId, Reservations, MAX_RULES};
use crate::rules::{slot_index, Rules};
use crate::window::{check_now, Window};

/// The token gate. Every method takes `&self` and may be called from any thread.
pub struct Gate {
    limits: Rules<RateLimiter>,
    budgets: Rules<BudgetLedger>,
    reservations: Reservations,
}

impl std::fmt::Debug for Gate {
    // Counts only: rule state changes under other threads' feet and is read through the
    // `*_state` methods.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("limits", &self.limits.len())
            .field("budgets", &self.budgets.len())
            .field("outstanding", &self.reservations.len())
            .finish()
    }
}

impl Default for Gate {
    fn default() -> Self {
        Self::new()
    }
}

/// Whether a rule may be freed without losing anything, and since when nothing has used it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RuleActivity {
    /// Outstanding reservations naming the rule; it cannot be freed while any do.
    pub holds: u32,
    /// The last reserve, settle or release naming it; `None` if none ever did.
    pub last_used_s: Option<f64>,
}

/// Checks that a call names few enough rules and none twice (which would take twice from it).
/// Lists are a handful of ids, so the quadratic scan beats anything that would allocate.
/// Whether each id names a live rule is checked under that rule's lock, where it is used.
fn check_ids(limit_ids: &[usize], budget_ids: &[usize]) -> Result<()> {
    let rules = limit_ids.len() + budget_ids.len();
    if rules > MAX_RULES {
        return Err(CoreError::invalid(
            "limits",
            format!("a call may name at most {MAX_RULES} rate limits and budgets, got {rules}"),
        ));
    }
    for (what, field, ids) in [
        ("rate limit", "limits", limit_ids),
        ("budget", "budgets", budget_ids),
    ] {
        for (position, id) in ids.iter().enumerate() {
            if ids[..position].contains(id) {
                return Err(CoreError::invalid(
                    field,
                    format!("lists {what} {id} twice"),
                ));
            }
        }
    }
    Ok(())
}

impl Gate {
    pub fn new() -> Self {
        Self {
            limits: Rules::new("rate limit"),
            budgets: Rules::new("budget"),
            reservations: Reservations::default(),
        }
    }

    /// Adds a rate-limit rule and returns its id. Each limit is optional; a rule with none admits
    /// everything (and still counts calls in flight).
    ///
    /// # Errors
    /// `InvalidArgument` for an empty name, a per-minute limit that is not finite and > 0, or a
    /// concurrency of 0.
    pub fn add_rate_limit(
        &self,
        name: &str,
        rpm: Option<f64>,
        tpm: Option<f64>,
        concurrency: Option<u32>,
    ) -> Result<usize> {
        let limiter = RateLimiter::new(name, rpm, tpm, concurrency)?;
        self.limits
            .add(limiter)
            .ok_or_else(|| CoreError::invalid("name", "the gate is out of rate-limit ids"))
    }

    /// Adds a budget and returns its id.
    ///
    /// # Errors
    /// `InvalidArgument` for an empty name or a limit that is not finite and >= 0.
    pub fn add_budget(&self, name: &str, limit_usd: f64, window: Window) -> Result<usize> {
        let ledger = BudgetLedger::new(name, limit_usd, window)?;
        self.budgets
            .add(ledger)
            .ok_or_else(|| CoreError::invalid("name", "the gate is out of budget ids"))
    }

    /// Frees rate limit `id`: true if freed, false (changing nothing) while a reservation names
    /// it. Its id then names no rule; a later rule may reuse its memory, under another id.
    ///
    /// # Errors
    /// `UnknownRule`.
    pub fn remove_rate_limit(&self, id: usize) -> Result<bool> {
        self.limits.remove(id)
    }

    /// Frees budget `id`, as `remove_rate_limit` does a rate limit. Its spend is forgotten.
    ///
    /// # Errors
    /// `UnknownRule`.
    pub fn remove_budget(&self, id: usize) -> Result<bool> {
        self.budgets.remove(id)
    }

    /// Rate limits alive.
    pub fn limit_count(&self) -> usize {
        self.limits.len()
    }

    /// Budgets alive.
    pub fn budget_count(&self) -> usize {
        self.budgets.len()
    }

    /// (rate-limit, budget) slots ever allocated: the most rules of each kind alive at once.
    pub fn rule_slots(&self) -> (usize, usize) {
        (self.limits.slots(), self.budgets.slots())
    }

    /// # Errors
    /// `UnknownRule`.
    pub fn limit_activity(&self, id: usize) -> Result<RuleActivity> {
        let mut slot = self.limits.get(id)?;
        let live = slot.live();
        Ok(RuleActivity {
            holds: live.holds,
            last_used_s: live.last_used_s,
        })
    }

    /// # Errors
    /// `UnknownRule`.
    pub fn budget_activity(&self, id: usize) -> Result<RuleActivity> {
        let mut slot = self.budgets.get(id)?;
        let live = slot.live();
        Ok(RuleActivity {
            holds: live.holds,
            last_used_s: live.last_used_s,
        })
    }

    fn check_call(limit_ids: &[usize], budget_ids: &[usize], cost: f64, now: f64) -> Result<()> {
        check_now(now)?;
        check_usd("cost_usd", cost)?;
        check_ids(limit_ids, budget_ids)
    }

    /// Why reserving would be refused now, if it would: the first refusing rule, rate limits in
    /// the order listed and then budgets. Changes nothing; for routing eligibility and dry runs.
    ///
    /// # Errors
    /// `UnknownRule`, or `InvalidArgument` for a duplicate id, too many rules, a bad cost or time.
    pub fn check(
        &self,
        limit_ids: &[usize],
        budget_ids: &[usize],
        tokens: u64,
        cost_usd: f64,
        now_s: f64,
    ) -> Result<Option<Denial>> {
        Self::check_call(limit_ids, budget_ids, cost_usd, now_s)?;
        self.first_denial(
            limit_ids,
            budget_ids,
            |limit| limit.check(tokens, now_s),
            |budget| budget.check(cost_usd, now_s),
        )
    }

    /// The first denial of the listed rules, rate limits first, each asked by its own check.
    fn first_denial(
        &self,
        limit_ids: &[usize],
        budget_ids: &[usize],
        limit_denial: impl Fn(&RateLimiter) -> Option<Denial>,
        budget_denial: impl Fn(&BudgetLedger) -> Option<Denial>,
    ) -> Result<Option<Denial>> {
        for &id in limit_ids {
            if let Some(denial) = limit_denial(self.limits.get(id)?.rule()) {
                return Ok(Some(denial));
            }
        }
        for &id in budget_ids {
            if let Some(denial) = budget_denial(self.budgets.get(id)?.rule()) {
                return Ok(Some(denial));
            }
        }
        Ok(None)
    }

    /// `check` as routing asks it: against each rule's own limits. A lease (shared state) is
    /// this replica's slice of a limit, topped up from the shared pool when a reserve runs short,
    /// so a model is refused here only when the limit itself is spent, or this replica's own
    /// usage fills the minute.
    ///
    /// # Errors
    /// As `check`.
    pub fn check_limits(
        &self,
        limit_ids: &[usize],
        budget_ids: &[usize],
        tokens: u64,
        cost_usd: f64,
        now_s: f64,
    ) -> Result<Option<Denial>> {
        Self::check_call(limit_ids, budget_ids, cost_usd, now_s)?;
        self.first_denial(
            limit_ids,
            budget_ids,
            |limit| limit.check_limits(tokens, now_s),
            |budget| budget.check_limit(cost_usd, now_s),
        )
    }

    /// Reserves `tokens` and `cost_usd` against every listed rule, or nothing.
    ///
    /// # Errors
    /// `Denied` with the first refusing rule (as `check` orders them), after everything already
    /// taken has been given back; otherwise the errors of `check`.
    pub fn reserve(
        &self,
        limit_ids: &[usize],
        budget_ids: &[usize],
        tokens: u64,
        cost_usd: f64,
        now_s: f64,
    ) -> Result<ReservationId> {
        Self::check_call(limit_ids, budget_ids, cost_usd, now_s)?;
        // The slots taken so far, which is what a reservation stores and what `undo` gives back.
        let mut limit_slots = [0; MAX_RULES];
        let mut budget_slots = [0; MAX_RULES];
        for (taken, &id) in limit_ids.iter().enumerate() {
            // The guard is dropped at the end of the block: one lock at a time.
            let outcome = self.limits.get(id).and_then(|mut slot| {
                slot.rule()
                    .reserve(tokens, now_s)
                    .map_err(CoreError::Denied)?;
                slot.live().hold(now_s);
                Ok(slot_index(id))
            });
            match outcome {
                Ok(slot) => limit_slots[taken] = slot,
                Err(error) => {
                    self.undo(&limit_slots[..taken], &[], tokens, cost_usd, now_s);
                    return Err(error);
                }
            }
        }
        let limit_slots = &limit_slots[..limit_ids.len()];
        for (taken, &id) in budget_ids.iter().enumerate() {
            let outcome = self.budgets.get(id).and_then(|mut slot| {
                slot.rule()
                    .reserve(cost_usd, now_s)
                    .map_err(CoreError::Denied)?;
                slot.live().hold(now_s);
                Ok(slot_index(id))
            });
            match outcome {
                Ok(slot) => budget_slots[taken] = slot,
                Err(error) => {
                    self.undo(limit_slots, &budget_slots[..taken], tokens, cost_usd, now_s);
                    return Err(error);
                }
            }
        }
        let budget_slots = &budget_slots[..budget_ids.len()];
        let held = Held::new(limit_slots, budget_slots, tokens, cost_usd);
        self.reservations
            .insert(held)
            .inspect_err(|_| self.undo(limit_slots, budget_slots, tokens, cost_usd, now_s))
    }

    /// Gives back what a refused `reserve` had already taken, by slot. The rules hold, so every
    /// slot still has its rule.
    fn undo(
        &self,
        limit_slots: &[usize],
        budget_slots: &[usize],
        tokens: u64,
        cost_usd: f64,
        now_s: f64,
    ) {
        for &slot in limit_slots {
            if let Some(mut limiter) = self.limits.at_slot(slot) {
                limiter.rule().undo(tokens);
                limiter.live().unhold(now_s);
            }
        }
        for &slot in budget_slots {
            if let Some(mut ledger) = self.budgets.at_slot(slot) {
                ledger.rule().undo(cost_usd);
                ledger.live().unhold(now_s);
            }
        }
    }

    /// The reserved call finished, using `actual_tokens` and costing `actual_cost_usd`, which
    /// may be more or less than reserved; see `budget.rs` for the window it is charged to.
    ///
    /// # Errors
    /// `UnknownReservation` unless `id` is outstanding (a second settle or release of the same id
    /// is refused and changes nothing); `InvalidArgument` for a bad cost or time, which also
    /// changes nothing, leaving the reservation outstanding.
    pub fn settle(
        &self,
        id: ReservationId,
        actual_tokens: u64,
        actual_cost_usd: f64,
        now_s: f64,
    ) -> Result<()> {
        check_now(now_s)?;
        check_usd("cost_usd", actual_cost_usd)?;
        let held = self.reservations.take(id)?;
        for mut limit in held.limits().filter_map(|slot| self.limits.at_slot(slot)) {
            limit.rule().settle(held.tokens, actual_tokens, now_s);
            limit.live().unhold(now_s);
        }
        for mut ledger in held.budgets().filter_map(|slot| self.budgets.at_slot(slot)) {
            ledger.rule().settle(held.cost_usd, actual_cost_usd, now_s);
            ledger.live().unhold(now_s);
        }
        Ok(())
    }

    /// The reserved call is abandoned at no cost (it failed before the provider billed it, or was
    /// cancelled): concurrency, tokens and budget reservations come back, but the request stays
    /// counted against RPM, since the provider may have seen it.
    ///
    /// # Errors
    /// As `settle`.
    pub fn release(&self, id: ReservationId, now_s: f64) -> Result<()> {
        check_now(now_s)?;
        let held = self.reservations.take(id)?;
        for mut limit in held.limits().filter_map(|slot| self.limits.at_slot(slot)) {
            limit.rule().release(held.tokens, now_s);
            limit.live().unhold(now_s);
        }
        for mut ledger in held.budgets().filter_map(|slot| self.budgets.at_slot(slot)) {
            ledger.rule().release(held.cost_usd, now_s);
            ledger.live().unhold(now_s);
        }
        Ok(())
    }

    /// Budget `id` as of `now_s` (the window holding it). Changes nothing.
    ///
    /// # Errors
    /// `UnknownRule`; `InvalidArgument` for a bad time.
    pub fn budget_state(&self, id: usize, now_s: f64) -> Result<BudgetState> {
        check_now(now_s)?;
        Ok(self.budgets.get(id)?.rule().state(now_s))
    }

    /// # Errors
    /// `UnknownRule`; `InvalidArgument` unless `limit_usd` is finite and >= 0.
    pub fn set_budget_limit(&self, id: usize, limit_usd: f64) -> Result<()> {
        self.budgets.get(id)?.rule().set_limit(limit_usd)
    }

    /// Sets (or with `None` clears) budget `id`'s lease for the window holding `now_s`.
    ///
    /// # Errors
    /// `UnknownRule`; `InvalidArgument` for a lease that is not finite and >= 0, or a bad time.
    pub fn set_leased(&self, id: usize, leased_usd: Option<f64>, now_s: f64) -> Result<()> {
        check_now(now_s)?;
        self.budgets.get(id)?.rule().set_leased(leased_usd, now_s)
    }

    /// Returns budget `id`'s settled spend since the previous call, and starts counting afresh.
    ///
    /// # Errors
    /// `UnknownRule`.
    pub fn take_unreported_spend(&self, id: usize) -> Result<f64> {
        Ok(self.budgets.get(id)?.rule().take_unreported())
    }

    /// Sets (or with `None` clears) rate limit `id`'s allowances of requests and tokens for the
    /// UTC minute holding `now_s`.
    ///
    /// # Errors
    /// `UnknownRule`; `InvalidArgument` for an allowance that is not finite and >= 0 or for a
    /// limit (RPM, TPM) the rule does not have, or a bad time.
    pub fn set_limit_leased(
        &self,
        id: usize,
        requests: Option<f64>,
        tokens: Option<f64>,
        now_s: f64,
    ) -> Result<()> {
        check_now(now_s)?;
        self.limits
            .get(id)?
            .rule()
            .set_leased(requests, tokens, now_s)
    }

    /// Returns the requests and tokens consumed under rate limit `id` by calls that finished
    /// since the previous call, and starts counting afresh.
    ///
    /// # Errors
    /// `UnknownRule`.
    pub fn take_unreported_usage(&self, id: usize) -> Result<(u64, u64)> {
        Ok(self.limits.get(id)?.rule().take_unreported())
    }

    /// Rate limit `id` as of `now_s`. Changes nothing.
    ///
    /// # Errors
    /// `UnknownRule`; `InvalidArgument` for a bad time.
    pub fn limit_state(&self, id: usize, now_s: f64) -> Result<LimitState> {
        check_now(now_s)?;
        Ok(self.limits.get(id)?.rule().state(now_s))
    }

    /// Reservations neither settled nor released.
    pub fn outstanding_reservations(&self) -> usize {
        self.reservations.len()
    }
}

#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod tests;
