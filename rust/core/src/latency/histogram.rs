//! A log-bucketed histogram whose bucket weights are forward-decayed (Cormode et al., "Forward
//! Decay", ICDE 2009).
//!
//! Why forward decay rather than decaying on read or on every write: a sample recorded at time `t`
//! is stored with weight `exp(lambda * (t - landmark))`, so older samples are never touched when a
//! new one arrives (record stays O(1)), and quantiles need no decay at all because every stored
//! weight would be multiplied by the same `exp(-lambda * (now - landmark))`. Only the weighted count
//! depends on `now`, and that is one multiplication. The weights grow with time, so the owner moves
//! the landmark forward (`scale`) before they could lose precision or overflow.
//!
//! Why log buckets: latencies span five orders of magnitude (sub-millisecond cache hits to
//! multi-minute generations), and a constant relative bucket width bounds the quantile error to the
//! bucket width (~4 %) everywhere on that range with a few hundred buckets.

/// Lower edge of the first logarithmic bucket; anything faster lands in the underflow bucket.
const MIN_MS: f64 = 0.01;
/// Ten minutes: anything slower is counted in the last bucket (quantiles are still clamped to the
/// largest value actually recorded, so the clamp only costs resolution, never correctness).
const MAX_MS: f64 = 600_000.0;
/// Ratio between consecutive bucket edges: ~4 % relative resolution.
const GROWTH: f64 = 1.04;
/// Logarithmic buckets needed so that `MIN_MS * GROWTH^LOG_BUCKETS >= MAX_MS`
/// (ln(6e7) / ln(1.04) = 456.6; checked by a unit test).
const LOG_BUCKETS: usize = 457;
/// Plus one underflow bucket `[0, MIN_MS)` at index 0.
const BUCKETS: usize = LOG_BUCKETS + 1;

/// Bucket holding `value_ms` (finite and >= 0, checked by the caller).
fn bucket_of(value_ms: f64) -> usize {
    if value_ms < MIN_MS {
        return 0;
    }
    if value_ms >= MAX_MS {
        return LOG_BUCKETS;
    }
    let log_index = ((value_ms / MIN_MS).ln() / GROWTH.ln()).floor();
    // The float-to-int cast saturates, and the `min` keeps slow outliers in the last bucket.
    (log_index as usize + 1).min(LOG_BUCKETS)
}

/// `[lower, upper)` edges of bucket `index`.
fn bucket_bounds(index: usize) -> (f64, f64) {
    if index == 0 {
        return (0.0, MIN_MS);
    }
    // `index` is at most LOG_BUCKETS (457), so the conversion cannot fail.
    let exponent = i32::try_from(index).unwrap_or(i32::MAX);
    (
        MIN_MS * GROWTH.powi(exponent - 1),
        MIN_MS * GROWTH.powi(exponent),
    )
}

/// Decayed weights per bucket plus the lifetime extremes used to clamp interpolated quantiles.
#[derive(Debug, Clone)]
pub(crate) struct DecayedHistogram {
    buckets: Box<[f64]>,
    /// Sum of `buckets`, kept so the weighted count is O(1) on the scoring path.
    total: f64,
    /// Smallest and largest values ever recorded. Interpolating inside a bucket can otherwise
    /// report a value nobody observed (e.g. 1.04 ms when every sample was exactly 1.0 ms).
    min: f64,
    max: f64,
}

impl DecayedHistogram {
    pub(crate) fn new() -> Self {
        Self {
            buckets: vec![0.0; BUCKETS].into_boxed_slice(),
            total: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
        }
    }

    /// Adds `value_ms` with forward weight `weight` (already relative to the owner's landmark).
    pub(crate) fn add(&mut self, value_ms: f64, weight: f64) {
        self.buckets[bucket_of(value_ms)] += weight;
        self.total += weight;
        self.min = self.min.min(value_ms);
        self.max = self.max.max(value_ms);
    }

    /// Multiplies every weight by `factor` (the owner moved its landmark). The total is re-summed
    /// here so rounding drift from many incremental additions does not accumulate forever.
    pub(crate) fn scale(&mut self, factor: f64) {
        let mut total = 0.0;
        for weight in &mut *self.buckets {
            *weight *= factor;
            total += *weight;
        }
        self.total = total;
    }

    /// Sum of forward weights (multiply by the owner's decay factor for the weight at `now`).
    pub(crate) fn forward_total(&self) -> f64 {
        self.total
    }

