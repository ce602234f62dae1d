//! `ScoreResult` and `ScoredCandidate`: the ranking handed back by `ModelTable.score`.
//!
//! The result keeps the Rust vectors; Python objects are built only for what the caller asks for
//! (`ranked` is a list of ints; per-candidate objects only through `candidates()`), so the common
//! "take the best index" path creates almost nothing.

use pyo3::prelude::*;
use switchpoint_core::{Candidate, Ranking};

/// A candidate as a plain tuple: (index, score, `norm_cost`, `norm_latency`, quality,
/// `estimated_cost_usd`, `estimated_latency_ms`, `latency_observed`).
type CandidateRow = (usize, f64, f64, f64, f64, f64, f64, bool);

#[pyclass(frozen, get_all, module = "switchpoint._native")]
pub struct ScoredCandidate {
    index: usize,
    score: f64,
    norm_cost: f64,
    norm_latency: f64,
    quality: f64,
    estimated_cost_usd: f64,
    estimated_latency_ms: f64,
    latency_observed: bool,
}

impl From<&Candidate> for ScoredCandidate {
    fn from(c: &Candidate) -> Self {
        Self {
            index: c.index,
            score: c.score,
            norm_cost: c.norm_cost,
            norm_latency: c.norm_latency,
            quality: c.quality,
            estimated_cost_usd: c.estimated_cost_usd,
            estimated_latency_ms: c.estimated_latency_ms,
            latency_observed: c.latency_observed,
        }
    }
}

#[pymethods]
impl ScoredCandidate {
    fn __repr__(&self) -> String {
        format!(
            "ScoredCandidate(index={}, score={:.4}, cost_usd={:.6}, latency_ms={:.1}, \
             quality={}, observed={})",
            self.index,
            self.score,
            self.estimated_cost_usd,
            self.estimated_latency_ms,
            self.quality,
            self.latency_observed
        )
    }
}

/// Eligible candidates best first, and the excluded ones with a reason.
#[pyclass(frozen, module = "switchpoint._native")]
pub struct ScoreResult {
    inner: Ranking,
}

impl From<Ranking> for ScoreResult {
    fn from(inner: Ranking) -> Self {
        Self { inner }
    }
}

#[pymethods]
impl ScoreResult {
    /// Number of eligible candidates.
    fn __len__(&self) -> usize {
        self.inner.ranked.len()
    }

    /// Indices of eligible models, best first.
    #[getter]
    fn ranked(&self) -> Vec<usize> {
        self.inner.ranked.iter().map(|c| c.index).collect()
    }

    /// Index of the best candidate, or None when none is eligible.
    fn best(&self) -> Option<usize> {
        self.inner.best()
    }

    /// Every eligible candidate, best first.
    fn candidates(&self) -> Vec<ScoredCandidate> {
        self.inner
            .ranked
            .iter()
            .map(ScoredCandidate::from)
            .collect()
    }

    /// Every eligible candidate, best first, as tuples in `ScoredCandidate`'s field order: one
    /// call for the request path instead of an object and eight attribute reads per candidate.
    fn rows(&self) -> Vec<CandidateRow> {
        self.inner
            .ranked
            .iter()
            .map(|c| {
                (
                    c.index,
                    c.score,
                    c.norm_cost,
                    c.norm_latency,
                    c.quality,
                    c.estimated_cost_usd,
                    c.estimated_latency_ms,
                    c.latency_observed,
                )
            })
            .collect()
    }

    /// Models that were candidates but not eligible, with the reason.
    fn excluded(&self) -> Vec<(usize, &'static str)> {
        self.inner
            .excluded
            .iter()
            .map(|&(index, reason)| (index, reason.as_str()))
            .collect()
    }

    fn __repr__(&self) -> String {
        format!(
            "ScoreResult(ranked={:?}, excluded={:?})",
            self.ranked(),
            self.excluded()
        )
    }
}
