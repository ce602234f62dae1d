//! Per-request scoring: filter the candidates, estimate cost and latency, min-max normalise across
//! the eligible set, combine with the strategy's weights, rank.
//!
//! This runs once per routed request with the GIL held, so it allocates only the two output
//! vectors, hashes nothing, and reads the clock once.

use std::cmp::Ordering;

use crate::error::{CoreError, Result};
use crate::table::{expected_latency_ms, ModelTable};

/// Strategy weights, normalised to sum to 1. Only constructible through `new`, so a `Weights`
/// value is always valid and scoring never re-checks it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Weights {
    cost: f64,
    latency: f64,
    quality: f64,
}

impl Weights {
    /// Normalises (cost, latency, quality) to sum to 1.
    ///
    /// # Errors
    /// `InvalidWeights` unless each weight is finite and >= 0 and they are not all zero.
    pub fn new(cost: f64, latency: f64, quality: f64) -> Result<Self> {
        let valid = |w: f64| w.is_finite() && w >= 0.0;
        let sum = cost + latency + quality;
        // `sum` can overflow to infinity for huge finite weights; that is rejected too rather
        // than normalised into zeros.
        if !(valid(cost) && valid(latency) && valid(quality) && sum > 0.0 && sum.is_finite()) {
            return Err(CoreError::InvalidWeights {
                cost,
                latency,
                quality,
            });
        }
        Ok(Self {
            cost: cost / sum,
            latency: latency / sum,
            quality: quality / sum,
        })
    }

    pub fn cost(&self) -> f64 {
        self.cost
    }

    pub fn latency(&self) -> f64 {
        self.latency
    }

    pub fn quality(&self) -> f64 {
        self.quality
    }
}

/// The features of one request; everything the scorer needs and nothing per-model.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub weights: Weights,
    pub required_capabilities: u64,
    /// Candidates whose expected cost exceeds this are excluded.
    pub max_cost_usd: Option<f64>,
    /// Table indices to consider, in order (duplicates ignored); all models when `None`.
    pub candidates: Option<&'a [usize]>,
    /// This request's predicted quality per table index, in place of the configured one where
    /// set; empty when nothing is predicted.
    pub predicted: &'a [Option<PredictedQuality>],
}

/// A model's quality for one request as the quality predictor sees it: the similar prompts'
/// scores blended with the model's prior by evidence (python/switchpoint/routing/predictor).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PredictedQuality {
    /// In [0, 1].
    pub quality: f64,
    /// The weight of the outcomes behind `quality` (by similarity and age).
    pub evidence: f64,
    /// Similar prompts of this model found, and how many of them scored at least 0.5.
    pub similar: u32,
    pub ok: u32,
}

/// Why a candidate was not eligible. Checked in declaration order; the first failing check wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exclusion {
    ContextWindow,
    Capabilities,
    MaxCost,
}

impl Exclusion {
    /// The reason as Python and the wire spell it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::ContextWindow => "context_window",
            Self::Capabilities => "capabilities",
            Self::MaxCost => "max_cost",
        }
    }
}

/// One eligible candidate with the numbers that produced its score.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    pub index: usize,
    /// In [0, 1]: a convex combination of three [0, 1] terms.
    pub score: f64,
    pub norm_cost: f64,
    pub norm_latency: f64,
    pub quality: f64,
    pub estimated_cost_usd: f64,
    pub estimated_latency_ms: f64,
    /// True when both TTFT and TPOT came from live measurements rather than config priors.
    pub latency_observed: bool,
    /// Set when `quality` is this request's prediction rather than the configured prior.
    pub predicted: Option<PredictedQuality>,
}

/// Eligible candidates best first, and excluded ones in candidate order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ranking {
    pub ranked: Vec<Candidate>,
    pub excluded: Vec<(usize, Exclusion)>,
}

impl Ranking {
    pub fn best(&self) -> Option<usize> {
        self.ranked.first().map(|candidate| candidate.index)
    }
}

