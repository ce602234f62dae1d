//! `switchpoint._native`: thin `PyO3` bindings over `switchpoint-core`, one file per exposed type.
//!
//! Nothing here decides anything: argument conversion, one error mapping (`error.rs`), and
//! delegation to the core. Calls hold the GIL (they take microseconds, see ARCHITECTURE.md, "The
//! Rust core"); the one exception, scoring a large candidate set, releases it through `gil.rs`.

mod classify;
mod error;
mod gate;
mod gate_state;
mod gil;
mod latency;
mod model_spec;
mod router;
mod score_result;
mod table;
mod tokens;
mod wire;

use pyo3::prelude::*;

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    error::register(m)?;
    m.add_class::<model_spec::ModelSpec>()?;
    m.add_class::<latency::LatencyTracker>()?;
    m.add_class::<score_result::ScoredCandidate>()?;
    m.add_class::<score_result::ScoreResult>()?;
    m.add_class::<table::ModelTable>()?;
    m.add_class::<gate::Gate>()?;
    m.add_class::<gate_state::BudgetState>()?;
    m.add_class::<gate_state::LimitState>()?;
    m.add_class::<gate_state::LimitUsage>()?;
    m.add_class::<router::Router>()?;
    m.add_class::<tokens::BpeEncoding>()?;
    m.add_class::<router::RouteTally>()?;
    m.add_class::<router::Admission>()?;
    m.add_class::<tokens::WorkStop>()?;
    m.add_function(wrap_pyfunction!(tokens::count_text_tokens, m)?)?;
    m.add_function(wrap_pyfunction!(tokens::count_prompt_tokens, m)?)?;
    m.add("CHAT_INPUT_FIELDS", router::CHAT_INPUT_FIELDS)?;
    m.add("ROUTING_FIELDS", router::ROUTING_FIELDS)?;
    m.add("PARAMS_FIELDS", router::PARAMS_FIELDS)?;
    m.add("CACHE_THRESHOLD_POSITION", router::CACHE_THRESHOLD_POSITION)?;
    m.add_function(wrap_pyfunction!(classify::classify, m)?)?;
    m.add_function(wrap_pyfunction!(wire::encode_route_decision, m)?)?;
    m.add("DECISION_FIELDS", wire::DECISION_FIELDS)?;
    m.add("CANDIDATE_FIELDS", wire::CANDIDATE_FIELDS)?;
    Ok(())
}
