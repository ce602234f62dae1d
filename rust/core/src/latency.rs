//! Per-model latency tracking: three forward-decayed histograms (total, TTFT, time per output token)
//! per slot, one slot per model name.
//!
//! Slots are handed out by name and never removed or renumbered, so a config reload that builds a
//! new `ModelTable` over the same tracker keeps every model's history. Slot storage is append-only
//! and lock-free to read (see `SlotStore`), so `record` and scoring touch only the one slot's mutex:
//! there is no tracker-wide lock on the hot path.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, RwLock};
use std::time::Instant;

use crate::error::{CoreError, Result};
use crate::histogram::DecayedHistogram;

/// Source of "now" in seconds on a monotonic scale. Injected so decay can be tested without sleeping.
pub trait Clock: Send + Sync + fmt::Debug {
    fn now_s(&self) -> f64;
}

/// The production clock: seconds since the clock was created, from `Instant` (monotonic, so decay
/// never runs backwards when the wall clock is adjusted).
#[derive(Debug)]
pub struct MonotonicClock {
    origin: Instant,
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self {
            origin: Instant::now(),
        }
    }
}

impl Clock for MonotonicClock {
    fn now_s(&self) -> f64 {
        self.origin.elapsed().as_secs_f64()
    }
}

/// A clock that only moves when told to; for tests of decay.
#[derive(Debug, Default)]
pub struct ManualClock {
    bits: AtomicU64,
}

impl ManualClock {
    pub fn new(start_s: f64) -> Self {
        Self {
            bits: AtomicU64::new(start_s.to_bits()),
        }
    }

    pub fn set(&self, now_s: f64) {
        self.bits.store(now_s.to_bits(), Ordering::Relaxed);
    }

    pub fn advance(&self, by_s: f64) {
        self.set(self.now_s() + by_s);
    }
}

impl Clock for ManualClock {
    fn now_s(&self) -> f64 {
        f64::from_bits(self.bits.load(Ordering::Relaxed))
    }
}

/// Which of a slot's three histograms to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LatencyKind {
    Total,
    Ttft,
    Tpot,
}

impl LatencyKind {
    const fn index(self) -> usize {
        match self {
            Self::Total => 0,
            Self::Ttft => 1,
            Self::Tpot => 2,
        }
    }
}

impl FromStr for LatencyKind {
    type Err = CoreError;

    fn from_str(text: &str) -> Result<Self> {
        match text {
            "total" => Ok(Self::Total),
            "ttft" => Ok(Self::Ttft),
            "tpot" => Ok(Self::Tpot),
            other => Err(CoreError::invalid(
                "kind",
                format!("must be \"total\", \"ttft\" or \"tpot\", got {other:?}"),
            )),
        }
    }
}

/// What `LatencyTracker::percentiles` reports, in milliseconds; all zeros for an empty histogram.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Percentiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    /// Sum of the samples' decayed weights at the time of the call (a fresh sample weighs 1).
    pub count: f64,
}

/// Live medians the scorer may use instead of config priors; `None` where the histogram holds
/// fewer weighted samples than required.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct LiveEstimate {
    pub(crate) ttft_ms: Option<f64>,
    pub(crate) tpot_ms: Option<f64>,
}

/// Move the landmark once new samples would weigh 2^32 times a landmark-time sample: far below
/// where f64 weights lose precision or overflow, and rare enough (every 32 half-lives of activity)
/// that the O(buckets) rescale is free in practice.
const RESCALE_AFTER_HALF_LIVES: f64 = 32.0;

/// One model's histograms. All three share a landmark so one rescale keeps them comparable.
#[derive(Debug)]
struct SlotState {
    landmark_s: f64,
    histograms: [DecayedHistogram; 3],
    /// Medians cached for the scorer, per kind. Under forward decay a median only changes when a
    /// sample is added, so the cache is invalidated by `record` and nothing else.
    p50_cache: [Option<f64>; 3],
}

impl SlotState {
    fn new(now_s: f64) -> Self {
        Self {
            landmark_s: now_s,
            histograms: [
                DecayedHistogram::new(),
                DecayedHistogram::new(),
                DecayedHistogram::new(),
            ],
            p50_cache: [None; 3],
        }
    }

    /// Forward weight of a sample taken at `now_s`, rescaling first if it would grow too large.
    fn weight_at(&mut self, now_s: f64, lambda: f64) -> f64 {
        let exponent = lambda * (now_s - self.landmark_s);
        if exponent <= RESCALE_AFTER_HALF_LIVES * std::f64::consts::LN_2 {
            return exponent.exp();
        }
        // exp(-exponent) may underflow to 0 after a very long idle period, which correctly
        // forgets everything older.
        let factor = (-exponent).exp();
        for histogram in &mut self.histograms {
            histogram.scale(factor);
        }
        self.landmark_s = now_s;
        1.0
    }

