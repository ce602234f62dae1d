//! switchpoint's hot path in pure Rust: the routing table, per-request scoring and the latency
//! tracker. No Python here; `rust/py` wraps these types for `switchpoint._native`.
//!
//! Flow: build a [`ModelTable`] once per config load over a shared [`LatencyTracker`]; per request
//! call [`ModelTable::score`] with a [`Request`]; after each call, [`LatencyTracker::record`] the
//! observed latency under the model's slot so later requests use live percentiles.

mod error;
mod histogram;
mod latency;
mod scoring;
mod slot;
mod table;

pub use error::{CoreError, Result};
pub use latency::{Clock, LatencyKind, LatencyTracker, ManualClock, MonotonicClock, Percentiles};
pub use scoring::{Candidate, Exclusion, Ranking, Request, Weights};
pub use table::{ModelSpec, ModelTable, MAX_PRICE_OR_PRIOR};
