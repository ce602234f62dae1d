//! `PredictedQuality`: what the quality predictor (python/switchpoint/routing/predictor) hands the
//! router for one model of one request, read by the router by name (`ChatInput.predicted`).

use pyo3::prelude::*;
use switchpoint_core::{CoreError, PredictedQuality as Core};

use crate::error::Result;

/// A model's predicted quality for one request and the evidence behind it.
#[pyclass(frozen, module = "switchpoint._native")]
#[derive(Clone, Copy)]
pub struct PredictedQuality {
    pub(crate) inner: Core,
}

#[pymethods]
impl PredictedQuality {
    /// `quality` in [0, 1]; `evidence` (>= 0) the weight of the outcomes behind it; `similar`
    /// the similar prompts found for the model, `ok` those of them that scored at least 0.5.
    #[new]
    #[pyo3(signature = (*, quality, evidence, similar, ok))]
    fn new(quality: f64, evidence: f64, similar: u32, ok: u32) -> Result<Self> {
        if !(0.0..=1.0).contains(&quality) {
            return Err(CoreError::invalid("quality", "must be within [0, 1]").into());
        }
        if !(evidence.is_finite() && evidence >= 0.0) {
            return Err(CoreError::invalid("evidence", "must be finite and >= 0").into());
        }
        if ok > similar {
            return Err(CoreError::invalid("ok", "must be at most `similar`").into());
        }
        Ok(Self {
            inner: Core {
                quality,
                evidence,
                similar,
                ok,
            },
        })
    }

    #[getter]
    fn quality(&self) -> f64 {
        self.inner.quality
    }

    #[getter]
    fn evidence(&self) -> f64 {
        self.inner.evidence
    }

    #[getter]
    fn similar(&self) -> u32 {
        self.inner.similar
    }

    #[getter]
    fn ok(&self) -> u32 {
        self.inner.ok
    }

    fn __repr__(&self) -> String {
        format!(
            "PredictedQuality(quality={}, evidence={}, similar={}, ok={})",
            self.inner.quality, self.inner.evidence, self.inner.similar, self.inner.ok
        )
    }
}
