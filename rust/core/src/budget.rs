//! Budgets: USD spend per UTC window (hour, day, month or all time), with reservations.
//!
//! A call reserves its estimated cost before it starts and settles with the real cost when it
//! ends. A reservation passes iff `spent + reserved + cost <= capacity`, where capacity is the
//! limit, or in allowance mode (several replicas sharing one budget through leases) the smaller of
//! the limit and this replica's lease.
//!
//! Rollover: when time reaches the window's end, `spent` starts again from zero and reservations
//! are carried into the new window. A call is charged to the window in which it finishes (the one
//! holding settle's `now`), and its reservation is removed from whichever window holds it then,
//! which after a rollover is the new one: an in-flight call holds capacity where its cost will
//! land. Windows only move forward; a `now` from before the current window (a caller whose clock
//! read raced another's) is treated as inside it.
//!
//! Overshoot: settling replaces an estimate by the actual cost, so `spent + reserved` can pass
//! capacity only through calls that cost more than they reserved, and once it has, nothing new is
//! admitted until it is back under. Hence `spent <= capacity + sum over R of max(0, actual -
//! estimate)`, where R is the set of reservations outstanding right after the last successful
//! reservation: at most (calls in flight) x (largest single estimate error), and exactly one
//! reservation's error when calls are serialised. Lowering the limit or a lease at run time is
//! outside this bound: what is already reserved stays reserved.

use std::sync::Arc;

use crate::error::{CoreError, Denial, DenialKind, Result, UNKNOWN_RETRY_AFTER_S};
use crate::window::{Span, Window};

/// A budget as stats and the lease manager see it, as of the `now` asked about.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetState {
    pub limit_usd: f64,
    pub leased_usd: Option<f64>,
    /// Settled cost of calls that finished in the current window.
    pub spent_usd: f64,
    /// Estimates of the calls in flight.
    pub reserved_usd: f64,
    pub window_start_s: f64,
    /// Infinite for a "total" budget.
    pub window_end_s: f64,
}

impl BudgetState {
    /// What the window still allows after settled and reserved spend; never negative.
    pub fn remaining_usd(&self) -> f64 {
        (self.limit_usd - self.spent_usd - self.reserved_usd).max(0.0)
    }

    /// Spent plus reserved as a share of the limit; 1 (fully used) for a zero limit.
    pub fn share_used(&self) -> f64 {
        if self.limit_usd > 0.0 {
            (self.spent_usd + self.reserved_usd) / self.limit_usd
        } else {
            1.0
        }
    }

    /// Whether a call estimated at `cost_usd` fits beside what is spent and reserved.
    pub fn fits(&self, cost_usd: f64) -> bool {
        self.spent_usd + self.reserved_usd + cost_usd <= self.limit_usd
    }
}

/// The part of a ledger that a rollover changes; `Copy`, so that read-only calls can roll a copy
/// and leave the ledger as it is.
#[derive(Debug, Clone, Copy)]
struct Account {
    span: Span,
    spent_usd: f64,
    reserved_usd: f64,
    /// Reservations holding part of `reserved_usd`. When the last one goes, `reserved_usd` is set
    /// to exactly zero, so rounding dust from many additions and subtractions can never keep a
    /// budget that is exactly full from admitting anything again.
    outstanding: u64,
    leased_usd: Option<f64>,
}

impl Account {
    /// This account as of `now_s`. A lease belongs to the window it was granted for, so a rollover
    /// turns it to zero until the lease manager leases from the new window's pool: keeping it
    /// would let a replica spend its old lease again in every window.
    fn at(self, window: Window, now_s: f64) -> Self {
        if now_s < self.span.end_s {
            return self;
        }
        Self {
            span: window.span_at(now_s),
            spent_usd: 0.0,
            leased_usd: self.leased_usd.map(|_| 0.0),
            ..self
        }
    }

    fn unreserve(&mut self, estimated_usd: f64) {
        debug_assert!(self.outstanding > 0, "more reservations removed than made");
        self.outstanding = self.outstanding.saturating_sub(1);
        self.reserved_usd = if self.outstanding == 0 {
            0.0
        } else {
            (self.reserved_usd - estimated_usd).max(0.0)
        };
    }
}