    fn add(&mut self, kind: LatencyKind, value_ms: f64, weight: f64) {
        self.histograms[kind.index()].add(value_ms, weight);
        self.p50_cache[kind.index()] = None;
    }

    /// Decayed weight of `kind`'s samples as seen at `now_s`.
    fn count(&self, kind: LatencyKind, now_s: f64, lambda: f64) -> f64 {
        let total = self.histograms[kind.index()].forward_total();
        total * (-lambda * (now_s - self.landmark_s)).exp()
    }

    fn p50(&mut self, kind: LatencyKind) -> f64 {
        let histograms = &self.histograms;
        *self.p50_cache[kind.index()].get_or_insert_with(|| {
            let [p50] = histograms[kind.index()].quantiles([0.5]);
            p50
        })
    }

    /// The live median of `kind` when at least `min_samples` (and more than zero) weight backs it.
    fn live_p50(&mut self, kind: LatencyKind, now_s: f64, lambda: f64, min: f64) -> Option<f64> {
        let count = self.count(kind, now_s, lambda);
        (count > 0.0 && count >= min).then(|| self.p50(kind))
    }
}

#[derive(Debug)]
struct Slot(Mutex<SlotState>);

impl Slot {
    /// The mutex never guards a half-done update (nothing inside can panic midway), so a poisoned
    /// lock still holds consistent data and is used as is rather than propagating a panic.
    fn lock(&self) -> MutexGuard<'_, SlotState> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Chunk `k` holds `2^k` slots, so `CHUNKS` chunks hold `2^CHUNKS - 1` slots in all.
const CHUNKS: usize = 32;

/// Append-only slot storage. Chunks are allocated on demand and never move, so a slot index maps to
/// a fixed address and readers need no lock: each chunk and each slot inside it is a `OnceLock`,
/// written once (by `slot`, serialised by the name map's write lock) and read freely afterwards.
struct SlotStore {
    chunks: [OnceLock<Box<[OnceLock<Slot>]>>; CHUNKS],
}

impl SlotStore {
    fn new() -> Self {
        Self {
            chunks: std::array::from_fn(|_| OnceLock::new()),
        }
    }

    /// (chunk, offset) of slot `index`, or `None` past the store's capacity.
    fn locate(index: usize) -> Option<(usize, usize)> {
        let position = index.checked_add(1)?;
        let chunk = (usize::BITS - 1 - position.leading_zeros()) as usize;
        (chunk < CHUNKS).then(|| (chunk, position - (1 << chunk)))
    }

    fn get(&self, index: usize) -> Option<&Slot> {
        let (chunk, offset) = Self::locate(index)?;
        self.chunks[chunk].get()?.get(offset)?.get()
    }

    /// Creates slot `index`. Only called with the name map's write lock held.
    fn create(&self, index: usize, now_s: f64) -> Option<()> {
        let (chunk, offset) = Self::locate(index)?;
        let slots = self.chunks[chunk].get_or_init(|| (0..1usize << chunk).map(|_| OnceLock::new()).collect());
        slots
            .get(offset)?
            .get_or_init(|| Slot(Mutex::new(SlotState::new(now_s))));
        Some(())
    }
}

/// Per-model time-decayed latency histograms. Shared (via `Arc`) by every `ModelTable` built over
/// it, so it outlives config reloads.
pub struct LatencyTracker {
    clock: Arc<dyn Clock>,
    half_life_s: f64,
    /// ln 2 / half-life: the forward-decay rate per second.
    lambda: f64,
    names: RwLock<HashMap<String, usize>>,
    slots: SlotStore,
    len: AtomicUsize,
}

impl fmt::Debug for LatencyTracker {
    // Deliberately short: the derived form would print every bucket of every slot.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LatencyTracker")
            .field("half_life_s", &self.half_life_s)
            .field("slots", &self.len())
            .finish_non_exhaustive()
    }
}

impl LatencyTracker {
    /// A tracker on the monotonic clock. `half_life_s` must be finite and > 0.
    pub fn new(half_life_s: f64) -> Result<Self> {
        Self::with_clock(half_life_s, Arc::new(MonotonicClock::default()))
    }

