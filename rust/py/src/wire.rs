//! `encode_route_decision`: a `switchpoint.routing.Decision` as `switchpoint.v1.RouteDecision`
//! bytes, through the generated message type (`switchpoint_core::proto`).
//!
//! The decision and its candidates are read by attribute name, so a reordered or renamed field
//! cannot mislabel the wire.

use pyo3::prelude::*;
use pyo3::pybacked::PyBackedStr;
use pyo3::types::{PyBytes, PyTuple};
use switchpoint_core::proto::{self, ProtoMessage as _};
use switchpoint_core::Candidate;

/// A `ScoredModel` as the message's `Candidate`.
fn candidate(model: &Bound<'_, PyAny>) -> PyResult<proto::Candidate> {
    let scored = Candidate {
        index: 0,
        score: field!(model, "score"),
        norm_cost: field!(model, "norm_cost"),
        norm_latency: field!(model, "norm_latency"),
        quality: field!(model, "quality"),
        estimated_cost_usd: field!(model, "estimated_cost_usd"),
        estimated_latency_ms: field!(model, "estimated_latency_ms"),
        latency_observed: field!(model, "latency_observed"),
    };
    let mut candidate = proto::Candidate::default();
    let (name, provider): (PyBackedStr, PyBackedStr) =
        (field!(model, "name"), field!(model, "provider"));
    candidate.set_scored(&name, &provider, &scored);
    Ok(candidate)
}

/// The decision's `RouteDecision` message, serialized.
#[pyfunction]
pub fn encode_route_decision<'py>(
    py: Python<'py>,
    decision: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyBytes>> {
    let candidates = attr!(decision, "candidates")
        .try_iter()?
        .map(|model| candidate(&model?))
        .collect::<PyResult<Vec<_>>>()?;
    // A decision's sequences are tuples; anything else is not a `Decision`.
    let reasons = attr!(decision, "reasons")
        .cast::<PyTuple>()?
        .iter()
        .map(|reason| reason.extract::<String>())
        .collect::<PyResult<Vec<_>>>()?;
    let (cost, latency, quality): (f64, f64, f64) = field!(decision, "weights");
    let mut message = proto::RouteDecision {
        candidates,
        level: field!(decision, "level"),
        reasons,
        strategy: field!(decision, "strategy"),
        weights: Some(proto::Weights::of([cost, latency, quality])),
        estimated_input_tokens: field!(decision, "input_tokens"),
        estimated_output_tokens: field!(decision, "output_tokens"),
        task_class: field!(decision, "task_class"),
        complexity: proto::implicit(field!(decision, "complexity")),
        ..proto::RouteDecision::default()
    };
    message.set_chosen();
    Ok(PyBytes::new(py, &message.encode_to_vec()))
}
