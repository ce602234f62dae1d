//! A request as the engine hands it to the router: its `ChatInput` read by attribute name, the
//! strings held while a `RouteInput` borrows them, and a reading given in place of the rules'.

use pyo3::prelude::*;
use pyo3::pybacked::PyBackedStr;
use pyo3::types::PyDict;
use switchpoint_core::{
    task_class_named, GivenReading, Message, Params, Refusal, RouteInput, Router as Core,
    RoutingOptions, DEFAULT_TASK_CLASS, TASK_CLASSES,
};

use crate::error::Result;
use crate::predicted::PredictedQuality;

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
pub(crate) struct Held {
    messages: Vec<HeldMessage>,
    routing: HeldRouting,
    params: HeldParams,
    request_id: PyBackedStr,
    cache_threshold: Option<f64>,
    /// `ChatInput.predicted`: model name -> its predicted quality; empty when it is None.
    predicted: Vec<(PyBackedStr, PredictedQuality)>,
    explore_draw: f64,
}

impl Held {
    pub(crate) fn read(request: &Bound<'_, PyAny>) -> PyResult<Self> {
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
            predicted: predicted(&attr!(request, "predicted"))?,
            explore_draw: field!(request, "explore_draw"),
        })
    }

    /// The request as the core reads it; predictions for models `core` does not know (a model
    /// a reload removed) are dropped.
    pub(crate) fn input(&self, core: &Core) -> RouteInput<'_> {
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
            given: None,
            predicted: if self.predicted.is_empty() {
                Vec::new()
            } else {
                let mut by_index = vec![None; core.table().len()];
                for (name, quality) in &self.predicted {
                    if let Some(index) = core.model_index(name) {
                        by_index[index] = Some(quality.inner);
                    }
                }
                by_index
            },
            explore_draw: self.explore_draw,
        }
    }
}

fn predicted(mapping: &Bound<'_, PyAny>) -> PyResult<Vec<(PyBackedStr, PredictedQuality)>> {
    if mapping.is_none() {
        return Ok(Vec::new());
    }
    mapping
        .cast::<PyDict>()?
        .iter()
        .map(|(model, quality)| Ok((model.extract()?, *quality.cast::<PredictedQuality>()?.get())))
        .collect()
}

/// The reading given in place of the classifier's (see `GivenReading`): a (task class,
/// complexity) pair or none, and the note the reasons carry.
pub(crate) fn given(
    classified: Option<(PyBackedStr, f64)>,
    note: &str,
) -> Result<Option<GivenReading<'_>>> {
    let reading = match classified {
        None => None,
        Some((name, complexity)) => {
            let Some(task_class) = task_class_named(&name) else {
                return Err(Refusal::invalid(
                    "classification.task_class",
                    format!(
                        "unknown task class '{}' (known: {}, {DEFAULT_TASK_CLASS})",
                        switchpoint_core::clipped(&name),
                        TASK_CLASSES.join(", ")
                    ),
                )
                .into());
            };
            Some((task_class, complexity))
        }
    };
    Ok((reading.is_some() || !note.is_empty()).then_some(GivenReading { reading, note }))
}

fn strs(list: &[PyBackedStr]) -> Vec<&str> {
    list.iter().map(|s| &**s).collect()
}
