//! `RuleBook`: the config's rate limits and budgets over the gate (see
//! `switchpoint_core::RuleBook`), read from the config's `LimitConfig` and `BudgetConfig` objects by
//! attribute name. The router asks it on every decision; `TokenGate` asks it for a reservation's
//! ids, registers the instances it made (`take_created`) and tells it which it frees.

use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::PyDict;
use switchpoint_core::{
    describe_scope as describe, BudgetRule, Created, LimitRule, Pressure, ReservationId,
    RuleBook as Core, RuleKind, RuleMatch, Scope, ScopeKey, Wanted,
};

use crate::error::Result;
use crate::gate::Gate;
use crate::gate_state::Denial;

fn rule_match(rule: &Bound<'_, PyAny>) -> PyResult<RuleMatch> {
    let pairs = attr!(rule, "match")
        .cast::<PyDict>()?
        .iter()
        .map(|(key, value)| {
            let key =
                ScopeKey::parse(&key.extract::<String>()?).map_err(crate::error::Error::from)?;
            Ok((key, Wanted::parse(&value.extract::<String>()?)))
        })
        .collect::<PyResult<Vec<_>>>()?;
    Ok(RuleMatch::new(pairs))
}

fn limit_rule(rule: &Bound<'_, PyAny>) -> PyResult<LimitRule> {
    Ok(LimitRule {
        name: field!(rule, "name"),
        matches: rule_match(rule)?,
        rpm: field!(rule, "rpm"),
        tpm: field!(rule, "tpm"),
        concurrency: field!(rule, "concurrency"),
    })
}

fn budget_rule(rule: &Bound<'_, PyAny>) -> PyResult<BudgetRule> {
    let window: String = field!(rule, "window");
    let pressure = attr!(rule, "pressure");
    Ok(BudgetRule {
        name: field!(rule, "name"),
        matches: rule_match(rule)?,
        window: window.parse().map_err(crate::error::Error::from)?,
        limit_usd: field!(rule, "limit_usd"),
        pressure: if pressure.is_none() {
            None
        } else {
            Some(Pressure {
                at_share: field!(pressure, "at_share"),
                strategy: field!(pressure, "strategy"),
                applies_to: field!(pressure, "applies_to"),
            })
        },
    })
}

fn kind(name: &str) -> PyResult<RuleKind> {
    match name {
        "limit" => Ok(RuleKind::Limit),
        "budget" => Ok(RuleKind::Budget),
        other => Err(pyo3::exceptions::PyValueError::new_err(format!(
            "kind must be 'limit' or 'budget', not {other:?}"
        ))),
    }
}

fn scope_pairs(scope: &Scope) -> Vec<(&'static str, String)> {
    scope
        .iter()
        .map(|(key, value)| (key.as_str(), value.clone()))
        .collect()
}

/// A rule instance the book made, for the owner to register.
#[pyclass(frozen, get_all, module = "switchpoint._native")]
pub struct CreatedInstance {
    /// "limit" or "budget".
    kind: &'static str,
    /// The gate id.
    gate_id: usize,
    /// The rule's index among the config's limits or budgets.
    rule: usize,
    /// "name" or "name[tenant=acme]".
    name: String,
    /// The scope's (key, value) pairs, keys sorted.
    scope: Vec<(&'static str, String)>,
    /// The scope as names show it: "tenant=acme,stage=x".
    scope_name: String,
}

impl From<Created> for CreatedInstance {
    fn from(created: Created) -> Self {
        Self {
            kind: created.kind.as_str(),
            gate_id: created.id,
            rule: created.rule,
            name: created.name,
            scope: scope_pairs(&created.scope),
            scope_name: describe(&created.scope),
        }
    }
}

/// The rule instances of one (tenant, stage, model).
#[pyclass(frozen, get_all, module = "switchpoint._native")]
pub struct RuleIds {
    limits: Vec<usize>,
    budgets: Vec<usize>,
}

/// A live budget instance: its rule's index, scope and gate id.
#[pyclass(frozen, get_all, module = "switchpoint._native")]
pub struct BookedBudget {
    rule: usize,
    scope: Vec<(&'static str, String)>,
    gate_id: usize,
}

/// The config's rate limits and budgets over `gate`.
#[pyclass(frozen, module = "switchpoint._native")]
pub struct RuleBook {
    pub(crate) inner: Arc<Core>,
}

#[pymethods]
impl RuleBook {
    /// `limits` and `budgets` are the config's `LimitConfig` and `BudgetConfig` lists;
    /// `max_scopes` caps the instances alive in `gate`, `max_answers` the answers kept.
    #[new]
    #[pyo3(signature = (gate, *, limits, budgets, max_scopes, max_answers))]
    fn new(
        gate: &Bound<'_, Gate>,
        limits: &Bound<'_, PyAny>,
        budgets: &Bound<'_, PyAny>,
        max_scopes: usize,
        max_answers: usize,
    ) -> PyResult<Self> {
        let limits = limits
            .try_iter()?
            .map(|rule| limit_rule(&rule?))
            .collect::<PyResult<Vec<_>>>()?;
        let budgets = budgets
            .try_iter()?
            .map(|rule| budget_rule(&rule?))
            .collect::<PyResult<Vec<_>>>()?;
        Ok(Self {
            inner: Arc::new(Core::new(
                Arc::clone(&gate.get().inner),
                limits,
                budgets,
                max_scopes,
                max_answers,
            )),
        })
    }

    /// Whether no rule applies to anything.
    #[getter]
    fn empty(&self) -> bool {
        self.inner.is_empty()
    }

