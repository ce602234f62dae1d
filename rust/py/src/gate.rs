//! `Gate`: the token gate. Python reserves a call's estimated tokens and cost against its rate
//! limits and budgets before the call, and settles or releases the reservation after it.
//!
//! Every method holds the GIL: a gate call costs less than releasing and re-taking the GIL would
//! (docs/benchmarks.md; criterion, rust/core/benches/gate.rs).

use std::sync::Arc;

use pyo3::prelude::*;
use switchpoint_core::{CoreError as RustError, Gate as Core, ReservationId};

use crate::error::{tokens, Result};
use crate::gate_state::{BudgetState, Denial, LimitState, LimitUsage, RuleActivity};

/// Python rule ids are signed; a negative one is reported as itself, the way the core reports
/// an id past the end.
fn rule_id(what: &'static str, id: i64, len: usize) -> std::result::Result<usize, RustError> {
    usize::try_from(id).map_err(|_| RustError::UnknownRule {
        what,
        index: i128::from(id),
        len,
    })
}

fn rule_ids(
    what: &'static str,
    ids: Vec<i64>,
    len: usize,
) -> std::result::Result<Vec<usize>, RustError> {
    // i64 and usize have the same layout, so this collects in place without allocating.
    ids.into_iter().map(|id| rule_id(what, id, len)).collect()
}

fn reservation(id: i64) -> std::result::Result<ReservationId, RustError> {
    u64::try_from(id)
        .map(ReservationId::from_raw)
        .map_err(|_| RustError::UnknownReservation { id: i128::from(id) })
}

/// The token gate: rate limits (RPM, TPM, concurrency; leased per UTC minute when shared) and
/// budgets (USD per UTC window), with reservations settled or released after each call.
#[pyclass(frozen, module = "switchpoint._native")]
pub struct Gate {
    /// Shared with the `RuleBook` the router asks.
    pub(crate) inner: Arc<Core>,
}

impl Gate {
    fn limit(&self, id: i64) -> std::result::Result<usize, RustError> {
        rule_id("rate limit", id, self.inner.limit_count())
    }

    fn budget(&self, id: i64) -> std::result::Result<usize, RustError> {
        rule_id("budget", id, self.inner.budget_count())
    }

    fn call(
        &self,
        limits: Vec<i64>,
        budgets: Vec<i64>,
        tokens: i64,
    ) -> std::result::Result<(Vec<usize>, Vec<usize>, u64), RustError> {
        Ok((
            rule_ids("rate limit", limits, self.inner.limit_count())?,
            rule_ids("budget", budgets, self.inner.budget_count())?,
            self::tokens("tokens", tokens)?,
        ))
    }
}

#[pymethods]
impl Gate {
    #[new]
    fn new() -> Self {
        Self {
            inner: Arc::new(Core::new()),
        }
    }

    /// Adds a rate-limit rule and returns its id; each limit is optional.
    #[pyo3(signature = (name, *, rpm = None, tpm = None, concurrency = None))]
    fn add_rate_limit(
        &self,
        name: &str,
        rpm: Option<f64>,
        tpm: Option<f64>,
        concurrency: Option<i64>,
    ) -> Result<usize> {
        let concurrency = concurrency
            .map(|value| {
                u32::try_from(value).map_err(|_| {
                    RustError::invalid("concurrency", format!("must be >= 1, got {value}"))
                })
            })
            .transpose()?;
        Ok(self.inner.add_rate_limit(name, rpm, tpm, concurrency)?)
    }

    /// Adds a budget and returns its id.
    #[pyo3(signature = (name, *, limit_usd, window))]
    fn add_budget(&self, name: &str, limit_usd: f64, window: &str) -> Result<usize> {
        Ok(self.inner.add_budget(name, limit_usd, window.parse()?)?)
    }

    /// Rate limits alive.
    fn limit_count(&self) -> usize {
        self.inner.limit_count()
    }

    /// Budgets alive.
    fn budget_count(&self) -> usize {
        self.inner.budget_count()
    }

    /// `(rate_limit_slots, budget_slots)`: the most rules of each kind that were alive at once.
    fn rule_slots(&self) -> (usize, usize) {
        self.inner.rule_slots()
    }

    /// Frees a rate limit: True if freed, False while a reservation names it. Its id then names
    /// no rule.
    fn remove_rate_limit(&self, limit: i64) -> Result<bool> {
        Ok(self.inner.remove_rate_limit(self.limit(limit)?)?)
    }

    /// Frees a budget (and forgets its spend): True if freed, False while a reservation names it.
    fn remove_budget(&self, budget: i64) -> Result<bool> {
        Ok(self.inner.remove_budget(self.budget(budget)?)?)
    }

