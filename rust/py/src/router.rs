//! `Router`: the router of one config load (see `switchpoint_core::Router`), deciding from the
//! engine's `ChatInput` or straight from `RouteRequest` bytes.
//!
//! `ChatInput` and its parts are read by attribute name. The decision goes back as the `Decision`
//! and `ScoredModel` classes Python hands the constructor, whose field names are checked when the
//! router is built; a Route call answered from its bytes as a `Routed`.

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedStr;
use pyo3::types::{PyBytes, PyString, PyTuple};
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use switchpoint_core::{
    route_request, Admission as CoreAdmission, Admitted, AutoRouting, Decision, Level, Limits,
    Message, Params, RequestCount, RouteInput, RouteTally as Tally, Router as Core, RouterConfig,
    RoutingOptions, Shift, Stage, Stop,
};

use crate::error::{Error, Result};
use crate::gate::Gate;
use crate::gil;
use crate::table::ModelTable;
use crate::tokens::{tokenizer, BpeEncoding, WorkStop};

/// The leading fields of the `Decision` the router builds, in the order it passes them.
const DECISION_FIELDS: [&str; 10] = [
    "candidates",
    "level",
    "reasons",
    "strategy",
    "weights",
    "input_tokens",
    "output_tokens",
    "task_class",
    "complexity",
    "fallback",
];

/// The fields of each `ScoredModel` candidate, in the order the router passes them.
const CANDIDATE_FIELDS: [&str; 10] = [
    "table_index",
    "name",
    "provider",
    "score",
    "norm_cost",
    "norm_latency",
    "quality",
    "estimated_cost_usd",
    "estimated_latency_ms",
    "latency_observed",
];

/// Decisions are built per request, so positionally (a keyword call costs about a microsecond
/// more per decision); the names are what is checked, once, when the router is built: a type
/// whose `_fields` do not begin with `expected` is refused with a `TypeError` naming both.
fn check_fields(named_tuple: &Bound<'_, PyAny>, expected: &[&str]) -> PyResult<()> {
    let fields: Vec<String> = attr!(named_tuple, "_fields").extract()?;
    if fields.len() < expected.len() || fields[..expected.len()] != *expected {
        return Err(PyTypeError::new_err(format!(
            "{} must have the fields {expected:?} first, has {fields:?}",
            named_tuple.repr()?
        )));
    }
    Ok(())
}

/// `levels` must be the core's levels in order, each with its number and name (Python's `Level`,
/// whose values are `switchpoint.v1.DecisionLevel`'s): checked once, so the three agree.
fn check_levels(py: Python<'_>, levels: &[Py<PyAny>]) -> PyResult<()> {
    let given = levels
        .iter()
        .map(|level| {
            let level = level.bind(py);
            Ok((
                level.extract::<i32>()?,
                attr!(level, "name").extract::<String>()?,
            ))
        })
        .collect::<PyResult<Vec<_>>>()?;
    let expected: Vec<(i32, String)> = Level::ALL
        .iter()
        .map(|&level| (level.number(), level.name().to_owned()))
        .collect();
    if given != expected {
        return Err(PyTypeError::new_err(format!(
            "levels must be {expected:?}, got {given:?}"
        )));
    }
    Ok(())
}

/// Past this many bytes of prompt, counting and classifying outlast what releasing the GIL costs,
/// so it is released.
const DETACH_ABOVE_BYTES: usize = 64 * 1024;

/// What the token gate lets through, for `Router.route_wire` (see `switchpoint_core::Admission`).
#[pyclass(frozen, module = "switchpoint._native")]
pub struct Admission {
    inner: CoreAdmission,
}

#[pymethods]
impl Admission {
    #[new]
    fn new(gate: &Bound<'_, Gate>) -> Self {
        Self {
            inner: CoreAdmission::new(gate.get().inner.clone()),
        }
    }

    /// The rate-limit and budget ids of `gate` that apply to `model` for `tenant` and `stage`.
    fn learn(
        &self,
        tenant: &str,
        stage: &str,
        model: &str,
        limits: Vec<usize>,
        budgets: Vec<usize>,
    ) {
        self.inner.learn(tenant, stage, model, limits, budgets);
    }

    /// Forgets what `learn` taught for `model` with `tenant` and `stage`.
    fn forget(&self, tenant: &str, stage: &str, model: &str) {
        self.inner.forget(tenant, stage, model);
    }

    /// (tenant, stage, model) entries known.
    fn __len__(&self) -> usize {
        self.inner.len()
    }
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

