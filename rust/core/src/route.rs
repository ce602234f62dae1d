//! The router: from a request to a ranked decision, at four levels; the first that applies wins.
//!
//! 1. override  - the request names a model or a model list
//! 2. stage     - the request names a configured stage
//! 3. auto      - the classifier reads the prompt and picks weights; every enabled model is ranked
//! 4. fallback  - the configured fallback chain, in its own order
//!
//! Built once per config load from what Python resolved (enabled models, strategies, stages);
//! pure and fast per request: no I/O, the clock read once by scoring. Budget pressure and the
//! gate's admission stay in Python (they need the rule instances and shared state); a strategy
//! shift arrives here as a `Shift`.

mod admission;
mod decode;
mod request;
mod tokens;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

pub use admission::{Admission, Admitted};
pub use decode::route_request;
pub use request::{Message, Params, RouteInput, RoutingOptions, MAX_ID_LENGTH, ROLES};
pub use tokens::{Bpe, Tokenizer};

use crate::classify::classify;
use crate::error::{CoreError, Refusal, Result};
use crate::scoring::{Candidate, Exclusion, Ranking, Request, Weights};
use crate::table::ModelTable;
use crate::wire::{CandidateWire, DecisionWire};

/// `switchpoint.v1.DecisionLevel`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Override = 1,
    Stage = 2,
    Auto = 3,
    Fallback = 4,
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
    /// The reasons given for the two thresholds, worded by the config's owner (Python).
    pub hard_reason: String,
    pub easy_reason: String,
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
    /// Every strategy name (built-in and configured) with its (cost, latency, quality) weights.
    pub strategies: Vec<(String, [f64; 3])>,
    pub default_strategy: String,
    pub stages: Vec<Stage>,
    pub fallback_chain: Vec<String>,
    pub auto: AutoRouting,
    pub default_output_tokens: u64,
    /// One per distinct tokenizer of the enabled models; the prompt is counted by each and the
    /// largest count used, so no model is judged to fit a context window it would overflow.
    pub encodings: Vec<Tokenizer>,
}

/// Budget pressure: a request that would use one of `applies_to` uses `strategy` instead.
#[derive(Debug, Clone)]
pub struct Shift {
    pub applies_to: Vec<String>,
    pub strategy: String,
    pub reason: String,
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
    /// Table indices of the models to try after the candidates, in chain order.
    pub fallback: Vec<usize>,
}

/// A strategy resolved for one request.
#[derive(Debug, Clone, Copy)]
struct Strategy<'a> {
    name: &'a str,
    weights: [f64; 3],
    /// The caller chose it (weights or a name); auto routing then leaves it alone.
    explicit: bool,
    /// Why budget pressure replaced it; empty when it did not.
    shifted: &'a str,
}

