//! What the gate reports about one rule, as frozen classes read by name: a budget's window, a rate
//! limit's buckets and its lease minute, a refusal, and whether a rule is in use.

use pyo3::prelude::*;
use switchpoint_core::{
    BudgetState as CoreBudget, Denial as CoreDenial, LimitState as CoreLimit, MinuteUsage,
    RuleActivity as CoreActivity,
};

/// Why the gate would refuse a call: the first refusing rule and how long until it could pass.
#[pyclass(frozen, get_all, module = "switchpoint._native")]
pub struct Denial {
    /// "rpm", "tpm", "concurrency", "budget", "rpm-lease" or "tpm-lease".
    kind: &'static str,
    /// The refusing rule's name.
    name: String,
    /// Seconds until the call could pass at the earliest.
    retry_after_s: f64,
}

impl From<&CoreDenial> for Denial {
    fn from(denial: &CoreDenial) -> Self {
        Self {
            kind: denial.kind.as_str(),
            name: denial.name.to_string(),
            retry_after_s: denial.retry_after_s,
        }
    }
}

#[pymethods]
impl Denial {
    fn __repr__(&self) -> String {
        format!(
            "Denial(kind={:?}, name={:?}, retry_after_s={})",
            self.kind, self.name, self.retry_after_s
        )
    }
}

/// Whether a rule may be freed: reservations naming it, and its last use.
#[pyclass(frozen, get_all, module = "switchpoint._native")]
pub struct RuleActivity {
    /// Outstanding reservations naming the rule; it cannot be freed while any do.
    holds: u32,
    /// The last reserve, settle or release naming it (epoch seconds); None if none ever did.
    last_used_s: Option<f64>,
}

impl From<CoreActivity> for RuleActivity {
    fn from(activity: CoreActivity) -> Self {
        Self {
            holds: activity.holds,
            last_used_s: activity.last_used_s,
        }
    }
}

/// A budget as of the `now` asked about. Window bounds are epoch seconds; a "total" budget's
/// window is (0, inf).
#[pyclass(frozen, module = "switchpoint._native")]
pub struct BudgetState {
    inner: CoreBudget,
}

impl From<CoreBudget> for BudgetState {
    fn from(inner: CoreBudget) -> Self {
        Self { inner }
    }
}

#[pymethods]
impl BudgetState {
    #[getter]
    fn limit_usd(&self) -> f64 {
        self.inner.limit_usd
    }

    /// Settled cost of the calls that finished in the current window.
    #[getter]
    fn spent_usd(&self) -> f64 {
        self.inner.spent_usd
    }

    /// Estimates of the calls in flight.
    #[getter]
    fn reserved_usd(&self) -> f64 {
        self.inner.reserved_usd
    }

    #[getter]
    fn window_start_s(&self) -> f64 {
        self.inner.window_start_s
    }

    #[getter]
    fn window_end_s(&self) -> f64 {
        self.inner.window_end_s
    }

    /// What the window still allows after settled and reserved spend; never negative.
    #[getter]
    fn remaining_usd(&self) -> f64 {
        self.inner.remaining_usd()
    }

    /// Spent plus reserved as a share of the limit; 1 for a zero limit.
    #[getter]
    fn share_used(&self) -> f64 {
        self.inner.share_used()
    }

    /// Whether a call estimated at `cost_usd` fits beside what is spent and reserved.
    fn fits(&self, cost_usd: f64) -> bool {
        self.inner.fits(cost_usd)
    }

    fn __repr__(&self) -> String {
        let s = &self.inner;
        format!(
            "BudgetState(limit_usd={}, spent_usd={}, reserved_usd={}, window_start_s={}, \
             window_end_s={})",
            s.limit_usd, s.spent_usd, s.reserved_usd, s.window_start_s, s.window_end_s
        )
    }
}

/// A rate limit's buckets as of `now`. A bucket the rule does not have is None; a bucket may be
/// negative after a call used more tokens than it reserved.
#[pyclass(frozen, get_all, module = "switchpoint._native")]
pub struct LimitState {
    requests_available: Option<f64>,
    tokens_available: Option<f64>,
    in_flight: u32,
}

impl From<&CoreLimit> for LimitState {
    fn from(s: &CoreLimit) -> Self {
        Self {
            requests_available: s.requests_available,
            tokens_available: s.tokens_available,
            in_flight: s.in_flight,
        }
    }
}

#[pymethods]
impl LimitState {
    fn __repr__(&self) -> String {
        format!(
            "LimitState(requests_available={:?}, tokens_available={:?}, in_flight={})",
            self.requests_available, self.tokens_available, self.in_flight
        )
    }
}

/// The UTC minute holding `now` as a rate limit's lease cap counts it; an allowance is None
/// while uncapped.
#[pyclass(frozen, get_all, module = "switchpoint._native")]
pub struct LimitUsage {
    minute_start_s: f64,
    requests_done: u64,
    tokens_done: u64,
    requests_reserved: u64,
    tokens_reserved: u64,
    requests_leased: Option<f64>,
    tokens_leased: Option<f64>,
}

impl From<&MinuteUsage> for LimitUsage {
    fn from(m: &MinuteUsage) -> Self {
        Self {
            minute_start_s: m.start_s,
            requests_done: m.requests_done,
            tokens_done: m.tokens_done,
            requests_reserved: m.requests_reserved,
            tokens_reserved: m.tokens_reserved,
            requests_leased: m.requests_leased,
            tokens_leased: m.tokens_leased,
        }
    }
}

#[pymethods]
impl LimitUsage {
    fn __repr__(&self) -> String {
        format!(
            "LimitUsage(minute_start_s={}, requests_done={}, tokens_done={}, \
             requests_reserved={}, tokens_reserved={}, requests_leased={:?}, tokens_leased={:?})",
            self.minute_start_s,
            self.requests_done,
            self.tokens_done,
            self.requests_reserved,
            self.tokens_reserved,
            self.requests_leased,
            self.tokens_leased
        )
    }
}