    /// The instances that apply to `model` (of `provider`) for `tenant` and `stage`, made where
    /// missing. Raises `NoRoom` past `max_scopes`.
    fn ids_for(&self, tenant: &str, stage: &str, model: &str, provider: &str) -> Result<RuleIds> {
        let ids = self.inner.ids_for(tenant, stage, model, provider)?;
        Ok(RuleIds {
            limits: ids.limits.clone(),
            budgets: ids.budgets.clone(),
        })
    }

    /// Reserves a call of `tokens` and `cost_usd` for `model` against every rule that applies
    /// (as `Gate.reserve`); None when no rule applies. Raises `GateDenied`, or `NoRoom`.
    #[allow(clippy::too_many_arguments)] // the request's four names, its two amounts, the time
    fn reserve(
        &self,
        tenant: &str,
        stage: &str,
        model: &str,
        provider: &str,
        tokens: u64,
        cost_usd: f64,
        now: f64,
    ) -> Result<Option<u64>> {
        Ok(self
            .inner
            .reserve(tenant, stage, model, provider, tokens, cost_usd, now)?
            .map(ReservationId::get))
    }

    /// The instances made since the last call.
    fn take_created(&self) -> Vec<CreatedInstance> {
        self.inner
            .take_created()
            .into_iter()
            .map(CreatedInstance::from)
            .collect()
    }

    /// Whether instances were made and not yet taken.
    #[getter]
    fn has_created(&self) -> bool {
        self.inner.has_created()
    }

    /// Forget instance `gate_id` ("limit" or "budget"), about to be freed, and every answer
    /// naming it.
    fn forget(&self, kind_name: &str, gate_id: usize) -> PyResult<()> {
        self.inner.forget(kind(kind_name)?, gate_id);
        Ok(())
    }

    /// Answers kept.
    fn __len__(&self) -> usize {
        self.inner.answers()
    }

    /// The first refusal of `model` for a call of `tokens` and `cost_usd` against the rules'
    /// limits; None when admissible. Reserves nothing.
    #[allow(clippy::too_many_arguments)] // the request's four names, its two amounts, the time
    fn refusal(
        &self,
        tenant: &str,
        stage: &str,
        model: &str,
        provider: &str,
        tokens: u64,
        cost_usd: f64,
        now: f64,
    ) -> Result<Option<Denial>> {
        Ok(self
            .inner
            .refusal(tenant, stage, model, provider, tokens, cost_usd, now)?
            .as_ref()
            .map(Denial::from))
    }

    /// Sets budget `name`'s limit for `scope` ((key, value) pairs; every instance when empty),
    /// for live and later instances; returns how many live ones changed.
    fn set_budget_limit(
        &self,
        name: &str,
        limit_usd: f64,
        scope: Vec<(String, String)>,
    ) -> PyResult<usize> {
        let scope = scope
            .into_iter()
            .map(|(key, value)| Ok((ScopeKey::parse(&key)?, value)))
            .collect::<switchpoint_core::Result<Vec<_>>>()
            .map_err(crate::error::Error::from)?;
        Ok(self
            .inner
            .set_budget_limit(name, limit_usd, &scope)
            .map_err(crate::error::Error::from)?)
    }

    /// Every live budget instance of this book.
    fn budget_instances(&self) -> Vec<BookedBudget> {
        self.inner
            .budget_instances()
            .into_iter()
            .map(|(rule, scope, gate_id)| BookedBudget {
                rule,
                scope: scope_pairs(&scope),
                gate_id,
            })
            .collect()
    }

    /// Take over `previous`'s instances of unchanged rules (see the core's `RuleBook::adopt`);
    /// returns the ("limit" | "budget", gate id) adopted.
    // PyO3 extracts the list by value.
    #[allow(clippy::needless_pass_by_value)]
    fn adopt(
        &self,
        previous: &Bound<'_, Self>,
        reset: Vec<String>,
        follows_shared: bool,
    ) -> Result<Vec<(&'static str, usize)>> {
        Ok(self
            .inner
            .adopt(&previous.get().inner, &reset, follows_shared)?
            .into_iter()
            .map(|(kind, id)| (kind.as_str(), id))
            .collect())
    }

    fn __repr__(&self) -> String {
        format!(
            "RuleBook(limits={}, budgets={})",
            self.inner.limit_rules().len(),
            self.inner.budget_rules().len()
        )
    }
}

/// "tenant=acme,stage=x": `scope`'s (key, value) pairs as instance names and shared state name
/// them, keys sorted.
#[pyfunction]
pub fn describe_scope(scope: Vec<(String, String)>) -> PyResult<String> {
    let mut pairs = scope
        .into_iter()
        .map(|(key, value)| Ok((ScopeKey::parse(&key)?, value)))
        .collect::<switchpoint_core::Result<Vec<_>>>()
        .map_err(crate::error::Error::from)?;
    pairs.sort();
    Ok(describe(&pairs))
}

/// What a refusal by a rate limit or budget says: "budget 'b' is exhausted; retry after 3.6e+03s".
#[pyfunction]
pub fn quota_message(kind: &str, name: &str, retry_after_s: f64) -> String {
    switchpoint_core::quota_message(kind, name, retry_after_s)
}

/// When a refused call may pass: "retry after 3.6e+03s", or "no retry" for never.
#[pyfunction]
pub fn retry_wait(retry_after_s: f64) -> String {
    switchpoint_core::retry_wait(retry_after_s)
}
