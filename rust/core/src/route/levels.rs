//! The four levels of a decision and what they share: resolving strategies, scoring, the reasons.

use std::cell::OnceCell;
use std::fmt::Write as _;

use super::strategies::{EASY_STRATEGY, HARD_STRATEGY};
use super::{clipped, Decision, Level, RouteInput, Router, RoutingOptions, Stage, CUSTOM_STRATEGY};
use crate::classify::{classify, Classification};
use crate::error::{Refusal, Result};
use crate::gate::Shift;
use crate::scoring::{Candidate, PredictedQuality, Ranking, Request, Weights};

/// A strategy resolved for one request.
#[derive(Debug, Clone, Copy)]
pub(super) struct Strategy<'a> {
    pub(super) name: &'a str,
    pub(super) weights: [f64; 3],
    /// The caller chose it (weights or a name); auto routing then leaves it alone.
    explicit: bool,
    /// Why budget pressure replaced it; empty when it did not.
    pub(super) shifted: &'a str,
}

/// The per-request features scoring needs.
#[derive(Debug, Clone, Copy)]
pub(super) struct Context<'a> {
    pub(super) input_tokens: u64,
    pub(super) output_tokens: u64,
    required: u64,
    max_cost_usd: Option<f64>,
    shift: Option<&'a Shift>,
    /// The classifier's reading, made at most once however many times the levels run.
    reading: &'a OnceCell<Classification>,
    predicted: &'a [Option<PredictedQuality>],
    pub(super) stage: &'a str,
    pub(super) explore_draw: f64,
}

/// The task class whose requests prefer models with the "code" capability.
const CODE_TASK_CLASS: &str = "code";

impl Router {
    /// `input` is valid; the four levels in order, for a prompt of `input_tokens`. `reading`
    /// keeps the classifier's reading of `input` between runs (the same request may be routed
    /// at several counts: route/span.rs).
    pub(super) fn levels(
        &self,
        input: &RouteInput<'_>,
        shift: Option<&Shift>,
        input_tokens: u64,
        reading: &OnceCell<Classification>,
    ) -> Result<Decision> {
        let routing = &input.routing;
        let output_tokens = input
            .params
            .max_tokens
            .map_or(self.config.default_output_tokens, |n| n as u64);
        let ctx = Context {
            input_tokens,
            output_tokens,
            required: self.required_mask(&routing.capabilities)?,
            max_cost_usd: routing.max_cost_usd,
            shift,
            reading,
            predicted: &input.predicted,
            stage: routing.stage,
            explore_draw: input.explore_draw,
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
        let reading = ctx.reading.get_or_init(|| {
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
            classify(last_user, total_chars)
        });
        let confidence = reading.confidence(auto.easy_complexity, auto.hard_complexity);
        let given = input.given.unwrap_or_default();
        let (task_class, complexity, signals) = match given.reading {
            Some((task_class, complexity)) => (task_class, complexity, &[][..]),
            None => (reading.task_class, reading.complexity, &reading.signals[..]),
        };
        let mut strategy = self.resolve(routing, &self.config.default_strategy, ctx.shift)?;
        let mut line = format!("auto: task class {task_class}, complexity {complexity:.2}");
        if !signals.is_empty() {
            let _ = write!(line, " ({})", signals.join("; "));
        }
        reasons.push(line);
        if !given.note.is_empty() {
            reasons.push(given.note.to_owned());
        }
        if !strategy.explicit {
            if complexity >= auto.hard_complexity {
                strategy = self.resolve(routing, HARD_STRATEGY, ctx.shift)?;
                reasons.push(self.hard_reason.clone());
            } else if complexity <= auto.easy_complexity {
                strategy = self.resolve(routing, EASY_STRATEGY, ctx.shift)?;
                reasons.push(self.easy_reason.clone());
            }
        }
        let mut hinted = *ctx;
        let mut ranking = None;
        if let (CODE_TASK_CLASS, Some(&code)) = (task_class, self.capability_bits.get("code")) {
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
        decision.task_class = task_class;
        decision.complexity = complexity;
        decision.confidence = confidence;
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
        Ok(Self::decided(
            Level::Fallback,
            candidates,
            reasons,
            strategy,
            ctx,
        ))
    }

    // -- helpers ----------------------------------------------------------------------------

    fn stage(&self, name: &str) -> Result<&Stage> {
        self.stages
            .get(name)
            .map(|&i| &self.config.stages[i])
            .ok_or_else(|| {
                Refusal::invalid(
                    "routing.stage",
                    format!(
                        "unknown stage '{}' (known: {})",
                        clipped(name),
                        self.known_stages
                    ),
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
            None => Err(Refusal::invalid(
                field,
                format!("unknown model '{}'", clipped(name)),
            )),
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
                        "no enabled model has capability '{}' (known: {})",
                        clipped(capability),
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
                        clipped(routing.strategy),
                        self.known_strategies
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
            predicted: ctx.predicted,
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
}
