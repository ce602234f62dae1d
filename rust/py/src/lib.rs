//! `switchpoint._native`: thin `PyO3` bindings over `switchpoint-core`, one file per exposed type.
//!
//! Nothing here decides anything: argument conversion, one error mapping (`error.rs`), and
//! delegation to the core. Calls hold the GIL (they take microseconds, see
//! docs/architecture.md, "The Rust core"); the exceptions, long prompts and work with a stop
//! signal, release it through `gil.rs`.

/// `$object.$name`: how the binding reads Python objects, by attribute name, so a field's
/// position never matters. An object without the attribute is the wrong type: `TypeError`.
macro_rules! attr {
    ($object:expr, $name:literal) => {
        $object
            .getattr(pyo3::intern!($object.py(), $name))
            .map_err(|err| crate::error::not_a(&$object, $name, err))?
    };
}

/// `$object.$name` extracted to the type the context asks for; a value that does not fit (out of
/// range, wrong type) raises the conversion's own error, unwrapped.
macro_rules! field {
    ($object:expr, $name:literal) => {
        attr!($object, $name).extract()?
    };
}

mod decision;
mod error;
mod gate;
mod gate_state;
mod gil;
mod input;
mod latency;
mod model_spec;
mod predicted;
mod quota;
mod router;
mod table;
mod tokens;

use pyo3::prelude::*;

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    error::register(m)?;
    m.add_class::<model_spec::ModelSpec>()?;
    m.add_class::<latency::LatencyTracker>()?;
    m.add_class::<table::ModelTable>()?;
    m.add_class::<gate::Gate>()?;
    m.add_class::<gate_state::BudgetState>()?;
    m.add_class::<gate_state::LimitState>()?;
    m.add_class::<gate_state::LimitUsage>()?;
    m.add_class::<gate_state::Denial>()?;
    m.add_class::<gate_state::RuleActivity>()?;
    m.add_class::<latency::Percentiles>()?;
    m.add_class::<router::RouteCount>()?;
    m.add_class::<router::OverheadHistogram>()?;
    m.add_class::<router::Router>()?;
    m.add_class::<router::Routed>()?;
    m.add_class::<tokens::BpeEncoding>()?;
    m.add_class::<router::RouteTally>()?;
    m.add_class::<quota::RuleBook>()?;
    m.add_class::<quota::CreatedInstance>()?;
    m.add_class::<quota::RuleIds>()?;
    m.add_class::<quota::BookedBudget>()?;
    m.add_class::<decision::Decision>()?;
    m.add_class::<decision::ScoredModel>()?;
    m.add_class::<predicted::PredictedQuality>()?;
    m.add_class::<decision::Level>()?;
    m.add_class::<tokens::WorkStop>()?;
    m.add_function(wrap_pyfunction!(tokens::count_text_tokens, m)?)?;
    m.add_function(wrap_pyfunction!(tokens::count_prompt_tokens, m)?)?;
    m.add_class::<tokens::TokenSpan>()?;
    m.add_function(wrap_pyfunction!(tokens::prompt_token_span, m)?)?;
    m.add("EXACT_BELOW_BYTES", switchpoint_core::EXACT_BELOW_BYTES)?;
    m.add(
        "REMEMBERED_FROM_BYTES",
        switchpoint_core::REMEMBERED_FROM_BYTES,
    )?;
    m.add_function(wrap_pyfunction!(model_spec::capability_bits, m)?)?;
    m.add_function(wrap_pyfunction!(quota::describe_scope, m)?)?;
    m.add_function(wrap_pyfunction!(quota::quota_message, m)?)?;
    m.add_function(wrap_pyfunction!(quota::retry_wait, m)?)?;
    let builtin = pyo3::types::PyDict::new(m.py());
    for (name, [cost, latency, quality]) in switchpoint_core::BUILTIN_STRATEGIES {
        builtin.set_item(name, (cost, latency, quality))?;
    }
    m.add("BUILTIN_STRATEGIES", builtin)?;
    let mut task_classes = switchpoint_core::TASK_CLASSES.to_vec();
    task_classes.push(switchpoint_core::DEFAULT_TASK_CLASS);
    m.add(
        "TASK_CLASSES",
        pyo3::types::PyTuple::new(m.py(), task_classes)?,
    )?;
    Ok(())
}