/// One budget's ledger. The gate keeps each behind its own mutex; costs and times reaching here
/// have been validated by the gate.
#[derive(Debug)]
pub(crate) struct BudgetLedger {
    name: Arc<str>,
    window: Window,
    limit_usd: f64,
    account: Account,
    /// Settled cost not yet handed to the shared store by `take_unreported`.
    unreported_usd: f64,
}

impl BudgetLedger {
    /// # Errors
    /// `InvalidArgument` for an empty name or a limit that is not finite and >= 0.
    pub(crate) fn new(name: &str, limit_usd: f64, window: Window) -> Result<Self> {
        if name.is_empty() {
            return Err(CoreError::invalid("name", "must not be empty"));
        }
        check_usd("limit_usd", limit_usd)?;
        Ok(Self {
            name: name.into(),
            window,
            limit_usd,
            account: Account {
                span: window.span_at(0.0),
                spent_usd: 0.0,
                reserved_usd: 0.0,
                outstanding: 0,
                leased_usd: None,
            },
            unreported_usd: 0.0,
        })
    }

    fn denial(&self, account: &Account, cost_usd: f64, now_s: f64) -> Option<Denial> {
        let capacity = account
            .leased_usd
            .map_or(self.limit_usd, |leased| leased.min(self.limit_usd));
        if account.spent_usd + account.reserved_usd + cost_usd <= capacity {
            return None;
        }
        // If settled spend alone leaves room under the limit, what blocks the call is calls in
        // flight or the lease, and either can change at any moment; otherwise only the next
        // window can help.
        let retry_after_s = if account.spent_usd + cost_usd <= self.limit_usd {
            UNKNOWN_RETRY_AFTER_S
        } else {
            account.span.end_s - now_s
        };
        Some(Denial {
            kind: DenialKind::Budget,
            name: Arc::clone(&self.name),
            retry_after_s,
        })
    }

    /// Why reserving `cost_usd` at `now_s` would be refused, if it would. Changes nothing.
    pub(crate) fn check(&self, cost_usd: f64, now_s: f64) -> Option<Denial> {
        self.denial(&self.account.at(self.window, now_s), cost_usd, now_s)
    }

    /// `check` as routing asks it: against the limit, not this replica's lease, which a reserve
    /// tops up from the shared budget first.
    pub(crate) fn check_limit(&self, cost_usd: f64, now_s: f64) -> Option<Denial> {
        self.check(cost_usd, now_s)
            .filter(|_| !self.state(now_s).fits(cost_usd))
    }

    pub(crate) fn reserve(&mut self, cost_usd: f64, now_s: f64) -> std::result::Result<(), Denial> {
        self.account = self.account.at(self.window, now_s);
        if let Some(denial) = self.denial(&self.account, cost_usd, now_s) {
            return Err(denial);
        }
        self.account.reserved_usd += cost_usd;
        self.account.outstanding += 1;
        Ok(())
    }

    /// Takes back a reservation made in the same gate call, when another rule refused.
    pub(crate) fn undo(&mut self, cost_usd: f64) {
        self.account.unreserve(cost_usd);
    }

    /// The reserved call finished and cost `actual_usd`: charged to the window holding `now_s`,
    /// whether more or less than estimated.
    pub(crate) fn settle(&mut self, estimated_usd: f64, actual_usd: f64, now_s: f64) {
        self.account = self.account.at(self.window, now_s);
        self.account.unreserve(estimated_usd);
        self.account.spent_usd += actual_usd;
        self.unreported_usd += actual_usd;
    }

    /// The reserved call was abandoned without cost.
    pub(crate) fn release(&mut self, estimated_usd: f64, now_s: f64) {
        self.account = self.account.at(self.window, now_s);
        self.account.unreserve(estimated_usd);
    }

    pub(crate) fn state(&self, now_s: f64) -> BudgetState {
        let account = self.account.at(self.window, now_s);
        BudgetState {
            limit_usd: self.limit_usd,
            leased_usd: account.leased_usd,
            spent_usd: account.spent_usd,
            reserved_usd: account.reserved_usd,
            window_start_s: account.span.start_s,
            window_end_s: account.span.end_s,
        }
    }

