//! `classify`: the prompt classifier of auto routing (see `switchpoint_core::classify`).

use pyo3::prelude::*;
use switchpoint_core::Classification;

use crate::gil;

/// Regex matching is linear in the prompt; past this many bytes it outlasts what releasing the
/// GIL costs, so the GIL is released and other threads run meanwhile.
const DETACH_ABOVE_BYTES: usize = 64 * 1024;

/// Task class, complexity in [0, 1] and the signals behind it, for the last user message
/// `last_user` of a conversation of `total_chars` characters.
#[pyfunction]
pub fn classify(
    py: Python<'_>,
    last_user: &str,
    total_chars: usize,
) -> (&'static str, f64, Vec<String>) {
    let long = last_user.len() > DETACH_ABOVE_BYTES;
    let Classification {
        task_class,
        complexity,
        signals,
    } = gil::run(py, long, || {
        switchpoint_core::classify(last_user, total_chars)
    });
    (task_class, complexity, signals)
}
