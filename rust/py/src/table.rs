//! `ModelTable`: the routing table Python builds once per config load; the `Router` scores it.

use std::sync::Arc;

use pyo3::prelude::*;
use switchpoint_core::ModelTable as Table;

use crate::error::{index, Result};
use crate::latency::LatencyTracker;
use crate::model_spec::ModelSpec;

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

    fn __repr__(&self) -> String {
        format!("ModelTable(models={})", self.inner.len())
    }
}