    /// An admin's change of the limit; takes effect for the next reservation.
    ///
    /// # Errors
    /// `InvalidArgument` unless `limit_usd` is finite and >= 0.
    pub(crate) fn set_limit(&mut self, limit_usd: f64) -> Result<()> {
        check_usd("limit_usd", limit_usd)?;
        self.limit_usd = limit_usd;
        Ok(())
    }

    /// The lease manager's grant for the window holding `now_s`: this replica may have at most
    /// `leased_usd` spent plus reserved in it. `None` leaves allowance mode (single replica, or
    /// fail-open while the shared store is unreachable).
    ///
    /// # Errors
    /// `InvalidArgument` unless `leased_usd` is `None` or finite and >= 0.
    pub(crate) fn set_leased(&mut self, leased_usd: Option<f64>, now_s: f64) -> Result<()> {
        if let Some(usd) = leased_usd {
            check_usd("leased_usd", usd)?;
        }
        // Roll first, so a lease granted for a new window is not zeroed by that window's rollover.
        self.account = self.account.at(self.window, now_s);
        self.account.leased_usd = leased_usd;
        Ok(())
    }

    /// Settled spend since the last call, for the lease manager to add to the shared store.
    pub(crate) fn take_unreported(&mut self) -> f64 {
        std::mem::take(&mut self.unreported_usd)
    }
}

/// Validates a USD amount from the caller (a limit, lease or cost).
///
/// # Errors
/// `InvalidArgument` naming `field` unless `usd` is finite and >= 0.
pub(crate) fn check_usd(field: &'static str, usd: f64) -> Result<()> {
    if usd.is_finite() && usd >= 0.0 {
        Ok(())
    } else {
        Err(CoreError::invalid(
            field,
            format!("must be finite and >= 0, got {usd}"),
        ))
    }
}

#[cfg(test)]
// Amounts here are binary fractions (0.25, 0.5, ...) or a single value added to zero, so they
// are exact and equality is what is meant.
#[allow(clippy::float_cmp)]
mod tests {
    use super::*;

    /// 2024-03-01T00:00:00Z.
    const MARCH: f64 = 1_709_251_200.0;
    const DAY: f64 = 86_400.0;

    fn retry(result: std::result::Result<(), Denial>) -> f64 {
        result.expect_err("must be denied").retry_after_s
    }

    #[test]
    fn validates_inputs() {
        assert!(BudgetLedger::new("", 1.0, Window::Day).is_err());
        for bad in [-1.0, f64::NAN, f64::INFINITY] {
            assert!(BudgetLedger::new("b", bad, Window::Day).is_err(), "{bad}");
        }
        let mut ledger = BudgetLedger::new("b", 1.0, Window::Day).unwrap();
        assert!(ledger.set_limit(-0.5).is_err());
        let err = ledger.set_leased(Some(f64::NAN), MARCH).unwrap_err();
        assert!(
            err.to_string().starts_with("leased_usd: must be finite"),
            "{err}"
        );
    }

    #[test]
    fn reserve_admits_up_to_the_limit_exactly() {
        let mut ledger = BudgetLedger::new("b", 1.0, Window::Day).unwrap();
        for _ in 0..4 {
            ledger.reserve(0.25, MARCH).unwrap();
        }
        // Calls in flight block it: they might be released at any moment.
        let wait = retry(ledger.reserve(0.25, MARCH));
        assert!((wait - UNKNOWN_RETRY_AFTER_S).abs() < f64::EPSILON);
        for _ in 0..4 {
            ledger.settle(0.25, 0.25, MARCH + 10.0);
        }
        // Settled spend blocks it: only the next day helps.
        assert!((retry(ledger.reserve(0.01, MARCH + 10.0)) - (DAY - 10.0)).abs() < 1e-6);
        let state = ledger.state(MARCH + 10.0);
        assert_eq!((state.spent_usd, state.reserved_usd), (1.0, 0.0));
        assert_eq!(
            (state.window_start_s, state.window_end_s),
            (MARCH, MARCH + DAY)
        );
    }

    #[test]
    fn settle_charges_the_actual_cost_even_past_the_limit() {
        let mut ledger = BudgetLedger::new("b", 1.0, Window::Month).unwrap();
        ledger.reserve(0.9, MARCH).unwrap();
        ledger.settle(0.9, 1.3, MARCH);
        let state = ledger.state(MARCH);
        assert_eq!((state.spent_usd, state.reserved_usd), (1.3, 0.0));
        // Zero-cost calls are refused too once over the limit.
        assert!(ledger.check(0.0, MARCH).is_some());
        assert!((ledger.take_unreported() - 1.3).abs() < f64::EPSILON);
        assert!(ledger.take_unreported().abs() < f64::EPSILON);
    }

