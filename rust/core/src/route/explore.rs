//! Exploration: now and then, a request is served by a model other than the best-scored one, so
//! the predictor learns how the others do, with the probability of every choice known.
//!
//! Epsilon-greedy with logged propensities: with probability `rate` the choice is drawn uniformly
//! among the other eligible candidates whose estimated cost is at most `max_cost_ratio` times the
//! best one's (what exploring may spend), otherwise it is the best. The probability of the
//! choice made is in the decision (`choice_probability`) and its reasons, so a policy can be
//! evaluated offline from the request log by inverse propensity weighting. The draw is the
//! caller's (uniform in [0, 1)), so the core stays deterministic under test.

use crate::scoring::Candidate;

/// `routing.exploration`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Exploration {
    /// 0 turns it off.
    pub rate: f64,
    pub max_cost_ratio: f64,
    /// Where it applies: decisions under these strategies or for these stages; everywhere (but
    /// overrides and the fallback chain) when both are empty.
    pub strategies: Vec<String>,
    pub stages: Vec<String>,
}

/// What exploring did to a ranking.
pub struct Explored {
    /// The probability that the candidate now first was chosen.
    pub probability: f64,
    /// The reason line, naming the choice and its probability.
    pub reason: String,
}

impl Exploration {
    fn applies(&self, strategy: &str, stage: &str) -> bool {
        self.rate > 0.0
            && ((self.strategies.is_empty() && self.stages.is_empty())
                || self.strategies.iter().any(|s| s == strategy)
                || (!stage.is_empty() && self.stages.iter().any(|s| s == stage)))
    }

    /// Reorders `ranked` (best first, at least one) when the draw explores, and says with what
    /// probability its first candidate was chosen; None where exploration does not apply.
    /// `name` gives a candidate's model name for the reason.
    pub fn choose<'n>(
        &self,
        ranked: &mut [Candidate],
        strategy: &str,
        stage: &str,
        draw: f64,
        name: impl Fn(usize) -> &'n str,
    ) -> Option<Explored> {
        if !self.applies(strategy, stage) {
            return None;
        }
        let budget = ranked[0].estimated_cost_usd * self.max_cost_ratio;
        let others: Vec<usize> = (1..ranked.len())
            .filter(|&i| ranked[i].estimated_cost_usd <= budget)
            .collect();
        let best = name(ranked[0].index);
        if others.is_empty() {
            return Some(Explored {
                probability: 1.0,
                reason: format!("exploration: nothing else within its cost bound; {best} at 1"),
            });
        }
        // Counts of candidates are far below 2^52: exact as floats.
        #[allow(clippy::cast_precision_loss)]
        let each = self.rate / others.len() as f64;
        if !(0.0..self.rate).contains(&draw) {
            return Some(Explored {
                probability: 1.0 - self.rate,
                reason: format!(
                    "exploration: the best-scored {best}, probability {:.4}",
                    1.0 - self.rate
                ),
            });
        }
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let pick = ((draw / self.rate * others.len() as f64) as usize).min(others.len() - 1);
        let chosen = others[pick];
        ranked[..=chosen].rotate_right(1);
        Some(Explored {
            probability: each,
            reason: format!(
                "explored: chose {} with probability {each:.4} instead of the best-scored {best}",
                name(ranked[0].index)
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(index: usize, cost: f64) -> Candidate {
        Candidate {
            index,
            score: 0.0,
            norm_cost: 0.0,
            norm_latency: 0.0,
            quality: 0.5,
            estimated_cost_usd: cost,
            estimated_latency_ms: 1.0,
            latency_observed: false,
            predicted: None,
        }
    }

    const NAMES: [&str; 4] = ["a", "b", "c", "d"];

    fn explore(rate: f64, draw: f64, costs: &[f64]) -> (Vec<usize>, Option<f64>) {
        let config = Exploration {
            rate,
            max_cost_ratio: 2.0,
            ..Exploration::default()
        };
        let mut ranked: Vec<_> = costs
            .iter()
            .enumerate()
            .map(|(i, &c)| candidate(i, c))
            .collect();
        let explored = config.choose(&mut ranked, "balanced", "", draw, |i| NAMES[i]);
        (
            ranked.iter().map(|c| c.index).collect(),
            explored.map(|e| e.probability),
        )
    }

    #[test]
    fn a_draw_above_the_rate_keeps_the_best() {
        assert_eq!(
            explore(0.1, 0.5, &[1.0, 1.0, 1.0]),
            (vec![0, 1, 2], Some(0.9))
        );
    }

    #[test]
    fn a_draw_below_the_rate_picks_among_the_others_within_the_cost_bound() {
        // d costs 5x the best: beyond the bound of 2x, never explored.
        let costs = [1.0, 1.5, 2.0, 5.0];
        assert_eq!(explore(0.2, 0.05, &costs).0, vec![1, 0, 2, 3]);
        let (order, probability) = explore(0.2, 0.15, &costs);
        assert_eq!(order, vec![2, 0, 1, 3]);
        assert!((probability.unwrap() - 0.1).abs() < 1e-12);
    }

    #[test]
    fn each_choice_is_made_as_often_as_its_probability_says() {
        let (draws, mut seen) = (1000, [0u32; 3]);
        let mut said = [0.0; 3];
        for step in 0..draws {
            let (order, probability) = explore(0.3, f64::from(step) / f64::from(draws), &[1.0; 3]);
            seen[order[0]] += 1;
            said[order[0]] = probability.unwrap();
        }
        for (count, probability) in seen.iter().zip(said) {
            assert!((f64::from(*count) / f64::from(draws) - probability).abs() < 1e-9);
        }
        assert!((said.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    }

    #[test]
    fn it_applies_only_where_configured() {
        let config = Exploration {
            rate: 1.0,
            max_cost_ratio: 10.0,
            strategies: vec!["cost-first".into()],
            stages: vec!["ui".into()],
        };
        let mut ranked = vec![candidate(0, 1.0), candidate(1, 1.0)];
        assert!(config
            .choose(&mut ranked, "balanced", "", 0.0, |i| NAMES[i])
            .is_none());
        assert!(config
            .choose(&mut ranked, "cost-first", "", 0.0, |i| NAMES[i])
            .is_some());
        assert!(config
            .choose(&mut ranked, "balanced", "ui", 0.0, |i| NAMES[i])
            .is_some());
        let off = Exploration::default();
        assert!(off
            .choose(&mut ranked, "balanced", "", 0.0, |i| NAMES[i])
            .is_none());
    }
}