    pub fn with_clock(half_life_s: f64, clock: Arc<dyn Clock>) -> Result<Self> {
        if !(half_life_s.is_finite() && half_life_s > 0.0) {
            return Err(CoreError::invalid(
                "half_life_s",
                format!("must be finite and > 0, got {half_life_s}"),
            ));
        }
        Ok(Self {
            clock,
            half_life_s,
            lambda: std::f64::consts::LN_2 / half_life_s,
            names: RwLock::new(HashMap::new()),
            slots: SlotStore::new(),
            len: AtomicUsize::new(0),
        })
    }

    pub fn half_life_s(&self) -> f64 {
        self.half_life_s
    }

    /// Number of slots handed out so far.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Current time on the tracker's clock; the scorer reads it once per request.
    pub fn now_s(&self) -> f64 {
        self.clock.now_s()
    }

    /// The stable slot for `name`, created on first use. Not on the hot path (tables resolve their
    /// slots once at build time), so a plain `RwLock` around the name map is fine here.
    pub fn slot(&self, name: &str) -> Result<usize> {
        if let Some(&slot) = self
            .names
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
        {
            return Ok(slot);
        }
        let mut names = self.names.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(&slot) = names.get(name) {
            return Ok(slot);
        }
        let slot = names.len();
        self.slots
            .create(slot, self.clock.now_s())
            .ok_or_else(|| CoreError::invalid("name", "latency tracker is out of slots"))?;
        names.insert(name.to_owned(), slot);
        // Published after the slot exists, so `len` never counts a slot `get` cannot see.
        self.len.store(slot + 1, Ordering::Release);
        Ok(slot)
    }

    fn get(&self, slot: usize) -> Result<&Slot> {
        self.slots.get(slot).ok_or(CoreError::UnknownSlot {
            slot: slot as i128,
            len: self.len(),
        })
    }

    /// Records one successful call. `ttft_ms` is absent for non-streaming calls; time per output
    /// token is derived only when both TTFT and at least two output tokens are known, since the
    /// first token's time is TTFT, not TPOT.
    pub fn record(
        &self,
        slot: usize,
        total_ms: f64,
        ttft_ms: Option<f64>,
        output_tokens: u64,
    ) -> Result<()> {
        check_ms("total_ms", total_ms)?;
        if let Some(ttft) = ttft_ms {
            check_ms("ttft_ms", ttft)?;
            if ttft > total_ms {
                return Err(CoreError::invalid(
                    "ttft_ms",
                    format!("must be <= total_ms ({total_ms}), got {ttft}"),
                ));
            }
        }
        let slot = self.get(slot)?;
        let now_s = self.clock.now_s();
        let mut state = slot.lock();
        let weight = state.weight_at(now_s, self.lambda);
        state.add(LatencyKind::Total, total_ms, weight);
        if let Some(ttft) = ttft_ms {
            state.add(LatencyKind::Ttft, ttft, weight);
            if output_tokens >= 2 {
                let tpot = (total_ms - ttft) / (output_tokens - 1) as f64;
                state.add(LatencyKind::Tpot, tpot, weight);
            }
        }
        Ok(())
    }

    /// p50/p95/p99 and weighted count of one histogram; zeros when it is empty.
    pub fn percentiles(&self, slot: usize, kind: LatencyKind) -> Result<Percentiles> {
        let slot = self.get(slot)?;
        let now_s = self.clock.now_s();
        let state = slot.lock();
        let [p50, p95, p99] = state.histograms[kind.index()].quantiles([0.5, 0.95, 0.99]);
        Ok(Percentiles {
            p50,
            p95,
            p99,
            count: state.count(kind, now_s, self.lambda),
        })
    }

    /// Live TTFT and TPOT medians for the scorer, each only if backed by `min_samples` weight.
    /// An unknown slot yields no live data rather than an error: tables only hold slots this
    /// tracker handed out, so that case cannot arise from user input.
    pub(crate) fn live_estimate(&self, slot: usize, now_s: f64, min_samples: f64) -> LiveEstimate {
        let Some(slot) = self.slots.get(slot) else {
            return LiveEstimate {
                ttft_ms: None,
                tpot_ms: None,
            };
        };
        let mut state = slot.lock();
        LiveEstimate {
            ttft_ms: state.live_p50(LatencyKind::Ttft, now_s, self.lambda, min_samples),
            tpot_ms: state.live_p50(LatencyKind::Tpot, now_s, self.lambda, min_samples),
        }
    }
}

fn check_ms(field: &'static str, value: f64) -> Result<()> {
    if value.is_finite() && value >= 0.0 {
        Ok(())
    } else {
        Err(CoreError::invalid(
            field,
            format!("must be finite and >= 0, got {value}"),
        ))
    }
}

#[cfg(test)]
mod tests;