    /// Quantiles `qs` (each in (0, 1], ascending) by linear interpolation inside the bucket where
    /// the cumulative weight crosses `q * total`; all zeros when nothing was recorded.
    pub(crate) fn quantiles<const N: usize>(&self, qs: [f64; N]) -> [f64; N] {
        let mut out = [0.0; N];
        // Summed here rather than taken from `total` so that targets and the walk below agree
        // exactly, whatever rounding the running total picked up.
        let sum: f64 = self.buckets.iter().sum();
        if sum <= 0.0 {
            return out;
        }
        let mut next = 0;
        let mut cumulative = 0.0;
        for (index, &weight) in self.buckets.iter().enumerate() {
            if weight <= 0.0 {
                continue;
            }
            while next < N && cumulative + weight >= qs[next] * sum {
                let fraction = ((qs[next] * sum - cumulative) / weight).clamp(0.0, 1.0);
                let (lower, upper) = bucket_bounds(index);
                out[next] = (lower + fraction * (upper - lower)).clamp(self.min, self.max);
                next += 1;
            }
            if next == N {
                return out;
            }
            cumulative += weight;
        }
        // Only reachable when q * sum rounds above the final cumulative sum: the answer is the top.
        for value in &mut out[next..] {
            *value = self.max;
        }
        out
    }
}

#[cfg(test)]
// Exact equality is the point of these assertions: clamped and copied values, not computed ones.
#[allow(clippy::float_cmp)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_the_whole_range() {
        let last = i32::try_from(LOG_BUCKETS).unwrap();
        assert!(MIN_MS * GROWTH.powi(last) >= MAX_MS);
        assert!(MIN_MS * GROWTH.powi(last - 1) < MAX_MS);
    }

    #[test]
    fn bucket_of_respects_bounds() {
        for &value in &[
            0.0, 0.005, 0.01, 0.5, 1.0, 37.0, 1234.5, 59_999.0, 599_999.0,
        ] {
            let index = bucket_of(value);
            let (lower, upper) = bucket_bounds(index);
            // One ulp of slack for values that sit exactly on an edge.
            assert!(
                lower <= value * (1.0 + 1e-12),
                "{value} below bucket {index}"
            );
            assert!(
                value < upper * (1.0 + 1e-12),
                "{value} above bucket {index}"
            );
        }
        assert_eq!(bucket_of(1e9), LOG_BUCKETS);
        assert_eq!(bucket_of(f64::MAX), LOG_BUCKETS);
    }

    #[test]
    fn empty_histogram_reports_zeros() {
        let hist = DecayedHistogram::new();
        assert_eq!(hist.quantiles([0.5, 0.95, 0.99]), [0.0, 0.0, 0.0]);
        assert!(hist.forward_total().abs() < f64::EPSILON);
    }

    #[test]
    fn single_value_is_reported_exactly() {
        let mut hist = DecayedHistogram::new();
        for _ in 0..10 {
            hist.add(250.0, 1.0);
        }
        assert_eq!(hist.quantiles([0.5, 0.95, 0.99]), [250.0, 250.0, 250.0]);
    }

    #[test]
    fn quantiles_are_within_bucket_width() {
        let mut hist = DecayedHistogram::new();
        for value in 1..=1000 {
            hist.add(f64::from(value), 1.0);
        }
        let [p50, p95, p99] = hist.quantiles([0.5, 0.95, 0.99]);
        for (got, want) in [(p50, 500.0), (p95, 950.0), (p99, 990.0)] {
            assert!((got - want).abs() / want < 0.05, "got {got}, want ~{want}");
        }
    }

    #[test]
    fn weights_shift_quantiles() {
        let mut hist = DecayedHistogram::new();
        hist.add(10.0, 1.0);
        hist.add(1000.0, 9.0);
        let [p50] = hist.quantiles([0.5]);
        assert!(p50 > 900.0, "heavier sample should dominate, got {p50}");
    }

    #[test]
    fn scale_keeps_quantiles_and_scales_total() {
        let mut hist = DecayedHistogram::new();
        for value in [5.0, 50.0, 500.0] {
            hist.add(value, 4.0);
        }
        let before = hist.quantiles([0.5, 0.99]);
        hist.scale(0.25);
        assert_eq!(hist.quantiles([0.5, 0.99]), before);
        assert!((hist.forward_total() - 3.0).abs() < 1e-12);
    }

    #[test]
    fn outliers_beyond_range_clamp_to_recorded_max() {
        let mut hist = DecayedHistogram::new();
        hist.add(2_000_000.0, 1.0);
        assert_eq!(hist.quantiles([0.5]), [2_000_000.0]);
    }
}
