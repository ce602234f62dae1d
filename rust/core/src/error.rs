//! The one error type of the core. The binding crate turns every variant into `_native.CoreError`
//! through a single `From` impl, so the messages here are what Python callers (and, through the
//! servicer, gRPC clients) read: each one names the field or model it is about.
//!
//! A gate denial travels as a variant too (`Denied`), so that the bindings keep exactly one
//! conversion to Python: it becomes `_native.GateDenied`, a subclass of `_native.CoreError`.

use std::fmt;
use std::sync::Arc;

use thiserror::Error;

/// Retry hint when the gate cannot know how long a denial will last: a concurrency slot frees
/// when some call finishes, a budget's in-flight reservations when they settle, a lease (budget
/// or rate limit) when the lease manager tops it up. Short, so an admission queue re-checks soon rather than giving up.
pub const UNKNOWN_RETRY_AFTER_S: f64 = 0.05;

/// Which rule of the token gate refused a call.
///
/// `RpmLease` and `TpmLease` are kinds of their own, rather than `Rpm` and `Tpm` again, because
/// the caller must react differently: a bucket refusal is final until it refills, while a lease
/// refusal (in shared mode, this replica's share of the per-minute pool is used up) may clear as
/// soon as the lease manager leases more from the shared pool, so the caller tops up and retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenialKind {
    Rpm,
    Tpm,
    Concurrency,
    Budget,
    RpmLease,
    TpmLease,
}

impl DenialKind {
    /// The kind as Python and the wire spell it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Rpm => "rpm",
            Self::Tpm => "tpm",
            Self::Concurrency => "concurrency",
            Self::Budget => "budget",
            Self::RpmLease => "rpm-lease",
            Self::TpmLease => "tpm-lease",
        }
    }
}

/// A refusal by the token gate: which rule, and how long until the call could pass.
#[derive(Debug, Clone, PartialEq)]
pub struct Denial {
    pub kind: DenialKind,
    /// The rate limit's or budget's configured name. Shared with the rule, so denying allocates
    /// nothing even when a busy tenant is being denied thousands of times a second.
    pub name: Arc<str>,
    /// Seconds until the call could pass at the earliest: bucket refill time for RPM and TPM, the
    /// window's end for a budget whose settled spend alone blocks it (infinite for a "total"
    /// budget) or for a rate lease whose minute this replica alone has used up, and
    /// `UNKNOWN_RETRY_AFTER_S` when only in-flight work or a lease stands in the way.
    pub retry_after_s: f64,
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} limit {:?} denies the call; retry after {} s",
            self.kind.as_str(),
            &*self.name,
            self.retry_after_s
        )
    }
}

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

    /// A rate-limit or budget id the gate never handed out. Signed for the same reason as
    /// `IndexOutOfRange`.
    #[error("{what} {index} is unknown (gate has {len})")]
    UnknownRule {
        what: &'static str,
        index: i128,
        len: usize,
    },

    /// A reservation id that is not outstanding: never issued, already settled or released, or
    /// from a slot that has since been reused. Nothing was changed.
    #[error("reservation {id} is unknown or already settled or released")]
    UnknownReservation { id: i128 },

    /// The token gate refused a reservation. Not a fault: the caller routes elsewhere or waits.
    #[error("{0}")]
    Denied(Denial),

    /// Any other argument outside its domain; `field` is the argument's name as callers spell it.
    #[error("{field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },

    /// The router refused a request: the caller's to fix or the config's to allow. Not a fault.
    #[error("{0}")]
    Refused(Refusal),

    /// A request needs a new rule instance and `max` are alive: the owner frees idle ones first.
    #[error("no room for a new rule instance: {live} are live (max_scopes={max})")]
    NoRoom { live: usize, max: usize },

    /// The caller gave up (cancel or deadline) before the work was done; nobody reads the result.
    #[error("stopped: the caller cancelled or its deadline passed")]
    Stopped,

    /// Work asked on the event loop (`Stop::on_loop`) needs an exact count longer, in bytes or in
    /// time, than the loop allows; the owner asks again from a worker thread.
    #[error("counting {bytes} bytes exactly is work for a worker thread")]
    LongWork { bytes: usize },
}

/// Why the router will not decide a request; each kind is its own gRPC status.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// The request is malformed; `field` names the offending field (`routing.weights`).
    InvalidRequest { field: String, message: String },
    /// The request is over a size limit (`server.limits`); `field` names what is too large.
    TooLarge { field: String, message: String },
    /// The request is well formed but no enabled model can serve it.
    NoEligibleModel(String),
    /// Configured policy forbids it (a model outside its stage's whitelist).
    PolicyDenied(String),
    /// The gate refuses every candidate; the denial is the one that clears soonest.
    Quota(Denial),
}

impl Refusal {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> CoreError {
        CoreError::Refused(Self::InvalidRequest {
            field: field.into(),
            message: message.into(),
        })
    }

    pub fn too_large(field: impl Into<String>, message: impl Into<String>) -> CoreError {
        CoreError::Refused(Self::TooLarge {
            field: field.into(),
            message: message.into(),
        })
    }

    pub fn no_eligible_model(message: impl Into<String>) -> CoreError {
        CoreError::Refused(Self::NoEligibleModel(message.into()))
    }

    pub fn policy_denied(message: impl Into<String>) -> CoreError {
        CoreError::Refused(Self::PolicyDenied(message.into()))
    }

    pub fn quota(denial: Denial) -> CoreError {
        CoreError::Refused(Self::Quota(denial))
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidRequest { field, message } | Self::TooLarge { field, message } => {
                write!(f, "{field}: {message}")
            }
            Self::NoEligibleModel(message) | Self::PolicyDenied(message) => f.write_str(message),
            Self::Quota(denial) => write!(f, "{denial}"),
        }
    }
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
    fn gate_messages_name_the_rule() {
        let err = CoreError::UnknownRule {
            what: "budget",
            index: -2,
            len: 1,
        };
        assert_eq!(err.to_string(), "budget -2 is unknown (gate has 1)");
        let err = CoreError::Denied(Denial {
            kind: DenialKind::Budget,
            name: "team-a".into(),
            retry_after_s: 12.5,
        });
        assert_eq!(
            err.to_string(),
            "budget limit \"team-a\" denies the call; retry after 12.5 s"
        );
        let err = CoreError::UnknownReservation { id: 7 };
        assert!(err.to_string().starts_with("reservation 7 is unknown"));
    }

    #[test]
    fn invalid_argument_shorthand() {
        let err = CoreError::invalid("total_ms", "must be finite and >= 0");
        assert_eq!(err.to_string(), "total_ms: must be finite and >= 0");
    }
}
