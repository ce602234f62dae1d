//! `ModelSpec`: one routing-table row as Python builds it from config.

use pyo3::prelude::*;
use switchpoint_core::ModelSpec as Spec;

use crate::error::Result;

/// The capability bits of a config's models (see `switchpoint_core::capability_bits`): every
/// capability name in bit order, and each model's mask.
#[pyfunction]
// PyO3 extracts the lists by value.
#[allow(clippy::needless_pass_by_value)]
pub fn capability_bits(per_model: Vec<Vec<String>>) -> Result<(Vec<String>, Vec<u64>)> {
    Ok(switchpoint_core::capability_bits(&per_model)?)
}

/// One model row of the routing table, as loaded from config.
#[pyclass(frozen, module = "switchpoint._native")]
pub struct ModelSpec {
    pub(crate) inner: Spec,
}

#[pymethods]
impl ModelSpec {
    /// Validated here as well as at table build, so a bad config row fails where it is read.
    #[new]
    #[pyo3(signature = (
        name,
        *,
        input_per_mtok,
        output_per_mtok,
        context_window,
        quality,
        ttft_prior_ms,
        tpot_prior_ms,
        capabilities = 0,
    ))]
    // Mirrors the keyword-only Python constructor one argument per field; a builder would only
    // move the same list elsewhere.
    #[allow(clippy::too_many_arguments)]
    fn new(
        name: String,
        input_per_mtok: f64,
        output_per_mtok: f64,
        context_window: u64,
        quality: f64,
        ttft_prior_ms: f64,
        tpot_prior_ms: f64,
        capabilities: u64,
    ) -> Result<Self> {
        let inner = Spec {
            name,
            input_per_mtok,
            output_per_mtok,
            context_window,
            quality,
            ttft_prior_ms,
            tpot_prior_ms,
            capabilities,
        };
        inner.validate()?;
        Ok(Self { inner })
    }

    #[getter]
    fn name(&self) -> &str {
        &self.inner.name
    }

    #[getter]
    fn input_per_mtok(&self) -> f64 {
        self.inner.input_per_mtok
    }

    #[getter]
    fn output_per_mtok(&self) -> f64 {
        self.inner.output_per_mtok
    }

    #[getter]
    fn context_window(&self) -> u64 {
        self.inner.context_window
    }

    #[getter]
    fn quality(&self) -> f64 {
        self.inner.quality
    }

    #[getter]
    fn ttft_prior_ms(&self) -> f64 {
        self.inner.ttft_prior_ms
    }

    #[getter]
    fn tpot_prior_ms(&self) -> f64 {
        self.inner.tpot_prior_ms
    }

    #[getter]
    fn capabilities(&self) -> u64 {
        self.inner.capabilities
    }

    /// What a call costs at this model's prices (the formula scoring and billing share).
    fn cost_usd(&self, input_tokens: u64, output_tokens: u64) -> f64 {
        self.inner.cost_usd(input_tokens, output_tokens)
    }

    /// The configured latency of a call producing `output_tokens`.
    fn prior_latency_ms(&self, output_tokens: u64) -> f64 {
        self.inner.prior_latency_ms(output_tokens)
    }

    fn __repr__(&self) -> String {
        let s = &self.inner;
        format!(
            "ModelSpec({:?}, input_per_mtok={}, output_per_mtok={}, context_window={}, \
             quality={}, ttft_prior_ms={}, tpot_prior_ms={}, capabilities={})",
            s.name,
            s.input_per_mtok,
            s.output_per_mtok,
            s.context_window,
            s.quality,
            s.ttft_prior_ms,
            s.tpot_prior_ms,
            s.capabilities
        )
    }
}
