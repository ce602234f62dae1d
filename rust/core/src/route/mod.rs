//! The router: from a request to a ranked decision, at four levels; the first that applies wins.
//!
//! 1. override  - the request names a model or a model list
//! 2. stage     - the request names a configured stage
//! 3. auto      - the classifier reads the prompt and picks weights; every enabled model is ranked
//! 4. fallback  - the configured fallback chain, in its own order
//!
//! Built once per config load from what Python resolved (enabled models, strategies, stages) and
//! the config's rate limits and budgets (`RuleBook`). `decide` is the one entry point of every
//! request, Route, Chat and `ChatStream` alike: `route` (validation, budget pressure, the levels,
//! token counts, scoring) and then `admit` (the gate's check of each candidate's rules against
//! their limits, and the open-breaker mask). A call that may be answered from the cache runs the
//! two halves apart, the cache asked in between: a cached answer costs no quota. The levels are in
//! `route/levels.rs`, the admission in `route/admit.rs`.

mod admit;
mod choice;
mod counts;
mod decode;
mod explore;
mod levels;
mod request;
mod shape;
mod span;
mod stop;
mod strategies;
mod tokens;

use std::collections::HashMap;
use std::sync::Arc;

pub use admit::{quota_message, retry_wait, OpenBreaker};
use counts::CountMemo;
pub use counts::{REMEMBERED_FROM_BYTES, REMEMBERED_PER_GENERATION};
pub use decode::{route_request, DecodedRoute};
pub use explore::Exploration;
pub use request::{
    clipped, GivenReading, Limits, Message, Params, RouteInput, RoutingOptions, ROLES,
};
pub use shape::{Shape, Upper};
pub use span::{prompt_span, TokenSpan, EXACT_BELOW_BYTES};
pub use stop::Stop;
pub use strategies::BUILTIN_STRATEGIES;
pub use tokens::{Bpe, Tokenizer};

use crate::error::{CoreError, Result};
use crate::gate::RuleBook;
use crate::proto;
use crate::scoring::Candidate;
use crate::table::{ModelTable, MAX_CAPABILITIES};

/// `switchpoint.v1.DecisionLevel`; its numbers are the proto's (`Level::number`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Override,
    Stage,
    Auto,
    Fallback,
}

impl Level {
    /// Every level, in `switchpoint.v1.DecisionLevel` order.
    pub const ALL: [Self; 4] = [Self::Override, Self::Stage, Self::Auto, Self::Fallback];

    /// The name without the proto's `DECISION_LEVEL_` prefix, as Python's `Level` spells it.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Override => "OVERRIDE",
            Self::Stage => "STAGE",
            Self::Auto => "AUTO",
            Self::Fallback => "FALLBACK",
        }
    }
}

pub const CUSTOM_STRATEGY: &str = "custom";

/// A configured stage: a whitelist of models and, optionally, its own strategy.
#[derive(Debug, Clone)]
pub struct Stage {
    pub name: String,
    pub models: Vec<String>,
    pub strategy: Option<String>,
}

#[derive(Debug, Clone)]
pub struct AutoRouting {
    pub enabled: bool,
    pub hard_complexity: f64,
    pub easy_complexity: f64,
}

/// What one config load decides about routing.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// Per table row.
    pub providers: Vec<String>,
    /// Capability names; bit `i` of a table row's mask is `capabilities[i]`.
    pub capabilities: Vec<String>,
    /// Configured models that are not enabled, with why.
    pub disabled: Vec<(String, String)>,
    /// The configured strategies with their (cost, latency, quality) weights; the core adds
    /// `BUILTIN_STRATEGIES`, of which a configured one of the same name takes the place.
    pub strategies: Vec<(String, [f64; 3])>,
    pub default_strategy: String,
    pub stages: Vec<Stage>,
    pub fallback_chain: Vec<String>,
    pub auto: AutoRouting,
    pub default_output_tokens: u64,
    /// One per distinct tokenizer of the enabled models; the prompt is counted by each and the
    /// largest count used, so no model is judged to fit a context window it would overflow.
    pub encodings: Vec<Tokenizer>,
    /// What one request may carry; `validate` refuses the rest.
    pub limits: Limits,
    /// The rate limits and budgets; `None` (or an empty book) admits every candidate.
    pub quota: Option<Arc<RuleBook>>,
    pub exploration: Exploration,
}

/// A routing decision: the ranked candidates (table indices) and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub candidates: Vec<Candidate>,
    pub level: Level,
    pub reasons: Vec<String>,
    pub strategy: String,
    /// The strategy's weights as configured (scoring normalises them).
    pub weights: [f64; 3],
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub task_class: &'static str,
    pub complexity: f64,
    /// The rule classifier's confidence in its reading of the prompt (`Classification::
    /// confidence`), even when a given reading replaced it; 0 when the auto level did not decide.
    pub confidence: f64,
    /// Table indices of the models to try after the candidates, in chain order.
    pub fallback: Vec<usize>,
    /// The request's id, for a later Feedback call.
    pub request_id: String,
    /// The probability with which the first candidate was chosen: 1 unless exploring.
    pub choice_probability: f64,
}

pub struct Router {
    table: Arc<ModelTable>,
    config: RouterConfig,
    index: HashMap<String, usize>,
    strategies: HashMap<String, [f64; 3]>,
    stages: HashMap<String, usize>,
    capability_bits: HashMap<String, u64>,
    enabled_fallback: Vec<usize>,
    known_strategies: String,
    known_stages: String,
    known_capabilities: String,
    /// The reasons auto routing gives for its hard and easy thresholds.
    hard_reason: String,
    easy_reason: String,
    counts: CountMemo,
}

