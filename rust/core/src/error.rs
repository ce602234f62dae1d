//! The one error type of the core. The binding crate turns every variant into `_native.CoreError`
//! through a single `From` impl, so the messages here are what Python callers (and, through the
//! servicer, gRPC clients) read: each one names the field or model it is about.

use thiserror::Error;

/// Everything the core can reject. No variant is ever produced by a panic path: invalid input from
/// Python is checked and reported here instead.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum CoreError {
    /// Strategy weights that cannot be normalised to a convex combination.
    #[error(
        "weights: must be finite and >= 0, not all zero \
         (got cost={cost}, latency={latency}, quality={quality})"
    )]
    InvalidWeights {
        cost: f64,
        latency: f64,
        quality: f64,
    },

    /// A model row that would make scoring meaningless (negative price, quality outside [0, 1], ...).
    #[error("model {model:?}: {field} {reason}")]
    InvalidModelSpec {
        model: String,
        field: &'static str,
        reason: String,
    },

    /// An index into the model table (or a candidate list) that does not name a model. Signed so
    /// that a negative index coming from Python is reported as itself rather than wrapped.
    #[error("{what} {index} out of range (table has {len} models)")]
    IndexOutOfRange {
        what: &'static str,
        index: i128,
        len: usize,
    },

    /// A latency-tracker slot that was never handed out by `LatencyTracker::slot`.
    #[error("latency slot {slot} is unknown (tracker has {len} slots)")]
    UnknownSlot { slot: i128, len: usize },

    /// Any other argument outside its domain; `field` is the argument's name as callers spell it.
    #[error("{field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
}

impl CoreError {
    /// Shorthand for the common `InvalidArgument` case.
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field,
            reason: reason.into(),
        }
    }
}

/// Result alias used across the crate.
pub type Result<T> = std::result::Result<T, CoreError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_message_names_the_field() {
        let err = CoreError::InvalidWeights {
            cost: -1.0,
            latency: 0.0,
            quality: 0.0,
        };
        let text = err.to_string();
        assert!(text.starts_with("weights: must be finite and >= 0, not all zero"));
        assert!(text.contains("cost=-1"));
    }

    #[test]
    fn model_spec_message_names_model_and_field() {
        let err = CoreError::InvalidModelSpec {
            model: "gpt-x".into(),
            field: "quality",
            reason: "must be in [0, 1], got 2".into(),
        };
        assert_eq!(
            err.to_string(),
            "model \"gpt-x\": quality must be in [0, 1], got 2"
        );
    }

    #[test]
    fn negative_index_is_reported_as_is() {
        let err = CoreError::IndexOutOfRange {
            what: "candidate index",
            index: -1,
            len: 3,
        };
        assert_eq!(
            err.to_string(),
            "candidate index -1 out of range (table has 3 models)"
        );
    }

    #[test]
    fn invalid_argument_shorthand() {
        let err = CoreError::invalid("total_ms", "must be finite and >= 0");
        assert_eq!(err.to_string(), "total_ms: must be finite and >= 0");
    }
}
