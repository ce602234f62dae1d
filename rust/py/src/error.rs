//! The one conversion from the core's error type to a Python exception.
//!
//! `CoreError` (Rust) and `PyErr` are both foreign to this crate, so the orphan rule forbids
//! `From<CoreError> for PyErr` directly; `Error` is the newtype that carries it. Every binding
//! method returns `Result<_, Error>` and `PyO3` converts through the impl below, so there is exactly
//! one place that decides how a core failure looks from Python.
//!
//! A gate denial becomes `GateDenied`, a subclass of `CoreError` whose `args` are
//! `(kind, name, retry_after_s)`. Under the stable ABI a `#[pyclass]` cannot extend an exception
//! type, so rather than per-instance attributes (which would need the exception built eagerly on
//! every denial), `register` gives the class three read-only properties over `args` and a
//! `__str__` that reads as a sentence; raising stays as cheap as for any other error.

use pyo3::create_exception;
use pyo3::exceptions::{PyAttributeError, PyException, PyTypeError};
use pyo3::prelude::*;
use switchpoint_core::{CoreError as RustError, Refusal};

create_exception!(
    switchpoint._native,
    CoreError,
    PyException,
    "Raised by the Rust core; message says what was wrong."
);

create_exception!(
    switchpoint._native,
    GateDenied,
    CoreError,
    "Raised by Gate.reserve when a rate limit or budget refuses the call; args are \
     (kind, name, retry_after_s)."
);

create_exception!(
    switchpoint._native,
    NoRoom,
    CoreError,
    "Raised when a request needs a new rule instance and server.state.max_scopes are alive: the \
     owner frees idle instances, then asks again."
);

create_exception!(
    switchpoint._native,
    LongWork,
    CoreError,
    "Raised when work asked on the event loop (WorkStop.on_loop) would count more bytes exactly \
     than the loop allows: the owner asks again from a worker thread."
);

/// Adds the exception types to the module and gives `GateDenied` its accessors.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("CoreError", py.get_type::<CoreError>())?;
    m.add("NoRoom", py.get_type::<NoRoom>())?;
    m.add("LongWork", py.get_type::<LongWork>())?;
    let denied = py.get_type::<GateDenied>();
    let property = py.import("builtins")?.getattr("property")?;
    denied.setattr(
        "kind",
        property.call1((wrap_pyfunction!(denial_kind, m)?,))?,
    )?;
    denied.setattr(
        "name",
        property.call1((wrap_pyfunction!(denial_name, m)?,))?,
    )?;
    denied.setattr(
        "retry_after_s",
        property.call1((wrap_pyfunction!(denial_retry_after_s, m)?,))?,
    )?;
    // A builtin function is not a descriptor, so on its own it would not receive the instance;
    // `partialmethod` binds it the way a Python `def` in the class body would be.
    let method = py.import("functools")?.getattr("partialmethod")?;
    denied.setattr(
        "__str__",
        method.call1((wrap_pyfunction!(denial_message, m)?,))?,
    )?;
    m.add("GateDenied", denied)
}

/// `GateDenied.kind`: "rpm", "tpm", "concurrency", "budget", "rpm-lease" or "tpm-lease".
#[pyfunction]
fn denial_kind<'py>(error: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    error.getattr("args")?.get_item(0)
}

/// `GateDenied.name`: the refusing rate limit's or budget's name.
#[pyfunction]
fn denial_name<'py>(error: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    error.getattr("args")?.get_item(1)
}

/// `GateDenied.retry_after_s`: seconds until the call could pass at the earliest.
#[pyfunction]
fn denial_retry_after_s<'py>(error: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    error.getattr("args")?.get_item(2)
}

/// `str(GateDenied)`: the core's message for the denial, rebuilt from `args`. A `GateDenied`
/// raised from Python with other args (a test double, say) reads as any exception would.
#[pyfunction]
fn denial_message(error: &Bound<'_, PyAny>) -> PyResult<String> {
    let args = error.getattr("args")?;
    if let Ok((kind, name, retry_after_s)) = args.extract::<(String, String, f64)>() {
        return Ok(format!(
            "{kind} limit {name:?} denies the call; retry after {retry_after_s} s"
        ));
    }
    let shown = if args.len()? == 1 {
        args.get_item(0)?
    } else {
        args
    };
    Ok(shown.str()?.to_string())
}

/// A core error on its way to Python, or a Python error met reading an argument.
#[derive(Debug)]
pub enum Error {
    Core(RustError),
    Python(PyErr),
}

impl From<RustError> for Error {
    fn from(error: RustError) -> Self {
        Self::Core(error)
    }
}

impl From<PyErr> for Error {
    fn from(error: PyErr) -> Self {
        Self::Python(error)
    }
}

impl From<Error> for PyErr {
    fn from(error: Error) -> Self {
        let error = match error {
            Error::Core(error) => error,
            Error::Python(error) => return error,
        };
        match error {
            RustError::Denied(denial) => GateDenied::new_err((
                denial.kind.as_str(),
                denial.name.to_string(),
                denial.retry_after_s,
            )),
            RustError::Refused(refusal) => refused(refusal),
            RustError::NoRoom { .. } => NoRoom::new_err(error.to_string()),
            RustError::LongWork { .. } => LongWork::new_err(error.to_string()),
            RustError::Stopped => {
                engine_error("DeadlineExceededError", (RustError::Stopped.to_string(),))
            }
            other => CoreError::new_err(other.to_string()),
        }
    }
}

/// A router refusal as the engine's own exception (`switchpoint.errors`), so the servicer maps it
/// to its gRPC status like any other.
fn refused(refusal: Refusal) -> PyErr {
    match refusal {
        Refusal::InvalidRequest { field, message } => {
            engine_error("InvalidRequestError", (field, message))
        }
        Refusal::TooLarge { field, message } => {
            engine_error("RequestTooLargeError", (field, message))
        }
        Refusal::NoEligibleModel(message) => engine_error("NoEligibleModelError", (message,)),
        Refusal::PolicyDenied(message) => engine_error("PolicyDeniedError", (message,)),
        Refusal::Quota(denial) => engine_error(
            "QuotaExceededError",
            (
                denial.kind.as_str(),
                denial.name.to_string(),
                denial.retry_after_s,
            ),
        ),
    }
}

/// An instance of one of the engine's own exceptions (`switchpoint.errors`), built from `args`.
fn engine_error<A: for<'py> pyo3::call::PyCallArgs<'py>>(name: &str, args: A) -> PyErr {
    Python::attach(|py| {
        match py
            .import("switchpoint.errors")
            .and_then(|errors| errors.getattr(name))
            .and_then(|class| class.call1(args))
        {
            Ok(exception) => PyErr::from_value(exception),
            Err(err) => err,
        }
    })
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

/// `object` lacks the attribute `name` the binding reads: a `TypeError` naming both, which is what
/// Python raises for an argument of the wrong type. Any other error from the lookup is kept.
pub fn not_a(object: &Bound<'_, PyAny>, name: &str, err: PyErr) -> PyErr {
    if err.is_instance_of::<PyAttributeError>(object.py()) {
        let type_name = object
            .get_type()
            .name()
            .map_or_else(|_| "?".to_owned(), |n| n.to_string());
        PyTypeError::new_err(format!("{type_name} object has no field {name:?}"))
    } else {
        err
    }
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
