//! `Router`: the router of one config load (see `switchpoint_core::Router`). `decide` is the one
//! entry point of a request, from the engine's `ChatInput` or straight from `RouteRequest` bytes
//! (`route_wire`); a call the cache may answer runs its halves apart (`route`, then `admit`).
//!
//! Configuration and `ChatInput` (see `input.rs`) are read by attribute name; the decision comes
//! back as a `Decision` (see `decision.rs`), a Route call answered from its bytes as a `Routed`.

use std::sync::Arc;
use std::time::Instant;

use pyo3::prelude::*;
use pyo3::pybacked::PyBackedStr;
use pyo3::types::{PyBytes, PyDict, PyString};
use switchpoint_core::{
    route_request, AutoRouting, Exploration, Limits, OpenBreaker, RouteInput, RouteTally as Tally,
    Router as Core, RouterConfig, Stage, Stop,
};

use crate::decision::Decision;
use crate::error::{Error, Result};
use crate::gil;
use crate::input::{given, Held};
use crate::quota::RuleBook;
use crate::table::ModelTable;
use crate::tokens::{tokenizer, BpeEncoding, WorkStop};

/// Past this many bytes of prompt, counting and classifying outlast what releasing the GIL costs,
/// so it is released.
const DETACH_ABOVE_BYTES: usize = 64 * 1024;

/// Route calls of one (model, tenant, stage).
#[pyclass(frozen, get_all, module = "switchpoint._native")]
pub struct RouteCount {
    model: String,
    tenant: String,
    stage: String,
    calls: u64,
}

/// Route calls' routing time: calls per bucket (not cumulative; the last above every bound) and
/// their sum in seconds.
#[pyclass(frozen, get_all, module = "switchpoint._native")]
pub struct OverheadHistogram {
    counts: Vec<u64>,
    sum_s: f64,
}

/// Route calls answered by `Router.route_wire`: counts and times for the metrics.
#[pyclass(frozen, module = "switchpoint._native")]
pub struct RouteTally {
    inner: Tally,
}

#[pymethods]
impl RouteTally {
    #[new]
    fn new(bounds: Vec<f64>) -> Result<Self> {
        Ok(Self {
            inner: Tally::new(bounds)?,
        })
    }

    /// From now on a tenant or stage outside `tenants` / `stages` (and not empty) is counted as
    /// `other`.
    // PyO3 extracts the lists by value.
    #[allow(clippy::needless_pass_by_value)]
    fn set_labels(&self, tenants: Vec<String>, stages: Vec<String>, other: String) {
        self.inner.set_labels(tenants, stages, other);
    }

    /// The calls of every (model, tenant, stage) seen.
    fn requests(&self) -> Vec<RouteCount> {
        self.inner
            .requests()
            .into_iter()
            .map(|(model, tenant, stage, calls)| RouteCount {
                model,
                tenant,
                stage,
                calls,
            })
            .collect()
    }

    /// The calls' routing time as a histogram.
    fn overhead(&self) -> OverheadHistogram {
        let (counts, sum_s) = self.inner.overhead();
        OverheadHistogram { counts, sum_s }
    }
}

/// A Route call answered from its bytes: the `RouteDecision` bytes, and what its log line needs.
#[pyclass(frozen, get_all, module = "switchpoint._native")]
pub struct Routed {
    /// The request's id: its own, or the one `route_wire` was given.
    request_id: String,
    /// The `switchpoint.v1.RouteDecision` message, serialized.
    decision: Py<PyBytes>,
    /// The chosen model.
    model: Py<PyString>,
    tenant: String,
    stage: String,
    /// The prompt's length in characters.
    prompt_chars: usize,
    /// The probability with which `model` was chosen: 1 unless exploring.
    choice_probability: f64,
}

/// The router of one config load.
#[pyclass(frozen, module = "switchpoint._native")]
pub struct Router {
    inner: Arc<Core>,
}

/// The open breakers, `{model: seconds until it tries again}`.
fn read_open_breakers(open: Option<&Bound<'_, PyDict>>) -> PyResult<Vec<(PyBackedStr, f64)>> {
    open.map_or_else(
        || Ok(Vec::new()),
        |open| {
            open.iter()
                .map(|(model, retry_in_s)| Ok((model.extract()?, retry_in_s.extract()?)))
                .collect()
        },
    )
}

fn breakers(open: &[(PyBackedStr, f64)]) -> Vec<OpenBreaker<'_>> {
    open.iter()
        .map(|(model, retry_in_s)| OpenBreaker {
            model,
            retry_in_s: *retry_in_s,
        })
        .collect()
}

/// `routing.strategies`: name -> weights, read by name.
fn strategies(routing: &Bound<'_, PyAny>) -> PyResult<Vec<(String, [f64; 3])>> {
    attr!(routing, "strategies")
        .cast::<PyDict>()?
        .iter()
        .map(|(name, weights)| {
            Ok((
                name.extract()?,
                [
                    field!(weights, "cost"),
                    field!(weights, "latency"),
                    field!(weights, "quality"),
                ],
            ))
        })
        .collect()
}