    /// (model, tenant, stage, calls) for every combination seen.
    fn requests(&self) -> Vec<RequestCount> {
        self.inner.requests()
    }

    /// Calls per histogram bucket (not cumulative, the last above every bound) and their sum
    /// in seconds.
    fn overhead(&self) -> (Vec<u64>, f64) {
        self.inner.overhead()
    }
}

/// A `ChatMessage`.
struct HeldMessage {
    role: PyBackedStr,
    content: PyBackedStr,
}

/// `RoutingOptions`.
struct HeldRouting {
    models: Vec<PyBackedStr>,
    stage: PyBackedStr,
    strategy: PyBackedStr,
    weights: Option<(f64, f64, f64)>,
    tenant: PyBackedStr,
    priority: i64,
    capabilities: Vec<PyBackedStr>,
    max_cost_usd: Option<f64>,
    hedge: bool,
}

/// `GenerationParams`.
struct HeldParams {
    max_tokens: Option<i64>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    stop: Vec<PyBackedStr>,
}

/// A `ChatInput` read by attribute name, its strings held while a `RouteInput` borrows them.
/// Of its `CacheControls` only the threshold is the router's to check.
struct Held {
    messages: Vec<HeldMessage>,
    routing: HeldRouting,
    params: HeldParams,
    request_id: PyBackedStr,
    cache_threshold: Option<f64>,
}

impl Held {
    fn read(request: &Bound<'_, PyAny>) -> PyResult<Self> {
        let messages = attr!(request, "messages")
            .try_iter()?
            .map(|message| {
                let message = message?;
                Ok(HeldMessage {
                    role: field!(message, "role"),
                    content: field!(message, "content"),
                })
            })
            .collect::<PyResult<Vec<_>>>()?;
        let routing = attr!(request, "routing");
        let params = attr!(request, "params");
        let cache = attr!(request, "cache");
        Ok(Self {
            messages,
            routing: HeldRouting {
                models: field!(routing, "models"),
                stage: field!(routing, "stage"),
                strategy: field!(routing, "strategy"),
                weights: field!(routing, "weights"),
                tenant: field!(routing, "tenant"),
                priority: field!(routing, "priority"),
                capabilities: field!(routing, "capabilities"),
                max_cost_usd: field!(routing, "max_cost_usd"),
                hedge: field!(routing, "hedge"),
            },
            params: HeldParams {
                max_tokens: field!(params, "max_tokens"),
                temperature: field!(params, "temperature"),
                top_p: field!(params, "top_p"),
                stop: field!(params, "stop"),
            },
            request_id: field!(request, "request_id"),
            cache_threshold: field!(cache, "threshold"),
        })
    }

    fn input(&self) -> RouteInput<'_> {
        let (routing, params) = (&self.routing, &self.params);
        RouteInput {
            messages: self
                .messages
                .iter()
                .map(|m| Message {
                    role: &m.role,
                    content: &m.content,
                })
                .collect(),
            routing: RoutingOptions {
                models: strs(&routing.models),
                stage: &routing.stage,
                strategy: &routing.strategy,
                weights: routing.weights.map(|(c, l, q)| [c, l, q]),
                tenant: &routing.tenant,
                priority: routing.priority,
                capabilities: strs(&routing.capabilities),
                max_cost_usd: routing.max_cost_usd,
                hedge: routing.hedge,
            },
            params: Params {
                max_tokens: params.max_tokens,
                temperature: params.temperature,
                top_p: params.top_p,
                stop: strs(&params.stop),
            },
            request_id: &self.request_id,
            cache_threshold: self.cache_threshold,
        }
    }
}

fn strs(list: &[PyBackedStr]) -> Vec<&str> {
    list.iter().map(|s| &**s).collect()
}

/// Seconds since the Unix epoch, as Python's `time.time()` reads them.
fn wall_clock_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |since| since.as_secs_f64())
}

/// A Route call answered from its bytes: the `RouteDecision` bytes, and what its log line needs.
#[pyclass(frozen, get_all, module = "switchpoint._native")]
pub struct Routed {
    /// The `switchpoint.v1.RouteDecision` message, serialized.
    decision: Py<PyBytes>,
    /// The chosen model.
    model: Py<PyString>,
    tenant: String,
    stage: String,
    /// The prompt's length in characters.
    prompt_chars: usize,
}

