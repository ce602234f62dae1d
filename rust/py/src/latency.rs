//! `LatencyTracker`: per-model decayed latency histograms, shared with every `ModelTable`.

use std::sync::Arc;

use pyo3::prelude::*;
use switchpoint_core::{CoreError as RustError, LatencyKind, LatencyTracker as Tracker};

use crate::error::{tokens, Result};

/// A slot's latency percentiles, in milliseconds.
#[pyclass(frozen, get_all, module = "switchpoint._native")]
pub struct Percentiles {
    p50_ms: f64,
    p95_ms: f64,
    p99_ms: f64,
    /// The samples' decayed weights summed (a fresh sample weighs 1).
    samples: f64,
}

/// Per-model time-decayed latency histograms (total, TTFT, per output token).
///
/// Slots are keyed by model name and survive table rebuilds, so reloading config keeps history.
#[pyclass(frozen, module = "switchpoint._native")]
pub struct LatencyTracker {
    /// Shared with the tables built over it; a table keeps its tracker alive after reloads.
    pub(crate) inner: Arc<Tracker>,
}

impl LatencyTracker {
    /// Python slot ints are signed; anything not handed out by `slot` is a `CoreError`.
    fn slot_index(&self, slot: i64) -> std::result::Result<usize, RustError> {
        usize::try_from(slot).map_err(|_| RustError::UnknownSlot {
            slot: i128::from(slot),
            len: self.inner.len(),
        })
    }
}

#[pymethods]
impl LatencyTracker {
    #[new]
    #[pyo3(signature = (half_life_s = 300.0))]
    fn new(half_life_s: f64) -> Result<Self> {
        Ok(Self {
            inner: Arc::new(Tracker::new(half_life_s)?),
        })
    }

    /// The stable slot for `name`, created on first use.
    fn slot(&self, name: &str) -> Result<usize> {
        Ok(self.inner.slot(name)?)
    }

    /// Record one successful call. tpot is derived as `(total - ttft) / (output_tokens - 1)`.
    #[pyo3(signature = (slot, total_ms, ttft_ms = None, output_tokens = 0))]
    fn record(
        &self,
        slot: i64,
        total_ms: f64,
        ttft_ms: Option<f64>,
        output_tokens: i64,
    ) -> Result<()> {
        let output_tokens = tokens("output_tokens", output_tokens)?;
        Ok(self
            .inner
            .record(self.slot_index(slot)?, total_ms, ttft_ms, output_tokens)?)
    }

    /// The slot's percentiles of `kind`; zeros when there are no samples.
    fn percentiles(&self, slot: i64, kind: &str) -> Result<Percentiles> {
        let kind: LatencyKind = kind.parse()?;
        let p = self.inner.percentiles(self.slot_index(slot)?, kind)?;
        Ok(Percentiles {
            p50_ms: p.p50,
            p95_ms: p.p95,
            p99_ms: p.p99,
            samples: p.count,
        })
    }

    fn __repr__(&self) -> String {
        format!(
            "LatencyTracker(half_life_s={}, slots={})",
            self.inner.half_life_s(),
            self.inner.len()
        )
    }
}