/// Remembers which indices were already visited, to ignore duplicate candidates without hashing.
/// Tables of up to 1024 models fit in the inline words, so the common case does not allocate.
enum Seen {
    Inline([u64; 16]),
    Heap(Vec<u64>),
}

impl Seen {
    fn new(len: usize) -> Self {
        let words = len.div_ceil(64);
        if words <= 16 {
            Self::Inline([0; 16])
        } else {
            Self::Heap(vec![0; words])
        }
    }

    /// Marks `index` (already bounds-checked) and says whether it was new.
    fn insert(&mut self, index: usize) -> bool {
        let words: &mut [u64] = match self {
            Self::Inline(words) => words,
            Self::Heap(words) => words,
        };
        let (word, bit) = (index / 64, 1u64 << (index % 64));
        let new = words[word] & bit == 0;
        words[word] |= bit;
        new
    }
}

/// Best first: higher score, then cheaper, then higher quality, then lower index. The index makes
/// the order total, so equal inputs always give equal rankings.
fn rank_order(a: &Candidate, b: &Candidate) -> Ordering {
    b.score
        .total_cmp(&a.score)
        .then_with(|| a.estimated_cost_usd.total_cmp(&b.estimated_cost_usd))
        .then_with(|| b.quality.total_cmp(&a.quality))
        .then_with(|| a.index.cmp(&b.index))
}

/// Up to this many candidates, sorting them in place beats building and gathering keys.
const SORT_IN_PLACE_UP_TO: usize = 24;

/// An integer that orders like `score.total_cmp`, highest score first.
fn descending_key(score: f64) -> u64 {
    let bits = score.to_bits();
    // total_cmp's order as unsigned integers: negatives flipped, positives above them.
    let ascending = if bits >> 63 == 1 {
        !bits
    } else {
        bits | 1 << 63
    };
    !ascending
}

/// Best first (`rank_order`). Candidates are 64 bytes and compared on floats; for more than a
/// few, sorting 16-byte (integer key, position) pairs and gathering once is cheaper (about 20 % at
/// 1000), and the rare runs of equal scores are then put in `rank_order` among themselves.
fn rank(ranked: Vec<Candidate>) -> Vec<Candidate> {
    if ranked.len() <= SORT_IN_PLACE_UP_TO {
        let mut ranked = ranked;
        ranked.sort_unstable_by(rank_order);
        return ranked;
    }
    let mut keys: Vec<(u64, usize)> = ranked
        .iter()
        .enumerate()
        .map(|(position, candidate)| (descending_key(candidate.score), position))
        .collect();
    keys.sort_unstable();
    let mut sorted: Vec<Candidate> = keys.iter().map(|&(_, position)| ranked[position]).collect();
    for run in sorted.chunk_by_mut(|a, b| a.score.to_bits() == b.score.to_bits()) {
        if run.len() > 1 {
            run.sort_unstable_by(rank_order);
        }
    }
    sorted
}

/// Position of `value` in `[min, min + range]` as a [0, 1] fraction; 0 when every value is equal,
/// which is what keeps a single candidate or identical candidates from producing NaN.
fn normalise(value: f64, min: f64, inverse_range: f64) -> f64 {
    ((value - min) * inverse_range).clamp(0.0, 1.0)
}

/// 1 / range, or 0 when every value is equal: `normalise` then gives 0 (no NaN) and multiplies
/// instead of dividing twice per candidate.
fn inverse(range: f64) -> f64 {
    if range > 0.0 {
        1.0 / range
    } else {
        0.0
    }
}

impl ModelTable {
    /// Scores `request.candidates` (every model when `None`) and ranks the eligible ones.
    ///
    /// # Errors
    /// `IndexOutOfRange` for a candidate that is not a table index; `InvalidArgument` when
    /// `max_cost_usd` is negative or NaN.
    pub fn score(&self, request: &Request<'_>) -> Result<Ranking> {
        if let Some(max) = request.max_cost_usd {
            if max.is_nan() || max < 0.0 {
                return Err(CoreError::invalid(
                    "max_cost_usd",
                    format!("must be >= 0, got {max}"),
                ));
            }
        }
        match request.candidates {
            None => Ok(self.score_indices(request, 0..self.rows.len(), self.rows.len())),
            Some(candidates) => {
                // Checked up front so a bad index fails the whole request before any work.
                if let Some(&bad) = candidates.iter().find(|&&i| i >= self.rows.len()) {
                    return Err(CoreError::IndexOutOfRange {
                        what: "candidate index",
                        index: bad as i128,
                        len: self.rows.len(),
                    });
                }
                let mut seen = Seen::new(self.rows.len());
                let unique = candidates.iter().copied().filter(|&i| seen.insert(i));
                Ok(self.score_indices(request, unique, candidates.len()))
            }
        }
    }

