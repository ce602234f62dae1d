//! What a decision looks like from Python: `Decision`, its ranked `ScoredModel`s and its `Level`,
//! frozen classes with named getters over the core's decision.
//!
//! A `Decision` keeps the core's decision (table indices) and the router that made it, so that the
//! router can admit it (`Router.admit`) and it can encode itself as `switchpoint.v1.RouteDecision`
//! without a field being copied out and read back.

use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};
use switchpoint_core::{Candidate, Decision as CoreDecision, Level as CoreLevel, Router};

use crate::predicted::PredictedQuality;

/// Which level decided: `switchpoint.v1.DecisionLevel`, whose numbers these are.
#[pyclass(eq, eq_int, frozen, hash, module = "switchpoint._native")]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Level {
    #[pyo3(name = "OVERRIDE")]
    Override = 1,
    #[pyo3(name = "STAGE")]
    Stage = 2,
    #[pyo3(name = "AUTO")]
    Auto = 3,
    #[pyo3(name = "FALLBACK")]
    Fallback = 4,
}

impl From<CoreLevel> for Level {
    fn from(level: CoreLevel) -> Self {
        match level {
            CoreLevel::Override => Self::Override,
            CoreLevel::Stage => Self::Stage,
            CoreLevel::Auto => Self::Auto,
            CoreLevel::Fallback => Self::Fallback,
        }
    }
}

#[pymethods]
// PyO3 hands methods `&self`, never `self`.
#[allow(clippy::trivially_copy_pass_by_ref)]
impl Level {
    /// "OVERRIDE", "STAGE", "AUTO" or "FALLBACK".
    #[getter]
    fn name(&self) -> &'static str {
        CoreLevel::from(*self).name()
    }

    /// The `switchpoint.v1.DecisionLevel` number.
    #[getter]
    fn value(&self) -> i32 {
        CoreLevel::from(*self).number()
    }

    fn __index__(&self) -> i32 {
        self.value()
    }

    /// Every level, in `switchpoint.v1.DecisionLevel` order.
    #[staticmethod]
    fn members() -> Vec<Self> {
        CoreLevel::ALL.iter().map(|&level| level.into()).collect()
    }
}

impl From<Level> for CoreLevel {
    fn from(level: Level) -> Self {
        match level {
            Level::Override => Self::Override,
            Level::Stage => Self::Stage,
            Level::Auto => Self::Auto,
            Level::Fallback => Self::Fallback,
        }
    }
}

/// One ranked candidate of a decision.
#[pyclass(frozen, module = "switchpoint._native")]
pub struct ScoredModel {
    candidate: Candidate,
    router: Arc<Router>,
}

#[pymethods]
impl ScoredModel {
    /// The model's index in the registry and the scoring table.
    #[getter]
    fn table_index(&self) -> usize {
        self.candidate.index
    }

    #[getter]
    fn name(&self) -> &str {
        self.router.name(self.candidate.index)
    }

    #[getter]
    fn provider(&self) -> &str {
        self.router.provider(self.candidate.index)
    }

    #[getter]
    fn score(&self) -> f64 {
        self.candidate.score
    }

    #[getter]
    fn norm_cost(&self) -> f64 {
        self.candidate.norm_cost
    }

    #[getter]
    fn norm_latency(&self) -> f64 {
        self.candidate.norm_latency
    }

    #[getter]
    fn quality(&self) -> f64 {
        self.candidate.quality
    }

    #[getter]
    fn estimated_cost_usd(&self) -> f64 {
        self.candidate.estimated_cost_usd
    }

    #[getter]
    fn estimated_latency_ms(&self) -> f64 {
        self.candidate.estimated_latency_ms
    }

    /// Whether the latency estimate comes from observed calls rather than the configured prior.
    #[getter]
    fn latency_observed(&self) -> bool {
        self.candidate.latency_observed
    }

    /// The prediction `quality` came from; None when it is the model's configured prior.
    #[getter]
    fn predicted(&self) -> Option<PredictedQuality> {
        self.candidate
            .predicted
            .filter(|p| p.similar > 0)
            .map(|inner| PredictedQuality { inner })
    }

    fn __repr__(&self) -> String {
        format!(
            "ScoredModel(name={:?}, score={})",
            self.name(),
            self.candidate.score
        )
    }
}

/// A routing decision: the ranked candidates, the level that decided and why.
#[pyclass(frozen, module = "switchpoint._native")]
pub struct Decision {
    pub(crate) inner: CoreDecision,
    pub(crate) router: Arc<Router>,
}

impl Decision {
    fn scored(&self, candidate: &Candidate) -> ScoredModel {
        ScoredModel {
            candidate: *candidate,
            router: Arc::clone(&self.router),
        }
    }
}

#[pymethods]
impl Decision {
    /// The ranked candidates, best first.
    #[getter]
    fn candidates<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, self.inner.candidates.iter().map(|c| self.scored(c)))
    }

    /// The first candidate: the model a call tries first.
    #[getter]
    fn chosen(&self) -> ScoredModel {
        // Every decision the core makes has a candidate, and admission never empties it.
        self.scored(&self.inner.candidates[0])
    }

    #[getter]
    fn level(&self) -> Level {
        self.inner.level.into()
    }

    #[getter]
    fn reasons<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, &self.inner.reasons)
    }

    #[getter]
    fn strategy(&self) -> &str {
        &self.inner.strategy
    }

    /// The strategy's (cost, latency, quality) weights as configured.
    #[getter]
    fn weights(&self) -> (f64, f64, f64) {
        let [cost, latency, quality] = self.inner.weights;
        (cost, latency, quality)
    }

    #[getter]
    fn input_tokens(&self) -> u64 {
        self.inner.input_tokens
    }

    #[getter]
    fn output_tokens(&self) -> u64 {
        self.inner.output_tokens
    }

    #[getter]
    fn task_class(&self) -> &'static str {
        self.inner.task_class
    }

    #[getter]
    fn complexity(&self) -> f64 {
        self.inner.complexity
    }

    /// The request's id, for a later Feedback call.
    #[getter]
    fn request_id(&self) -> &str {
        &self.inner.request_id
    }

    /// The probability with which the first candidate was chosen: 1 unless exploring.
    #[getter]
    fn choice_probability(&self) -> f64 {
        self.inner.choice_probability
    }

    /// The rule classifier's confidence in its own reading, in [0, 1] (even when a given reading
    /// replaced it); 0 when the auto level did not decide.
    #[getter]
    fn confidence(&self) -> f64 {
        self.inner.confidence
    }

    /// Models to try after the candidates when every candidate fails, in chain order.
    #[getter]
    fn fallback<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, self.inner.fallback.iter().map(|&i| self.router.name(i)))
    }

    /// The `switchpoint.v1.RouteDecision` message, serialized.
    fn encode<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.router.encode(&self.inner))
    }

    fn __repr__(&self) -> String {
        let chosen = self
            .inner
            .candidates
            .first()
            .map_or("", |c| self.router.name(c.index));
        format!(
            "Decision(chosen={chosen:?}, level={}, strategy={:?}, candidates={})",
            self.inner.level.name(),
            self.inner.strategy,
            self.inner.candidates.len()
        )
    }
}