/// `routing.stages`: name -> (models, strategy), read by name.
fn stages(routing: &Bound<'_, PyAny>) -> PyResult<Vec<Stage>> {
    attr!(routing, "stages")
        .cast::<PyDict>()?
        .iter()
        .map(|(name, stage)| {
            Ok(Stage {
                name: name.extract()?,
                models: field!(stage, "models"),
                strategy: field!(stage, "strategy"),
            })
        })
        .collect()
}

/// `routing.exploration`, read by name.
fn exploration(exploration: &Bound<'_, PyAny>) -> PyResult<Exploration> {
    Ok(Exploration {
        rate: field!(exploration, "rate"),
        max_cost_ratio: field!(exploration, "max_cost_ratio"),
        strategies: field!(exploration, "strategies"),
        stages: field!(exploration, "stages"),
    })
}

fn limits(limits: &Bound<'_, PyAny>) -> PyResult<Limits> {
    Ok(Limits {
        messages: field!(limits, "messages"),
        message_bytes: field!(limits, "message_bytes"),
        prompt_bytes: field!(limits, "prompt_bytes"),
        name_bytes: field!(limits, "name_bytes"),
        list_items: field!(limits, "list_items"),
    })
}

/// Runs `work` with the GIL held for a short prompt, released for a long one or work given a
/// stop (it runs on a worker thread, where holding the GIL would stall the loop).
fn run<T: Send>(
    py: Python<'_>,
    input: &RouteInput<'_>,
    stop: Option<&Bound<'_, WorkStop>>,
    work: impl FnOnce(&Stop) -> switchpoint_core::Result<T> + Send,
) -> Result<T> {
    // Work on the event loop keeps the GIL: releasing it would let other threads take the loop's.
    let on_loop = stop.is_some_and(|stop| stop.get().inner.is_on_loop());
    let bytes: usize = input.messages.iter().map(|m| m.content.len()).sum();
    let long = !on_loop && (stop.is_some() || bytes > DETACH_ABOVE_BYTES);
    Ok(match stop {
        None => gil::run(py, long, || work(Stop::never()))?,
        Some(stop) => {
            let stop = stop.get().inner.clone();
            gil::run(py, long, || work(&stop))?
        }
    })
}

impl Router {
    fn decision(&self, inner: switchpoint_core::Decision) -> Decision {
        Decision {
            inner,
            router: Arc::clone(&self.inner),
        }
    }
}