    /// `indices` are in range and unique; `hint` sizes the output vector.
    fn score_indices(
        &self,
        request: &Request<'_>,
        indices: impl Iterator<Item = usize>,
        hint: usize,
    ) -> Ranking {
        let now_s = self.tracker.now_s();
        let mut ranked = Vec::with_capacity(hint);
        let mut excluded = Vec::new();
        // A sum that overflows u64 exceeds every context window.
        let needed = request.input_tokens.checked_add(request.output_tokens);
        for index in indices {
            let row = &self.rows[index];
            let spec = &row.spec;
            if needed.is_none_or(|needed| needed > spec.context_window) {
                excluded.push((index, Exclusion::ContextWindow));
                continue;
            }
            if spec.capabilities & request.required_capabilities != request.required_capabilities {
                excluded.push((index, Exclusion::Capabilities));
                continue;
            }
            let cost = spec.cost_usd(request.input_tokens, request.output_tokens);
            if request.max_cost_usd.is_some_and(|max| cost > max) {
                excluded.push((index, Exclusion::MaxCost));
                continue;
            }
            let live = self
                .tracker
                .live_estimate(row.slot, now_s, self.min_samples);
            let ttft = live.ttft_ms.unwrap_or(spec.ttft_prior_ms);
            let tpot = live.tpot_ms.unwrap_or(spec.tpot_prior_ms);
            let predicted = request.predicted.get(index).copied().flatten();
            ranked.push(Candidate {
                index,
                score: 0.0,
                norm_cost: 0.0,
                norm_latency: 0.0,
                quality: predicted.map_or(spec.quality, |p| p.quality),
                predicted,
                estimated_cost_usd: cost,
                estimated_latency_ms: expected_latency_ms(ttft, tpot, request.output_tokens),
                latency_observed: live.ttft_ms.is_some() && live.tpot_ms.is_some(),
            });
        }
        Ranking {
            ranked: Self::finish(request.weights, ranked),
            excluded,
        }
    }

    /// Normalises and scores the eligible candidates, and returns them best first.
    fn finish(weights: Weights, mut ranked: Vec<Candidate>) -> Vec<Candidate> {
        let (mut cost_min, mut cost_max) = (f64::INFINITY, f64::NEG_INFINITY);
        let (mut lat_min, mut lat_max) = (f64::INFINITY, f64::NEG_INFINITY);
        for candidate in &ranked {
            cost_min = cost_min.min(candidate.estimated_cost_usd);
            cost_max = cost_max.max(candidate.estimated_cost_usd);
            lat_min = lat_min.min(candidate.estimated_latency_ms);
            lat_max = lat_max.max(candidate.estimated_latency_ms);
        }
        let (inverse_cost, inverse_lat) =
            (inverse(cost_max - cost_min), inverse(lat_max - lat_min));
        for candidate in &mut ranked {
            candidate.norm_cost = normalise(candidate.estimated_cost_usd, cost_min, inverse_cost);
            candidate.norm_latency =
                normalise(candidate.estimated_latency_ms, lat_min, inverse_lat);
            let merit = weights.latency * (1.0 - candidate.norm_latency)
                + weights.cost * (1.0 - candidate.norm_cost)
                + weights.quality * candidate.quality;
            // The clamp only absorbs rounding: weights summing to 1 + ulp could nudge past 1.
            candidate.score = merit.clamp(0.0, 1.0);
        }
        rank(ranked)
    }
}

#[cfg(test)]
mod tests;