    /// `(holds, last_used)`: reservations naming the rate limit now, and the time of the last
    /// reserve, settle or release that named it (None if none did).
    fn limit_activity(&self, limit: i64) -> Result<RuleActivity> {
        Ok(self.inner.limit_activity(self.limit(limit)?)?.into())
    }

    /// `limit_activity` for a budget.
    fn budget_activity(&self, budget: i64) -> Result<RuleActivity> {
        Ok(self.inner.budget_activity(self.budget(budget)?)?.into())
    }

    /// The first rule that would refuse the call, or `None`. Changes nothing.
    fn check(
        &self,
        limits: Vec<i64>,
        budgets: Vec<i64>,
        tokens: i64,
        cost_usd: f64,
        now: f64,
    ) -> Result<Option<Denial>> {
        let (limits, budgets, tokens) = self.call(limits, budgets, tokens)?;
        let denial = self.inner.check(&limits, &budgets, tokens, cost_usd, now)?;
        Ok(denial.as_ref().map(Denial::from))
    }

    /// Reserves the call against every listed rule, or nothing; raises `GateDenied` on refusal.
    fn reserve(
        &self,
        limits: Vec<i64>,
        budgets: Vec<i64>,
        tokens: i64,
        cost_usd: f64,
        now: f64,
    ) -> Result<u64> {
        let (limits, budgets, tokens) = self.call(limits, budgets, tokens)?;
        let id = self
            .inner
            .reserve(&limits, &budgets, tokens, cost_usd, now)?;
        Ok(id.get())
    }

    /// The call finished having used `tokens` and cost `cost_usd`.
    fn settle(&self, reservation: i64, tokens: i64, cost_usd: f64, now: f64) -> Result<()> {
        let tokens = self::tokens("tokens", tokens)?;
        Ok(self
            .inner
            .settle(self::reservation(reservation)?, tokens, cost_usd, now)?)
    }

    /// The call was abandoned at no cost; the request stays counted against RPM.
    fn release(&self, reservation: i64, now: f64) -> Result<()> {
        Ok(self.inner.release(self::reservation(reservation)?, now)?)
    }

    /// The budget's window as of `now`.
    fn budget_state(&self, budget: i64, now: f64) -> Result<BudgetState> {
        Ok(self.inner.budget_state(self.budget(budget)?, now)?.into())
    }

    fn set_budget_limit(&self, budget: i64, limit_usd: f64) -> Result<()> {
        Ok(self
            .inner
            .set_budget_limit(self.budget(budget)?, limit_usd)?)
    }

    /// This replica's lease for the window holding `now`; `None` leaves allowance mode.
    fn set_leased(&self, budget: i64, leased_usd: Option<f64>, now: f64) -> Result<()> {
        Ok(self
            .inner
            .set_leased(self.budget(budget)?, leased_usd, now)?)
    }

    /// Settled spend since the previous call, for the shared store.
    fn take_unreported_spend(&self, budget: i64) -> Result<f64> {
        Ok(self.inner.take_unreported_spend(self.budget(budget)?)?)
    }

    /// This replica's allowances of requests and tokens for the UTC minute holding `now`;
    /// `None` uncaps (both `None`: no lease cap at all).
    #[pyo3(signature = (limit, requests, tokens, now))]
    fn set_limit_leased(
        &self,
        limit: i64,
        requests: Option<f64>,
        tokens: Option<f64>,
        now: f64,
    ) -> Result<()> {
        Ok(self
            .inner
            .set_limit_leased(self.limit(limit)?, requests, tokens, now)?)
    }

    /// `(requests, tokens)` of the calls finished since the previous call, for the shared pools.
    fn take_unreported_usage(&self, limit: i64) -> Result<(u64, u64)> {
        Ok(self.inner.take_unreported_usage(self.limit(limit)?)?)
    }

    /// The UTC minute holding `now` as the lease cap counts it.
    fn limit_usage(&self, limit: i64, now: f64) -> Result<LimitUsage> {
        Ok(LimitUsage::from(
            &self.inner.limit_state(self.limit(limit)?, now)?.minute,
        ))
    }

    /// The rate limit's buckets and calls in flight as of `now`.
    fn limit_state(&self, limit: i64, now: f64) -> Result<LimitState> {
        Ok(LimitState::from(
            &self.inner.limit_state(self.limit(limit)?, now)?,
        ))
    }

    /// Reservations neither settled nor released.
    fn outstanding(&self) -> usize {
        self.inner.outstanding_reservations()
    }

    fn __repr__(&self) -> String {
        format!(
            "Gate(limits={}, budgets={}, outstanding={})",
            self.inner.limit_count(),
            self.inner.budget_count(),
            self.inner.outstanding_reservations()
        )
    }
}