/// The per-request features scoring needs.
#[derive(Debug, Clone, Copy)]
struct Context<'a> {
    input_tokens: u64,
    output_tokens: u64,
    required: u64,
    max_cost_usd: Option<f64>,
    shift: Option<&'a Shift>,
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
        if config.capabilities.len() > 64 {
            return Err(CoreError::invalid("capabilities", "at most 64"));
        }
        let index = (0..table.len())
            .map(|i| Ok((table.spec(i)?.name.clone(), i)))
            .collect::<Result<HashMap<_, _>>>()?;
        let strategies: HashMap<String, [f64; 3]> = config.strategies.iter().cloned().collect();
        let configured = config
            .stages
            .iter()
            .filter_map(|stage| stage.strategy.as_deref());
        for name in configured.chain([
            config.default_strategy.as_str(),
            "quality-first",
            "cost-first",
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
            index,
            strategies,
            table,
            config,
        })
    }

    pub fn table(&self) -> &ModelTable {
        &self.table
    }

    pub fn name(&self, index: usize) -> &str {
        self.table.spec(index).map_or("", |spec| spec.name.as_str())
    }

    pub fn provider(&self, index: usize) -> &str {
        &self.config.providers[index]
    }

    /// Prompt tokens as routing counts them: the largest count among the models' tokenizers.
    pub fn input_tokens(&self, messages: &[Message<'_>]) -> u64 {
        self.config
            .encodings
            .iter()
            .map(|encoding| encoding.count_messages(messages))
            .max()
            .unwrap_or(0)
    }

    /// Validates `input` and decides it.
    ///
    /// # Errors
    /// `Refused`: `InvalidRequest` (naming the field), `NoEligibleModel` or `PolicyDenied`.
    pub fn decide(&self, input: &RouteInput<'_>, shift: Option<&Shift>) -> Result<Decision> {
        input.validate()?;
        self.decide_valid(input, shift)
    }

    /// Decides a request `RouteInput::validate` accepted.
    ///
    /// # Errors
    /// `Refused`: `InvalidRequest` (naming the field), `NoEligibleModel` or `PolicyDenied`.
    pub fn decide_valid(&self, input: &RouteInput<'_>, shift: Option<&Shift>) -> Result<Decision> {
        let routing = &input.routing;
        let output_tokens = input
            .params
            .max_tokens
            .map_or(self.config.default_output_tokens, |n| n as u64);
        let ctx = Context {
            input_tokens: self.input_tokens(&input.messages),
            output_tokens,
            required: self.required_mask(&routing.capabilities)?,
            max_cost_usd: routing.max_cost_usd,
            shift,
        };
        if !routing.models.is_empty() {
            return self.override_level(routing, &ctx);
        }
        if !routing.stage.is_empty() {
            return self.stage_level(routing, &ctx);
        }
        let mut reasons = Vec::with_capacity(4);
        if self.config.auto.enabled {
            if let Some(decision) = self.auto_level(input, &ctx, &mut reasons)? {
                return Ok(decision);
            }
        } else {
            reasons.push("auto routing is disabled".to_owned());
        }
        self.fallback_level(routing, &ctx, reasons)
    }

    /// The decision as `switchpoint.v1.RouteDecision` bytes.
    pub fn encode(&self, decision: &Decision) -> Vec<u8> {
        DecisionWire {
            candidates: decision
                .candidates
                .iter()
                .map(|c| CandidateWire {
                    model: self.name(c.index),
                    provider: self.provider(c.index),
                    score: c.score,
                    norm_cost: c.norm_cost,
                    norm_latency: c.norm_latency,
                    quality: c.quality,
                    estimated_cost_usd: c.estimated_cost_usd,
                    estimated_latency_ms: c.estimated_latency_ms,
                    latency_observed: c.latency_observed,
                })
                .collect(),
            level: decision.level as i32,
            reasons: decision.reasons.iter().map(String::as_str).collect(),
            strategy: &decision.strategy,
            weights: decision.weights,
            // Counts of a request gRPC let in (4 MiB by default) and a uint32 max_tokens.
            input_tokens: u32::try_from(decision.input_tokens).unwrap_or(u32::MAX),
            output_tokens: u32::try_from(decision.output_tokens).unwrap_or(u32::MAX),
            task_class: decision.task_class,
            complexity: decision.complexity,
        }
        .encode()
    }

    // -- levels -----------------------------------------------------------------------------

    fn override_level(&self, routing: &RoutingOptions<'_>, ctx: &Context<'_>) -> Result<Decision> {
        // A stage is a whitelist: naming models does not get a request out of its stage.
        let allowed = if routing.stage.is_empty() {
            None
        } else {
            Some(&self.stage(routing.stage)?.models)
        };
        let mut indices: Vec<usize> = Vec::with_capacity(routing.models.len());
        for (i, &name) in routing.models.iter().enumerate() {
            let field = format!("routing.models[{i}]");
            if let Some(allowed) = allowed {
                if !allowed.iter().any(|m| m == name) {
                    return Err(Refusal::policy_denied(format!(
                        "{field}: model '{name}' is not allowed in stage '{}' (allowed: {})",
                        routing.stage,
                        allowed.join(", ")
                    )));
                }
            }
            let index = self.resolve_model(name, &field)?;
            if !indices.contains(&index) {
                indices.push(index);
            }
        }
        let strategy = self.resolve(routing, &self.config.default_strategy, ctx.shift)?;
        let names: Vec<&str> = indices.iter().map(|&i| self.name(i)).collect();
        let reasons = vec![format!("override: the request named {}", names.join(", "))];
        self.ranked(Level::Override, &indices, strategy, ctx, reasons)
    }

    fn stage_level(&self, routing: &RoutingOptions<'_>, ctx: &Context<'_>) -> Result<Decision> {
        let stage = self.stage(routing.stage)?;
        let mut reasons = vec![format!(
            "stage '{}' allows {}",
            stage.name,
            stage.models.join(", ")
        )];
        let indices = self.enabled_indices(&stage.models, &mut reasons);
        let fallback_name = stage
            .strategy
            .as_deref()
            .unwrap_or(&self.config.default_strategy);
        let strategy = self.resolve(routing, fallback_name, ctx.shift)?;
        self.ranked(Level::Stage, &indices, strategy, ctx, reasons)
    }

    fn auto_level(
        &self,
        input: &RouteInput<'_>,
        ctx: &Context<'_>,
        reasons: &mut Vec<String>,
    ) -> Result<Option<Decision>> {
        let auto = &self.config.auto;
        let routing = &input.routing;
        let last_user = input
            .messages
            .iter()
            .rev()
            .find(|m| m.role == "user")
            .map_or("", |m| m.content);
        let total_chars = input
            .messages
            .iter()
            .map(|m| m.content.chars().count())
            .sum();
        let reading = classify(last_user, total_chars);
        let mut strategy = self.resolve(routing, &self.config.default_strategy, ctx.shift)?;
        let mut line = format!(
            "auto: task class {}, complexity {:.2}",
            reading.task_class, reading.complexity
        );
        if !reading.signals.is_empty() {
            let _ = write!(line, " ({})", reading.signals.join("; "));
        }
        reasons.push(line);
        if !strategy.explicit {
            if reading.complexity >= auto.hard_complexity {
                strategy = self.resolve(routing, "quality-first", ctx.shift)?;
                reasons.push(auto.hard_reason.clone());
            } else if reading.complexity <= auto.easy_complexity {
                strategy = self.resolve(routing, "cost-first", ctx.shift)?;
                reasons.push(auto.easy_reason.clone());
            }
        }
        let mut hinted = *ctx;
        let mut ranking = None;
        if let (CODE_TASK_CLASS, Some(&code)) =
            (reading.task_class, self.capability_bits.get("code"))
        {
            let code_ctx = Context {
                required: ctx.required | code,
                ..*ctx
            };
            let result = self.score(None, strategy, &code_ctx)?;
            if result.ranked.is_empty() {
                reasons.push("no code-capable model is eligible; considering all models".into());
            } else {
                hinted = code_ctx;
                ranking = Some(result);
                reasons.push("code task: preferring models with the 'code' capability".into());
            }
        }
        let ranking = match ranking {
            Some(ranking) => ranking,
            None => self.score(None, strategy, ctx)?,
        };
        if ranking.ranked.is_empty() {
            self.exclusion_reasons(&ranking, &hinted, reasons);
            reasons.push("auto: no model is eligible; using the fallback chain".into());
            return Ok(None);
        }
        let mut decision = self.decision(
            Level::Auto,
            ranking,
            strategy,
            &hinted,
            std::mem::take(reasons),
        );
        decision.task_class = reading.task_class;
        decision.complexity = reading.complexity;
        Ok(Some(decision))
    }

    fn fallback_level(
        &self,
        routing: &RoutingOptions<'_>,
        ctx: &Context<'_>,
        mut reasons: Vec<String>,
    ) -> Result<Decision> {
        let chain = &self.config.fallback_chain;
        if chain.is_empty() {
            return Err(Refusal::no_eligible_model(format!(
                "no model can serve this request and routing.fallback_chain is empty: {}",
                reasons.join("; ")
            )));
        }
        reasons.push(format!("fallback chain: {}", chain.join(", ")));
        let indices = self.enabled_indices(chain, &mut reasons);
        let strategy = self.resolve(routing, &self.config.default_strategy, ctx.shift)?;
        let ranking = self.score(Some(&indices), strategy, ctx)?;
        // The chain is an order the operator chose; keep it rather than the score order.
        let candidates: Vec<Candidate> = indices
            .iter()
            .filter_map(|&i| ranking.ranked.iter().find(|c| c.index == i).copied())
            .collect();
        self.exclusion_reasons(&ranking, ctx, &mut reasons);
        if !strategy.shifted.is_empty() {
            reasons.push(strategy.shifted.to_owned());
        }
        let Some(first) = candidates.first() else {
            return Err(Refusal::no_eligible_model(format!(
                "no model can serve this request: {}",
                reasons.join("; ")
            )));
        };
        reasons.push(format!(
            "chose {}: first eligible model of the fallback chain",
            self.name(first.index)
        ));
        Ok(Decision {
            candidates,
            level: Level::Fallback,
            reasons,
            strategy: strategy.name.to_owned(),
            weights: strategy.weights,
            input_tokens: ctx.input_tokens,
            output_tokens: ctx.output_tokens,
            task_class: "",
            complexity: 0.0,
            fallback: Vec::new(),
        })
    }

    // -- helpers ----------------------------------------------------------------------------

    fn stage(&self, name: &str) -> Result<&Stage> {
        self.stages
            .get(name)
            .map(|&i| &self.config.stages[i])
            .ok_or_else(|| {
                Refusal::invalid(
                    "routing.stage",
                    format!("unknown stage '{name}' (known: {})", self.known_stages),
                )
            })
    }

    /// The index of an enabled model, or an error naming the field and why it cannot be used.
    fn resolve_model(&self, name: &str, field: &str) -> Result<usize> {
        if let Some(&index) = self.index.get(name) {
            return Ok(index);
        }
        match self.disabled_reason(name) {
            Some(why) => Err(Refusal::no_eligible_model(format!(
                "{field}: model '{name}' is unavailable: {why}"
            ))),
            None => Err(Refusal::invalid(field, format!("unknown model '{name}'"))),
        }
    }

    fn disabled_reason(&self, name: &str) -> Option<&str> {
        self.config
            .disabled
            .iter()
            .find(|(disabled, _)| disabled == name)
            .map(|(_, why)| why.as_str())
    }

    /// The mask of a request's required capabilities; an unknown name is the caller's error.
    fn required_mask(&self, capabilities: &[&str]) -> Result<u64> {
        let mut mask = 0;
        for (i, capability) in capabilities.iter().enumerate() {
            let Some(bit) = self.capability_bits.get(*capability) else {
                return Err(Refusal::invalid(
                    format!("routing.capabilities[{i}]"),
                    format!(
                        "no enabled model has capability '{capability}' (known: {})",
                        self.known_capabilities
                    ),
                ));
            };
            mask |= bit;
        }
        Ok(mask)
    }

    fn enabled_indices(&self, names: &[String], reasons: &mut Vec<String>) -> Vec<usize> {
        let mut indices = Vec::with_capacity(names.len());
        for name in names {
            match self.index.get(name) {
                Some(&index) if !indices.contains(&index) => indices.push(index),
                Some(_) => {}
                None => reasons.push(format!(
                    "{name} excluded: {}",
                    self.disabled_reason(name).unwrap_or("unknown")
                )),
            }
        }
        indices
    }

    /// Custom weights win, then the request's strategy name, then `fallback_name`; a named
    /// strategy under budget pressure becomes the pressure's strategy.
    fn resolve<'s>(
        &'s self,
        routing: &RoutingOptions<'_>,
        fallback_name: &'s str,
        shift: Option<&'s Shift>,
    ) -> Result<Strategy<'s>> {
        let resolved = if let Some(weights) = routing.weights {
            Strategy {
                name: CUSTOM_STRATEGY,
                weights,
                explicit: true,
                shifted: "",
            }
        } else if routing.strategy.is_empty() {
            self.named(fallback_name, false)
        } else {
            let Some((name, &weights)) = self.strategies.get_key_value(routing.strategy) else {
                return Err(Refusal::invalid(
                    "routing.strategy",
                    format!(
                        "unknown strategy '{}' (known: {})",
                        routing.strategy, self.known_strategies
                    ),
                ));
            };
            Strategy {
                name,
                weights,
                explicit: true,
                shifted: "",
            }
        };
        match shift {
            Some(shift) if shift.applies_to.iter().any(|name| name == resolved.name) => {
                Ok(Strategy {
                    shifted: &shift.reason,
                    ..self.named(&shift.strategy, resolved.explicit)
                })
            }
            _ => Ok(resolved),
        }
    }

    /// A strategy `new` checked exists (the default, a stage's, the auto thresholds'), or one a
    /// shift names (checked by Python's config validation; equal weights if not).
    fn named<'s>(&'s self, name: &'s str, explicit: bool) -> Strategy<'s> {
        Strategy {
            name,
            weights: self.strategies.get(name).copied().unwrap_or([1.0; 3]),
            explicit,
            shifted: "",
        }
    }

    fn score(
        &self,
        indices: Option<&[usize]>,
        strategy: Strategy<'_>,
        ctx: &Context<'_>,
    ) -> Result<Ranking> {
        let [cost, latency, quality] = strategy.weights;
        self.table.score(&Request {
            input_tokens: ctx.input_tokens,
            output_tokens: ctx.output_tokens,
            weights: Weights::new(cost, latency, quality)?,
            required_capabilities: ctx.required,
            max_cost_usd: ctx.max_cost_usd,
            candidates: indices,
        })
    }

    fn ranked(
        &self,
        level: Level,
        indices: &[usize],
        strategy: Strategy<'_>,
        ctx: &Context<'_>,
        mut reasons: Vec<String>,
    ) -> Result<Decision> {
        let ranking = self.score(Some(indices), strategy, ctx)?;
        if ranking.ranked.is_empty() {
            self.exclusion_reasons(&ranking, ctx, &mut reasons);
            return Err(Refusal::no_eligible_model(format!(
                "no model can serve this request: {}",
                reasons.join("; ")
            )));
        }
        Ok(self.decision(level, ranking, strategy, ctx, reasons))
    }

    /// `ranking` has at least one candidate.
    fn decision(
        &self,
        level: Level,
        ranking: Ranking,
        strategy: Strategy<'_>,
        ctx: &Context<'_>,
        mut reasons: Vec<String>,
    ) -> Decision {
        self.exclusion_reasons(&ranking, ctx, &mut reasons);
        if !strategy.shifted.is_empty() {
            reasons.push(strategy.shifted.to_owned());
        }
        let best = &ranking.ranked[0];
        let [cost, latency, quality] = strategy.weights;
        reasons.push(format!(
            "chose {}: score {:.3} under {} (cost {cost:.2}, latency {latency:.2}, \
             quality {quality:.2}) among {} eligible",
            self.name(best.index),
            best.score,
            strategy.name,
            ranking.ranked.len()
        ));
        // An override or a stage is a whitelist: never leave it for the global chain.
        let fallback = if matches!(level, Level::Auto | Level::Fallback) {
            self.enabled_fallback
                .iter()
                .copied()
                .filter(|&i| !ranking.ranked.iter().any(|c| c.index == i))
                .collect()
        } else {
            Vec::new()
        };
        Decision {
            candidates: ranking.ranked,
            level,
            reasons,
            strategy: strategy.name.to_owned(),
            weights: strategy.weights,
            input_tokens: ctx.input_tokens,
            output_tokens: ctx.output_tokens,
            task_class: "",
            complexity: 0.0,
            fallback,
        }
    }

    fn exclusion_reasons(&self, ranking: &Ranking, ctx: &Context<'_>, reasons: &mut Vec<String>) {
        for &(index, why) in &ranking.excluded {
            let text = match why {
                Exclusion::ContextWindow => format!(
                    "context window {} < {} estimated tokens",
                    self.table.spec(index).map_or(0, |spec| spec.context_window),
                    u128::from(ctx.input_tokens) + u128::from(ctx.output_tokens)
                ),
                Exclusion::Capabilities => "lacks a required capability".into(),
                Exclusion::MaxCost => "estimated cost is above routing.max_cost_usd".into(),
            };
            reasons.push(format!("{} excluded: {text}", self.name(index)));
        }
    }
}

/// The task class whose requests prefer models with the "code" capability.
const CODE_TASK_CLASS: &str = "code";

#[cfg(test)]
mod tests;