impl Router {
    /// # Errors
    /// `InvalidArgument` when the config does not fit the table or names an unknown strategy
    /// (Python's config validation rules both out; this keeps a bad call from misrouting).
    pub fn new(table: Arc<ModelTable>, config: RouterConfig) -> Result<Self> {
        if config.providers.len() != table.len() {
            return Err(CoreError::invalid(
                "providers",
                format!(
                    "{} given for {} models",
                    config.providers.len(),
                    table.len()
                ),
            ));
        }
        if config.capabilities.len() > MAX_CAPABILITIES {
            return Err(CoreError::invalid(
                "capabilities",
                format!("at most {MAX_CAPABILITIES}"),
            ));
        }
        let index = (0..table.len())
            .map(|i| Ok((table.spec(i)?.name.clone(), i)))
            .collect::<Result<HashMap<_, _>>>()?;
        let strategies: HashMap<String, [f64; 3]> = BUILTIN_STRATEGIES
            .iter()
            .map(|&(name, weights)| (name.to_owned(), weights))
            .chain(config.strategies.iter().cloned())
            .collect();
        let configured = config
            .stages
            .iter()
            .filter_map(|stage| stage.strategy.as_deref());
        for name in configured.chain([
            config.default_strategy.as_str(),
            strategies::HARD_STRATEGY,
            strategies::EASY_STRATEGY,
        ]) {
            if !strategies.contains_key(name) {
                return Err(CoreError::invalid(
                    "strategies",
                    format!("'{name}' is unknown"),
                ));
            }
        }
        let sorted_joined = |mut names: Vec<&str>| {
            names.sort_unstable();
            names.join(", ")
        };
        let known_stages = sorted_joined(config.stages.iter().map(|s| s.name.as_str()).collect());
        Ok(Self {
            enabled_fallback: config
                .fallback_chain
                .iter()
                .filter_map(|name| index.get(name).copied())
                .collect(),
            stages: config
                .stages
                .iter()
                .enumerate()
                .map(|(i, s)| (s.name.clone(), i))
                .collect(),
            capability_bits: (0..)
                .zip(&config.capabilities)
                .map(|(bit, name)| (name.clone(), 1u64 << bit))
                .collect(),
            known_strategies: sorted_joined(strategies.keys().map(String::as_str).collect()),
            known_stages: if known_stages.is_empty() {
                "none configured".into()
            } else {
                known_stages
            },
            known_capabilities: sorted_joined(
                config.capabilities.iter().map(String::as_str).collect(),
            ),
            hard_reason: strategies::threshold_reason(
                ">=",
                config.auto.hard_complexity,
                strategies::HARD_STRATEGY,
            ),
            easy_reason: strategies::threshold_reason(
                "<=",
                config.auto.easy_complexity,
                strategies::EASY_STRATEGY,
            ),
            index,
            strategies,
            table,
            config,
            counts: CountMemo::default(),
        })
    }

    pub fn table(&self) -> &ModelTable {
        &self.table
    }

    pub fn name(&self, index: usize) -> &str {
        self.table.spec(index).map_or("", |spec| spec.name.as_str())
    }

    /// The table index of the enabled model `name`.
    pub fn model_index(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    pub fn provider(&self, index: usize) -> &str {
        &self.config.providers[index]
    }

    /// What one request may carry under this config.
    pub fn limits(&self) -> &Limits {
        &self.config.limits
    }

    /// The first thing wrong with `input` under this config's limits.
    ///
    /// # Errors
    /// `Refused`: `TooLarge` or `InvalidRequest`, naming the field.
    pub fn validate(&self, input: &RouteInput<'_>) -> Result<()> {
        input.validate(&self.config.limits)
    }

    /// The one decision of a request: `route`, then `admit`.
    ///
    /// # Errors
    /// Those of `route` and `admit`.
    pub fn decide(
        &self,
        input: &RouteInput<'_>,
        open: &[OpenBreaker<'_>],
        stop: &Stop,
        now_s: f64,
    ) -> Result<Decision> {
        let routed = self.route(input, stop, now_s)?;
        self.admit(
            routed,
            input.routing.tenant,
            input.routing.stage,
            open,
            now_s,
        )
    }

    /// Validates `input` and ranks the models for it, under budget pressure as of `now_s`
    /// (Unix seconds), without asking the gate whether they may take it.
    ///
    /// # Errors
    /// `Refused`: `TooLarge`, `InvalidRequest` (naming the field), `NoEligibleModel` or
    /// `PolicyDenied`; `Stopped` once `stop` is set; `NoRoom` when a pressured budget needs an
    /// instance and `max_scopes` are alive.
    pub fn route(&self, input: &RouteInput<'_>, stop: &Stop, now_s: f64) -> Result<Decision> {
        self.validate(input)?;
        let shift = match &self.config.quota {
            Some(book) => book.shift(input.routing.tenant, input.routing.stage, now_s)?,
            None => None,
        };
        let mut decision = self.first_level_that_applies(input, shift.as_ref(), stop, now_s)?;
        input.request_id.clone_into(&mut decision.request_id);
        Ok(decision)
    }

    /// The decision as `switchpoint.v1.RouteDecision` bytes.
    pub fn encode(&self, decision: &Decision) -> Vec<u8> {
        proto::decision_bytes(self, decision)
    }
}

#[cfg(test)]
mod admit_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tokens_tests;