#[pymethods]
impl Router {
    /// `routing` is the config's `RoutingConfig`, `limits` its `server.limits` and `quota` the
    /// `RuleBook` of its rate limits and budgets, each read by attribute name.
    #[new]
    #[pyo3(signature = (
        table,
        *,
        routing,
        limits,
        quota,
        providers,
        capabilities,
        disabled,
        encodings,
    ))]
    // One argument per keyword of the Python signature.
    #[allow(clippy::too_many_arguments)]
    fn new(
        table: &Bound<'_, ModelTable>,
        routing: &Bound<'_, PyAny>,
        limits: &Bound<'_, PyAny>,
        quota: Option<&Bound<'_, RuleBook>>,
        providers: Vec<String>,
        capabilities: Vec<String>,
        disabled: Vec<(String, String)>,
        encodings: Vec<Option<Bound<'_, BpeEncoding>>>,
    ) -> PyResult<Self> {
        let auto = attr!(routing, "auto");
        let config = RouterConfig {
            providers,
            capabilities,
            disabled,
            strategies: strategies(routing)?,
            default_strategy: field!(routing, "default_strategy"),
            stages: stages(routing)?,
            fallback_chain: field!(routing, "fallback_chain"),
            auto: AutoRouting {
                enabled: field!(auto, "enabled"),
                hard_complexity: field!(auto, "hard_complexity"),
                easy_complexity: field!(auto, "easy_complexity"),
            },
            default_output_tokens: field!(routing, "default_output_tokens"),
            encodings: encodings
                .into_iter()
                .map(|e| tokenizer(e.as_ref()))
                .collect(),
            limits: self::limits(limits)?,
            quota: quota.map(|book| Arc::clone(&book.get().inner)),
            exploration: exploration(&attr!(routing, "exploration"))?,
        };
        Ok(Self {
            inner: Arc::new(Core::new(table.get().inner.clone(), config).map_err(Error::from)?),
        })
    }

    /// Raise `RequestTooLargeError` when `count` messages are more than a request may carry:
    /// checked before a request's messages are converted to Python objects.
    fn check_message_count(&self, count: usize) -> Result<()> {
        Ok(self.inner.limits().check_message_count(count)?)
    }

    /// The one decision of a `ChatInput`: validated, routed under budget pressure, admitted by the
    /// gate (as of `now`, the gate's clock) and the open breakers (`{model: retry_in_s}`). Raises
    /// the engine's errors (`InvalidRequestError`, `QuotaExceededError`, ...), `NoRoom` when a
    /// rule instance is needed past `max_scopes`, `DeadlineExceededError` once `stop` is set.
    /// `classified` (task class, complexity) replaces the classifier's reading if the auto level
    /// decides, and `note` follows the reading in the reasons.
    #[pyo3(signature = (
        request, *, now, open_breakers = None, stop = None, classified = None, note = ""
    ))]
    // One argument per keyword of the Python signature.
    #[allow(clippy::too_many_arguments)]
    fn decide(
        &self,
        py: Python<'_>,
        request: &Bound<'_, PyAny>,
        now: f64,
        open_breakers: Option<&Bound<'_, PyDict>>,
        stop: Option<&Bound<'_, WorkStop>>,
        classified: Option<(PyBackedStr, f64)>,
        note: &str,
    ) -> Result<Decision> {
        let held = Held::read(request)?;
        let mut input = held.input(&self.inner);
        input.given = given(classified, note)?;
        let open = read_open_breakers(open_breakers)?;
        let open = breakers(&open);
        let core = &self.inner;
        let decided = run(py, &input, stop, |stop| {
            core.decide(&input, &open, stop, now)
        })?;
        Ok(self.decision(decided))
    }

    /// The first half of `decide`: validated and routed, not yet admitted.
    #[pyo3(signature = (request, *, now, stop = None, classified = None, note = ""))]
    fn route(
        &self,
        py: Python<'_>,
        request: &Bound<'_, PyAny>,
        now: f64,
        stop: Option<&Bound<'_, WorkStop>>,
        classified: Option<(PyBackedStr, f64)>,
        note: &str,
    ) -> Result<Decision> {
        let held = Held::read(request)?;
        let mut input = held.input(&self.inner);
        input.given = given(classified, note)?;
        let core = &self.inner;
        let routed = run(py, &input, stop, |stop| core.route(&input, stop, now))?;
        Ok(self.decision(routed))
    }

    /// The second half of `decide`: `decision` (from `route` for `tenant` and `stage`) without
    /// the candidates the gate or an open breaker refuses now.
    #[pyo3(signature = (decision, *, tenant, stage, now, open_breakers = None))]
    fn admit(
        &self,
        decision: &Bound<'_, Decision>,
        tenant: &str,
        stage: &str,
        now: f64,
        open_breakers: Option<&Bound<'_, PyDict>>,
    ) -> Result<Decision> {
        let decision = decision.get();
        if !Arc::ptr_eq(&decision.router, &self.inner) {
            return Err(switchpoint_core::CoreError::invalid(
                "decision",
                "was made by another router (another config load)",
            )
            .into());
        }
        let open = read_open_breakers(open_breakers)?;
        let admitted =
            self.inner
                .admit(decision.inner.clone(), tenant, stage, &breakers(&open), now)?;
        Ok(self.decision(admitted))
    }

    /// Messages whose exact counts this router remembers (long messages of earlier requests).
    #[getter]
    fn remembered_counts(&self) -> usize {
        self.inner.remembered_counts()
    }

    /// `decide`, straight from `switchpoint.v1.RouteRequest` bytes to `RouteDecision` bytes (see
    /// `Routed`). The call is counted, and timed, in `tally`.
    #[pyo3(signature = (
        request, *, now, request_id = "", explore_draw = 1.0, open_breakers = None, tally = None,
        stop = None
    ))]
    #[allow(clippy::too_many_arguments)] // keyword arguments from Python, each optional
    fn route_wire<'py>(
        &self,
        py: Python<'py>,
        request: &[u8],
        now: f64,
        request_id: &str,
        explore_draw: f64,
        open_breakers: Option<&Bound<'py, PyDict>>,
        tally: Option<&Bound<'py, RouteTally>>,
        stop: Option<&Bound<'py, WorkStop>>,
    ) -> Result<Routed> {
        let started = Instant::now();
        let decoded = route_request(request)?;
        let mut input = decoded.input();
        if input.request_id.is_empty() {
            input.request_id = request_id;
        }
        input.explore_draw = explore_draw;
        let open = read_open_breakers(open_breakers)?;
        let open = breakers(&open);
        let core = &self.inner;
        let decision = run(py, &input, stop, |stop| {
            core.decide(&input, &open, stop, now)
        })?;
        let answer = PyBytes::new(py, &core.encode(&decision));
        let model = core.name(decision.candidates[0].index);
        let routing = &input.routing;
        if let Some(tally) = tally {
            let seconds = started.elapsed().as_secs_f64();
            tally
                .get()
                .inner
                .record(model, routing.tenant, routing.stage, seconds);
        }
        Ok(Routed {
            choice_probability: decision.choice_probability,
            request_id: input.request_id.to_owned(),
            decision: answer.unbind(),
            model: PyString::new(py, model).unbind(),
            tenant: routing.tenant.to_owned(),
            stage: routing.stage.to_owned(),
            prompt_chars: input
                .messages
                .iter()
                .map(|m| m.content.chars().count())
                .sum(),
        })
    }

    fn __repr__(&self) -> String {
        format!("Router(models={})", self.inner.table().len())
    }
}
