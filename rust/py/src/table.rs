//! `ModelTable`: the routing table Python builds once per config load and scores per request.

use std::sync::Arc;

use pyo3::prelude::*;
use switchpoint_core::{ModelTable as Table, Request, Weights};

use crate::error::{index, tokens, Result};
use crate::gil;
use crate::latency::LatencyTracker;
use crate::model_spec::ModelSpec;
use crate::score_result::ScoreResult;

/// Scoring costs ~25 ns per candidate (criterion, rust/core/benches/scoring.rs), so beyond this
/// many candidates a request takes more than ~6 us and is scored without the GIL.
const DETACH_ABOVE_CANDIDATES: usize = 256;

/// The routing table: built once per config load, scored per request.
#[pyclass(frozen, module = "switchpoint._native")]
pub struct ModelTable {
    /// Shared with the `Router` built over it.
    pub(crate) inner: Arc<Table>,
}

#[pymethods]
impl ModelTable {
    #[new]
    #[pyo3(signature = (models, latency, min_samples = 20))]
    fn new(
        models: Vec<Bound<'_, ModelSpec>>,
        latency: &Bound<'_, LatencyTracker>,
        min_samples: u32,
    ) -> Result<Self> {
        let specs = models.into_iter().map(|m| m.get().inner.clone()).collect();
        let tracker = latency.get().inner.clone();
        Ok(Self {
            inner: Arc::new(Table::new(specs, tracker, min_samples)?),
        })
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }

    /// The latency-tracker slot of model `index`.
    fn slot(&self, index: i64) -> Result<usize> {
        let index = self::index("index", index, self.inner.len())?;
        Ok(self.inner.slot(index)?)
    }

    /// Score `candidates` (all models when None) for one request.
    ///
    /// Runs with the GIL held (microseconds, less than releasing it would cost) unless the
    /// candidate set is large; see `DETACH_ABOVE_CANDIDATES`.
    #[pyo3(signature = (
        input_tokens,
        output_tokens,
        weights,
        required_capabilities = 0,
        max_cost_usd = None,
        candidates = None,
    ))]
    // One argument per Python parameter of the public signature, plus the GIL token.
    #[allow(clippy::too_many_arguments)]
    fn score(
        &self,
        py: Python<'_>,
        input_tokens: i64,
        output_tokens: i64,
        weights: (f64, f64, f64),
        required_capabilities: u64,
        max_cost_usd: Option<f64>,
        candidates: Option<Vec<i64>>,
    ) -> Result<ScoreResult> {
        let len = self.inner.len();
        let candidates = candidates
            .map(|list| {
                list.into_iter()
                    .map(|i| index("candidate index", i, len))
                    .collect::<std::result::Result<Vec<usize>, _>>()
            })
            .transpose()?;
        let request = Request {
            input_tokens: tokens("input_tokens", input_tokens)?,
            output_tokens: tokens("output_tokens", output_tokens)?,
            weights: Weights::new(weights.0, weights.1, weights.2)?,
            required_capabilities,
            max_cost_usd,
            candidates: candidates.as_deref(),
        };
        let long = request.candidates.map_or(len, <[usize]>::len) > DETACH_ABOVE_CANDIDATES;
        Ok(gil::run(py, long, || self.inner.score(&request))?.into())
    }

    fn __repr__(&self) -> String {
        format!("ModelTable(models={})", self.inner.len())
    }
}
