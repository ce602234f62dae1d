//! switchpoint's hot path in pure Rust: the routing table, per-request scoring, the latency
//! tracker and the token gate (rate limits and budgets). No Python here; `rust/py` wraps these
//! types for `switchpoint._native`.
//!
//! Flow: build a [`ModelTable`] once per config load over a shared [`LatencyTracker`]; per request
//! call [`ModelTable::score`] with a [`Request`]; [`Gate::reserve`] the chosen call's estimated
//! tokens and cost against its rate limits and budgets, and [`Gate::settle`] (or
//! [`Gate::release`]) it afterwards; [`LatencyTracker::record`] the observed latency under the
//! model's slot so later requests use live percentiles.

mod append;
mod budget;
mod classify;
mod error;
mod gate;
mod latency;
mod lease;
mod limits;
pub mod proto;
mod reservations;
mod route;
mod rules;
mod scoring;
mod table;
mod tally;
#[cfg(feature = "testing")]
pub mod testing;
mod window;

pub use budget::BudgetState;
pub use classify::{classify, task_class_named, Classification, DEFAULT_TASK_CLASS, TASK_CLASSES};
pub use error::{CoreError, Denial, DenialKind, Refusal, Result, UNKNOWN_RETRY_AFTER_S};
pub use gate::{
    describe_scope, BudgetRule, Created, Gate, LimitRule, Pressure, RuleActivity, RuleBook,
    RuleIds, RuleKind, RuleMatch, Scope, ScopeKey, Shift, Subject, Wanted,
};
pub use latency::{Clock, LatencyKind, LatencyTracker, ManualClock, MonotonicClock, Percentiles};
pub use lease::MinuteUsage;
pub use limits::LimitState;
pub use reservations::{ReservationId, MAX_RULES};
pub use route::{
    clipped, prompt_span, quota_message, retry_wait, route_request, AutoRouting, Bpe, Decision,
    DecodedRoute, Exploration, GivenReading, Level, Limits, Message, OpenBreaker, Params,
    RouteInput, Router, RouterConfig, RoutingOptions, Shape, Stage, Stop, TokenSpan, Tokenizer,
    Upper, BUILTIN_STRATEGIES, CUSTOM_STRATEGY, EXACT_BELOW_BYTES, REMEMBERED_FROM_BYTES,
    REMEMBERED_PER_GENERATION, ROLES,
};
pub use scoring::{Candidate, Exclusion, PredictedQuality, Ranking, Request, Weights};
pub use table::{capability_bits, ModelSpec, ModelTable, MAX_CAPABILITIES, MAX_PRICE_OR_PRIOR};
pub use tally::{RequestCount, RouteTally};
pub use window::{Window, MAX_NOW_S};