/// The router of one config load.
#[pyclass(frozen, module = "switchpoint._native")]
pub struct Router {
    inner: Core,
    decision_type: Py<PyAny>,
    candidate_type: Py<PyAny>,
    /// The `Level` members, in `switchpoint.v1.DecisionLevel` order from 1.
    levels: Vec<Py<PyAny>>,
}

fn prompt_bytes(input: &RouteInput<'_>) -> usize {
    input.messages.iter().map(|m| m.content.len()).sum()
}

#[pymethods]
impl Router {
    #[new]
    #[pyo3(signature = (
        table,
        *,
        providers,
        capabilities,
        disabled,
        strategies,
        default_strategy,
        stages,
        fallback_chain,
        auto,
        default_output_tokens,
        encodings,
        limits,
        decision_type,
        candidate_type,
        levels,
    ))]
    // One argument per keyword of the Python signature.
    #[allow(clippy::too_many_arguments)]
    fn new(
        table: &Bound<'_, ModelTable>,
        providers: Vec<String>,
        capabilities: Vec<String>,
        disabled: Vec<(String, String)>,
        strategies: Vec<(String, (f64, f64, f64))>,
        default_strategy: String,
        stages: Vec<(String, Vec<String>, Option<String>)>,
        fallback_chain: Vec<String>,
        auto: (bool, f64, f64),
        default_output_tokens: u64,
        encodings: Vec<Option<Bound<'_, BpeEncoding>>>,
        limits: (usize, usize, usize, usize, usize),
        decision_type: Py<PyAny>,
        candidate_type: Py<PyAny>,
        levels: Vec<Py<PyAny>>,
    ) -> PyResult<Self> {
        let (enabled, hard_complexity, easy_complexity) = auto;
        let (messages, message_bytes, prompt_bytes, name_bytes, list_items) = limits;
        let config = RouterConfig {
            providers,
            capabilities,
            disabled,
            strategies: strategies
                .into_iter()
                .map(|(name, (c, l, q))| (name, [c, l, q]))
                .collect(),
            default_strategy,
            stages: stages
                .into_iter()
                .map(|(name, models, strategy)| Stage {
                    name,
                    models,
                    strategy,
                })
                .collect(),
            fallback_chain,
            auto: AutoRouting {
                enabled,
                hard_complexity,
                easy_complexity,
            },
            default_output_tokens,
            encodings: encodings
                .into_iter()
                .map(|e| tokenizer(e.as_ref()))
                .collect(),
            limits: Limits {
                messages,
                message_bytes,
                prompt_bytes,
                name_bytes,
                list_items,
            },
        };
        check_fields(decision_type.bind(table.py()), &DECISION_FIELDS)?;
        check_fields(candidate_type.bind(table.py()), &CANDIDATE_FIELDS)?;
        check_levels(table.py(), &levels)?;
        Ok(Self {
            inner: Core::new(table.get().inner.clone(), config).map_err(Error::from)?,
            decision_type,
            candidate_type,
            levels,
        })
    }

    /// Raise `RequestTooLargeError` when `count` messages are more than a request may carry:
    /// checked before a request's messages are converted to Python objects.
    fn check_message_count(&self, count: usize) -> Result<()> {
        Ok(self.inner.limits().check_message_count(count)?)
    }

    /// Validate a `ChatInput` (raises `InvalidRequestError` or `RequestTooLargeError`).
    fn validate(&self, request: &Bound<'_, PyAny>) -> PyResult<()> {
        let held = Held::read(request)?;
        self.inner.validate(&held.input()).map_err(Error::from)?;
        Ok(())
    }

    /// Validate and decide a `ChatInput`. `pressure(tenant, stage)`, when given, is asked once
    /// the request is valid for budget pressure's `StrategyShift` (or None). `stop` ends the
    /// counting early (`CoreError`) once stopped.
    #[pyo3(signature = (request, pressure = None, stop = None))]
    fn decide<'py>(
        &self,
        py: Python<'py>,
        request: &Bound<'py, PyAny>,
        pressure: Option<&Bound<'py, PyAny>>,
        stop: Option<&Bound<'py, WorkStop>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let held = Held::read(request)?;
        let input = held.input();
        self.inner.validate(&input).map_err(Error::from)?;
        let shift = match pressure {
            Some(pressure) => pressure
                .call1((input.routing.tenant, input.routing.stage))?
                .extract::<Option<(Vec<String>, String, String)>>()?
                .map(|(applies_to, strategy, reason)| Shift {
                    applies_to,
                    strategy,
                    reason,
                }),
            None => None,
        };
        // Work given a stop runs on a worker thread: holding the GIL there would stall the loop.
        let long = stop.is_some() || prompt_bytes(&input) > DETACH_ABOVE_BYTES;
        let decision = match stop {
            None => gil::run(py, long, || {
                self.inner
                    .decide_valid(&input, shift.as_ref(), Stop::never())
            }),
            Some(stop) => {
                let stop = stop.get().inner.clone();
                gil::run(py, long, || {
                    self.inner.decide_valid(&input, shift.as_ref(), &stop)
                })
            }
        }
        .map_err(Error::from)?;
        self.to_python(py, &decision)
    }

    /// Route straight from `switchpoint.v1.RouteRequest` bytes (see `Routed`). The call is
    /// counted, and timed, in `tally`.
    ///
    /// With `admission` (the gate has rules), None unless it admits every candidate now (wall-clock
    /// time, the `TokenGate`'s clock): the engine's path then decides, learns the rules or
    /// reports the refusal. `stop` ends the counting early (`CoreError`) once stopped.
    #[pyo3(signature = (request, tally = None, admission = None, stop = None))]
    fn route_wire<'py>(
        &self,
        py: Python<'py>,
        request: &[u8],
        tally: Option<&Bound<'py, RouteTally>>,
        admission: Option<&Bound<'py, Admission>>,
        stop: Option<&Bound<'py, WorkStop>>,
    ) -> Result<Option<Routed>> {
        let started = Instant::now();
        let decoded = route_request(request)?;
        let input = decoded.input();
        let long = stop.is_some() || prompt_bytes(&input) > DETACH_ABOVE_BYTES;
        let decision = match stop {
            None => gil::run(py, long, || self.inner.decide(&input, None, Stop::never()))?,
            Some(stop) => {
                let stop = stop.get().inner.clone();
                gil::run(py, long, || self.inner.decide(&input, None, &stop))?
            }
        };
        if let Some(admission) = admission {
            let candidates = decision
                .candidates
                .iter()
                .map(|c| (self.inner.name(c.index), c.estimated_cost_usd));
            let tokens = decision.input_tokens.saturating_add(decision.output_tokens);
            let routing = &input.routing;
            let admitted = admission.get().inner.admits(
                routing.tenant,
                routing.stage,
                candidates,
                tokens,
                wall_clock_s(),
            )?;
            if admitted != Admitted::All {
                return Ok(None);
            }
        }
        let answer = PyBytes::new(py, &self.inner.encode(&decision));
        let model = self.inner.name(decision.candidates[0].index);
        if let Some(tally) = tally {
            let seconds = started.elapsed().as_secs_f64();
            let routing = &input.routing;
            tally
                .get()
                .inner
                .record(model, routing.tenant, routing.stage, seconds);
        }
        Ok(Some(Routed {
            decision: answer.unbind(),
            model: PyString::new(py, model).unbind(),
            tenant: input.routing.tenant.to_owned(),
            stage: input.routing.stage.to_owned(),
            prompt_chars: input
                .messages
                .iter()
                .map(|m| m.content.chars().count())
                .sum(),
        }))
    }

    fn __repr__(&self) -> String {
        format!("Router(models={})", self.inner.table().len())
    }
}

