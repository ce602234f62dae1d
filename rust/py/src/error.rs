//! The one conversion from the core's error type to a Python exception.
//!
//! `CoreError` (Rust) and `PyErr` are both foreign to this crate, so the orphan rule forbids
//! `From<CoreError> for PyErr` directly; `Error` is the newtype that carries it. Every binding
//! method returns `Result<_, Error>` and `PyO3` converts through the impl below, so there is exactly
//! one place that decides how a core failure looks from Python.

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::PyErr;
use switchpoint_core::CoreError as RustError;

create_exception!(
    switchpoint._native,
    CoreError,
    PyException,
    "Raised by the Rust core; message says what was wrong."
);

/// A core error on its way to Python.
#[derive(Debug)]
pub struct Error(RustError);

impl From<RustError> for Error {
    fn from(error: RustError) -> Self {
        Self(error)
    }
}

impl From<Error> for PyErr {
    fn from(error: Error) -> Self {
        CoreError::new_err(error.0.to_string())
    }
}

/// Result of every fallible binding method.
pub type Result<T> = std::result::Result<T, Error>;

/// A Python index (possibly negative) into something of length `len`. Negative indices are
/// rejected rather than counted from the end: they always mean a caller bug here.
pub fn index(what: &'static str, value: i64, len: usize) -> std::result::Result<usize, RustError> {
    usize::try_from(value)
        .ok()
        .filter(|&index| index < len)
        .ok_or(RustError::IndexOutOfRange {
            what,
            index: i128::from(value),
            len,
        })
}

/// A Python token count: a non-negative int, reported as a `CoreError` naming `field` otherwise.
pub fn tokens(field: &'static str, value: i64) -> std::result::Result<u64, RustError> {
    u64::try_from(value)
        .map_err(|_| RustError::invalid(field, format!("must be >= 0, got {value}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_rejects_negative_and_past_end() {
        assert_eq!(index("index", 2, 3), Ok(2));
        let err = index("index", -1, 3).unwrap_err();
        assert_eq!(
            err.to_string(),
            "index -1 out of range (table has 3 models)"
        );
        assert!(index("index", 3, 3).is_err());
    }

    #[test]
    fn tokens_rejects_negative() {
        assert_eq!(tokens("output_tokens", 7), Ok(7));
        let err = tokens("output_tokens", -7).unwrap_err();
        assert_eq!(err.to_string(), "output_tokens: must be >= 0, got -7");
    }
}
