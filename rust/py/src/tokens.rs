//! Token counting and the stop signal of long work: `BpeEncoding` (an encoding's ranks and
//! pattern), the counting functions Python calls directly, and `WorkStop`.

use pyo3::prelude::*;
use pyo3::pybacked::PyBackedStr;
use pyo3::types::PyDict;
use rustc_hash::{FxBuildHasher, FxHashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchpoint_core::{Bpe, Message, Stop, Tokenizer};

use crate::error::Result;

/// A request's stop signal (see `switchpoint_core::Stop`): the server makes one per request it
/// routes on a worker thread, and calls `stop()` when the caller cancels or the server stops.
#[pyclass(frozen, module = "switchpoint._native")]
pub struct WorkStop {
    pub(crate) inner: Arc<Stop>,
}

#[pymethods]
impl WorkStop {
    /// `timeout_s`: seconds from now after which the work stops by itself (the caller's deadline).
    #[new]
    #[pyo3(signature = (timeout_s = None))]
    fn new(timeout_s: Option<f64>) -> Self {
        let deadline = timeout_s
            .filter(|s| s.is_finite())
            .and_then(|s| Instant::now().checked_add(Duration::from_secs_f64(s.max(0.0))));
        Self {
            inner: Arc::new(Stop::new(deadline)),
        }
    }

    /// For one request's work on the event loop: it counts at most `counts_at_most` bytes
    /// exactly, for at most `budget_s` from now, and raises `LongWork` rather than count more
    /// (the caller then asks from a worker thread).
    #[staticmethod]
    fn on_loop(counts_at_most: usize, budget_s: f64) -> Self {
        let budget = Duration::try_from_secs_f64(budget_s.max(0.0)).unwrap_or(Duration::ZERO);
        Self {
            inner: Arc::new(Stop::on_loop(counts_at_most, budget)),
        }
    }

    fn stop(&self) {
        self.inner.stop();
    }

    #[getter]
    fn stopped(&self) -> bool {
        self.inner.is_stopped()
    }
}

/// A BPE encoding's ranks and pattern, as tiktoken builds one (`switchpoint.tokens` loads them).
#[pyclass(frozen, module = "switchpoint._native")]
pub struct BpeEncoding {
    inner: Arc<Bpe>,
}

#[pymethods]
impl BpeEncoding {
    #[new]
    fn new(ranks: &Bound<'_, PyDict>, pattern: &str) -> PyResult<Self> {
        let mut map = FxHashMap::with_capacity_and_hasher(ranks.len(), FxBuildHasher);
        for (token, rank) in ranks.iter() {
            map.insert(token.extract::<Vec<u8>>()?, rank.extract::<u32>()?);
        }
        Ok(Self {
            inner: Arc::new(Bpe::new(map, pattern).map_err(crate::error::Error::from)?),
        })
    }

    /// Which counter counts: "toktok" for tiktoken's own `cl100k_base`/`o200k_base` (pattern and
    /// ranks exactly tiktoken's), "regex" (tiktoken's pattern engine and merge) for any other.
    #[getter]
    fn counter(&self) -> &'static str {
        self.inner.counter_name()
    }
}

pub fn tokenizer(encoding: Option<&Bound<'_, BpeEncoding>>) -> Tokenizer {
    encoding.map_or(Tokenizer::Estimate, |e| {
        Tokenizer::Bpe(e.get().inner.clone())
    })
}

/// Tokens of `text` under `encoding` (the ~4 characters per token estimate when None).
#[pyfunction]
#[pyo3(signature = (text, encoding = None))]
pub fn count_text_tokens(text: &str, encoding: Option<&Bound<'_, BpeEncoding>>) -> Result<u64> {
    Ok(tokenizer(encoding).count_text(text, Stop::never())?)
}

/// Tokens of a prompt of `(role, content)` pairs under `encoding`, chat framing included.
#[pyfunction]
#[pyo3(signature = (messages, encoding = None))]
// PyO3 extracts the list by value; the counts borrow its strings.
#[allow(clippy::needless_pass_by_value)]
pub fn count_prompt_tokens(
    messages: Vec<(PyBackedStr, PyBackedStr)>,
    encoding: Option<&Bound<'_, BpeEncoding>>,
) -> Result<u64> {
    let messages: Vec<Message<'_>> = messages
        .iter()
        .map(|(role, content)| Message { role, content })
        .collect();
    Ok(tokenizer(encoding).count_messages(&messages, Stop::never())?)
}

/// What routing knows of a prompt's cl100k or o200k count without counting it: bounds that hold
/// for both encodings and the estimate between them (`switchpoint_core::TokenSpan`).
#[pyclass(frozen, get_all, module = "switchpoint._native")]
pub struct TokenSpan {
    low: u64,
    high: u64,
    estimate: u64,
}

#[pyfunction]
// PyO3 extracts the list by value; the pass borrows its strings.
#[allow(clippy::needless_pass_by_value)]
pub fn prompt_token_span(messages: Vec<(PyBackedStr, PyBackedStr)>) -> TokenSpan {
    let messages: Vec<Message<'_>> = messages
        .iter()
        .map(|(role, content)| Message { role, content })
        .collect();
    let span = switchpoint_core::prompt_span(&messages);
    TokenSpan {
        low: span.low,
        high: span.high,
        estimate: span.estimate,
    }
}