impl Router {
    fn to_python<'py>(&self, py: Python<'py>, decision: &Decision) -> PyResult<Bound<'py, PyAny>> {
        // Positional, in the order `check_fields` confirmed when the router was built.
        let candidate_type = self.candidate_type.bind(py);
        let candidates = decision
            .candidates
            .iter()
            .map(|c| {
                candidate_type.call1((
                    c.index,
                    self.inner.name(c.index),
                    self.inner.provider(c.index),
                    c.score,
                    c.norm_cost,
                    c.norm_latency,
                    c.quality,
                    c.estimated_cost_usd,
                    c.estimated_latency_ms,
                    c.latency_observed,
                ))
            })
            .collect::<PyResult<Vec<_>>>()?;
        let fallback: Vec<&str> = decision
            .fallback
            .iter()
            .map(|&i| self.inner.name(i))
            .collect();
        let [cost, latency, quality] = decision.weights;
        self.decision_type.bind(py).call1((
            PyTuple::new(py, candidates)?,
            self.levels[decision.level.number() as usize - 1].bind(py),
            PyTuple::new(py, &decision.reasons)?,
            &decision.strategy,
            (cost, latency, quality),
            decision.input_tokens,
            decision.output_tokens,
            decision.task_class,
            decision.complexity,
            PyTuple::new(py, fallback)?,
        ))
    }
}
