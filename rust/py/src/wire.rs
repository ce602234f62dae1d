//! `encode_route_decision`: a `switchpoint.routing.Decision` as `switchpoint.v1.RouteDecision`
//! bytes (see `switchpoint_core::DecisionWire`).
//!
//! The decision and its candidates are `NamedTuple`s read by position, which is a pointer load;
//! `DECISION_FIELDS` and `CANDIDATE_FIELDS` name the positions read, and the Python tests check
//! them against the tuples' `_fields`, so a reordered field fails a test instead of mislabelling
//! the wire.

use pyo3::prelude::*;
use pyo3::pybacked::PyBackedStr;
use pyo3::types::{PyBytes, PyTuple};
use switchpoint_core::{CandidateWire, DecisionWire};

pub const DECISION_FIELDS: [&str; 9] = [
    "candidates",
    "level",
    "reasons",
    "strategy",
    "weights",
    "input_tokens",
    "output_tokens",
    "task_class",
    "complexity",
];

pub const CANDIDATE_FIELDS: [&str; 10] = [
    "table_index",
    "name",
    "provider",
    "score",
    "norm_cost",
    "norm_latency",
    "quality",
    "estimated_cost_usd",
    "estimated_latency_ms",
    "latency_observed",
];

/// A candidate's fields, held while the message borrows its strings.
struct CandidateFields {
    name: PyBackedStr,
    provider: PyBackedStr,
    numbers: [f64; 6],
    latency_observed: bool,
}

fn candidate_fields(row: &Bound<'_, PyAny>) -> PyResult<CandidateFields> {
    let row = row.cast::<PyTuple>()?;
    let number = |i: usize| -> PyResult<f64> { row.get_item(i)?.extract() };
    Ok(CandidateFields {
        name: row.get_item(1)?.extract()?,
        provider: row.get_item(2)?.extract()?,
        numbers: [
            number(3)?,
            number(4)?,
            number(5)?,
            number(6)?,
            number(7)?,
            number(8)?,
        ],
        latency_observed: row.get_item(9)?.extract()?,
    })
}

/// The decision's `RouteDecision` message, serialized.
#[pyfunction]
pub fn encode_route_decision<'py>(
    py: Python<'py>,
    decision: &Bound<'py, PyTuple>,
) -> PyResult<Bound<'py, PyBytes>> {
    let candidates = decision
        .get_item(0)?
        .cast::<PyTuple>()?
        .iter()
        .map(|row| candidate_fields(&row))
        .collect::<PyResult<Vec<_>>>()?;
    let reasons = decision
        .get_item(2)?
        .cast::<PyTuple>()?
        .iter()
        .map(|reason| reason.extract::<PyBackedStr>())
        .collect::<PyResult<Vec<_>>>()?;
    let strategy: PyBackedStr = decision.get_item(3)?.extract()?;
    let task_class: PyBackedStr = decision.get_item(7)?.extract()?;
    let (cost, latency, quality): (f64, f64, f64) = decision.get_item(4)?.extract()?;
    let wire = DecisionWire {
        candidates: candidates
            .iter()
            .map(|c| CandidateWire {
                model: &c.name,
                provider: &c.provider,
                score: c.numbers[0],
                norm_cost: c.numbers[1],
                norm_latency: c.numbers[2],
                quality: c.numbers[3],
                estimated_cost_usd: c.numbers[4],
                estimated_latency_ms: c.numbers[5],
                latency_observed: c.latency_observed,
            })
            .collect(),
        level: decision.get_item(1)?.extract()?,
        reasons: reasons.iter().map(|r| &**r).collect(),
        strategy: &strategy,
        weights: [cost, latency, quality],
        input_tokens: decision.get_item(5)?.extract()?,
        output_tokens: decision.get_item(6)?.extract()?,
        task_class: &task_class,
        complexity: decision.get_item(8)?.extract()?,
    };
    Ok(PyBytes::new(py, &wire.encode()))
}
