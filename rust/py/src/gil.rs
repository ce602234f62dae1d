//! The one place the bindings release the GIL.
//!
//! Releasing and re-taking the GIL costs more than most core calls take, so calls hold it by
//! default (docs/architecture.md, "The Rust core": short operations keep it). A call whose size
//! makes it long goes through `run` with `long = true`, and only then lets other Python threads
//! run; so does every call made from a worker thread (`switchpoint.offload`, a call given a
//! `WorkStop`), where holding the GIL would stall the event loop's thread.

use pyo3::marker::Ungil;
use pyo3::Python;

/// Runs `work`, without the GIL when `long`.
pub fn run<T: Ungil>(py: Python<'_>, long: bool, work: impl Ungil + FnOnce() -> T) -> T {
    if long {
        py.detach(work)
    } else {
        work()
    }
}