    #[test]
    fn a_rollover_carries_reservations_and_charges_where_the_call_ends() {
        let mut ledger = BudgetLedger::new("b", 1.0, Window::Day).unwrap();
        ledger.reserve(0.5, MARCH - 1.0).unwrap();
        ledger.reserve(0.25, MARCH - 1.0).unwrap();
        ledger.settle(0.25, 0.25, MARCH - 0.5);
        assert_eq!(ledger.state(MARCH - 0.1).spent_usd, 0.25);
        // Reads do not roll the ledger; they show the window holding the time asked about.
        let next = ledger.state(MARCH);
        assert_eq!((next.spent_usd, next.reserved_usd), (0.0, 0.5));
        assert_eq!(next.window_start_s, MARCH);
        ledger.settle(0.5, 0.6, MARCH + 5.0);
        let state = ledger.state(MARCH + 5.0);
        assert_eq!((state.spent_usd, state.reserved_usd), (0.6, 0.0));
        // A late `now` from before the current window does not bring the old one back.
        ledger.reserve(0.1, MARCH - 2.0).unwrap();
        let state = ledger.state(MARCH - 2.0);
        assert_eq!((state.window_start_s, state.spent_usd), (MARCH, 0.6));
    }

    #[test]
    fn a_lease_caps_capacity_and_ends_with_its_window() {
        let mut ledger = BudgetLedger::new("b", 10.0, Window::Hour).unwrap();
        ledger.set_leased(Some(1.0), MARCH).unwrap();
        ledger.reserve(0.75, MARCH).unwrap();
        let wait = retry(ledger.reserve(0.5, MARCH));
        assert!((wait - UNKNOWN_RETRY_AFTER_S).abs() < f64::EPSILON);
        ledger.set_leased(Some(1.5), MARCH).unwrap();
        ledger.reserve(0.5, MARCH).unwrap();
        // The lease does not outlive its hour; the next hour needs a new one.
        assert_eq!(ledger.state(MARCH + 3_600.0).leased_usd, Some(0.0));
        assert!(ledger.check(0.01, MARCH + 3_600.0).is_some());
        ledger.set_leased(Some(2.0), MARCH + 3_600.0).unwrap();
        assert!(ledger.check(0.01, MARCH + 3_600.0).is_none());
        // Never more than the limit, whatever the lease.
        ledger.set_leased(Some(100.0), MARCH + 3_600.0).unwrap();
        assert!(ledger.check(10.0, MARCH + 3_600.0).is_some());
        ledger.set_leased(None, MARCH + 3_600.0).unwrap();
        assert_eq!(ledger.state(MARCH + 3_600.0).leased_usd, None);
    }

    #[test]
    fn lowering_the_limit_blocks_new_reservations_only() {
        let mut ledger = BudgetLedger::new("b", 5.0, Window::Total).unwrap();
        ledger.reserve(3.0, MARCH).unwrap();
        ledger.set_limit(2.0).unwrap();
        // Spent alone is over the new limit once settled, and a "total" budget never rolls.
        ledger.settle(3.0, 3.0, MARCH);
        assert_eq!(retry(ledger.reserve(0.0, MARCH)), f64::INFINITY);
        assert_eq!(ledger.state(MARCH).limit_usd, 2.0);
    }

    #[test]
    fn release_removes_the_reservation_without_cost_and_leaves_no_dust() {
        let mut ledger = BudgetLedger::new("b", 1.0, Window::Day).unwrap();
        for _ in 0..10 {
            ledger.reserve(0.1, MARCH).unwrap();
        }
        for _ in 0..10 {
            ledger.release(0.1, MARCH);
        }
        let state = ledger.state(MARCH);
        assert_eq!((state.spent_usd, state.reserved_usd), (0.0, 0.0));
        ledger.reserve(0.3, MARCH).unwrap();
        ledger.undo(0.3);
        assert_eq!(ledger.state(MARCH).reserved_usd, 0.0);
    }
}
