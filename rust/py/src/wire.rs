//! `encode_route_decision`: a `switchpoint.routing.Decision` as `switchpoint.v1.RouteDecision`
//! bytes (see `switchpoint_core::DecisionWire`).
//!
//! The decision and its candidates are read by attribute name, so a reordered or renamed field
//! cannot mislabel the wire.

use pyo3::prelude::*;
use pyo3::pybacked::PyBackedStr;
use pyo3::types::{PyBytes, PyTuple};
use switchpoint_core::{CandidateWire, DecisionWire};

/// A `ScoredModel`'s strings, held while the message borrows them.
struct CandidateFields {
    name: PyBackedStr,
    provider: PyBackedStr,
    score: f64,
    norm_cost: f64,
    norm_latency: f64,
    quality: f64,
    estimated_cost_usd: f64,
    estimated_latency_ms: f64,
    latency_observed: bool,
}

impl CandidateFields {
    fn read(candidate: &Bound<'_, PyAny>) -> PyResult<Self> {
        Ok(Self {
            name: field!(candidate, "name"),
            provider: field!(candidate, "provider"),
            score: field!(candidate, "score"),
            norm_cost: field!(candidate, "norm_cost"),
            norm_latency: field!(candidate, "norm_latency"),
            quality: field!(candidate, "quality"),
            estimated_cost_usd: field!(candidate, "estimated_cost_usd"),
            estimated_latency_ms: field!(candidate, "estimated_latency_ms"),
            latency_observed: field!(candidate, "latency_observed"),
        })
    }
}

/// The decision's `RouteDecision` message, serialized.
#[pyfunction]
pub fn encode_route_decision<'py>(
    py: Python<'py>,
    decision: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyBytes>> {
    let candidates = attr!(decision, "candidates")
        .try_iter()?
        .map(|candidate| CandidateFields::read(&candidate?))
        .collect::<PyResult<Vec<_>>>()?;
    // A decision's sequences are tuples; anything else is not a `Decision`.
    let reasons = attr!(decision, "reasons")
        .cast::<PyTuple>()?
        .iter()
        .map(|reason| reason.extract::<PyBackedStr>())
        .collect::<PyResult<Vec<_>>>()?;
    let strategy: PyBackedStr = field!(decision, "strategy");
    let task_class: PyBackedStr = field!(decision, "task_class");
    let (cost, latency, quality): (f64, f64, f64) = field!(decision, "weights");
    let wire = DecisionWire {
        candidates: candidates
            .iter()
            .map(|c| CandidateWire {
                model: &c.name,
                provider: &c.provider,
                score: c.score,
                norm_cost: c.norm_cost,
                norm_latency: c.norm_latency,
                quality: c.quality,
                estimated_cost_usd: c.estimated_cost_usd,
                estimated_latency_ms: c.estimated_latency_ms,
                latency_observed: c.latency_observed,
            })
            .collect(),
        level: field!(decision, "level"),
        reasons: reasons.iter().map(|r| &**r).collect(),
        strategy: &strategy,
        weights: [cost, latency, quality],
        input_tokens: field!(decision, "input_tokens"),
        output_tokens: field!(decision, "output_tokens"),
        task_class: &task_class,
        complexity: field!(decision, "complexity"),
    };
    Ok(PyBytes::new(py, &wire.encode()))
}
