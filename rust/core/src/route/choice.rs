//! What a ranking decides: exploration's choice, the reasons (exclusions, the choice, each
//! predicted quality) and the fallback chain after the candidates.

use super::levels::{Context, Strategy};
use super::{Decision, Level, Router};
use crate::scoring::{Candidate, Exclusion, Ranking};

impl Router {
    /// `ranking` has at least one candidate.
    pub(super) fn decision(
        &self,
        level: Level,
        mut ranking: Ranking,
        strategy: Strategy<'_>,
        ctx: &Context<'_>,
        mut reasons: Vec<String>,
    ) -> Decision {
        self.exclusion_reasons(&ranking, ctx, &mut reasons);
        if !strategy.shifted.is_empty() {
            reasons.push(strategy.shifted.to_owned());
        }
        let mut choice_probability = 1.0;
        if matches!(level, Level::Auto | Level::Stage) {
            if let Some(explored) = self.config.exploration.choose(
                &mut ranking.ranked,
                strategy.name,
                ctx.stage,
                ctx.explore_draw,
                |index| self.name(index),
            ) {
                choice_probability = explored.probability;
                reasons.push(explored.reason);
            }
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
        for candidate in &ranking.ranked {
            let Some(p) = candidate.predicted else {
                continue;
            };
            let name = self.name(candidate.index);
            reasons.push(if p.similar > 0 {
                format!(
                    "{name} predicted {:.2} from {} similar prompts ({} ok)",
                    p.quality, p.similar, p.ok
                )
            } else {
                format!(
                    "{name} predicted {:.2} from its outcomes' trend with prompt length \
                     (no similar prompts)",
                    p.quality
                )
            });
        }
        // Only auto leaves room for the global chain: an override or a stage is a whitelist, and
        // the fallback level builds its own decision from the chain.
        let fallback = if level == Level::Auto {
            self.enabled_fallback
                .iter()
                .copied()
                .filter(|&i| !ranking.ranked.iter().any(|c| c.index == i))
                .collect()
        } else {
            Vec::new()
        };
        Decision {
            fallback,
            choice_probability,
            ..Self::decided(level, ranking.ranked, reasons, strategy, ctx)
        }
    }

    /// `candidates` at `level` under `strategy`, for `ctx`'s counts; the classifier's reading,
    /// the request's id, the chain after the candidates and exploration are set by the callers
    /// that know them.
    pub(super) fn decided(
        level: Level,
        candidates: Vec<Candidate>,
        reasons: Vec<String>,
        strategy: Strategy<'_>,
        ctx: &Context<'_>,
    ) -> Decision {
        Decision {
            candidates,
            level,
            reasons,
            strategy: strategy.name.to_owned(),
            weights: strategy.weights,
            input_tokens: ctx.input_tokens,
            output_tokens: ctx.output_tokens,
            task_class: "",
            complexity: 0.0,
            confidence: 0.0,
            fallback: Vec::new(),
            request_id: String::new(),
            choice_probability: 1.0,
        }
    }

    pub(super) fn exclusion_reasons(
        &self,
        ranking: &Ranking,
        ctx: &Context<'_>,
        reasons: &mut Vec<String>,
    ) {
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
