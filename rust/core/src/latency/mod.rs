//! Per-model latency tracking: three forward-decayed histograms (total, TTFT, time per output token)
//! per slot, one slot per model name.
//!
//! Slots are handed out by name and never removed or renumbered, so a config reload that builds a
//! new `ModelTable` over the same tracker keeps every model's history. Slot storage is append-only
//! and lock-free to read (see `latency/slot.rs`), so `record` touches only the one slot's mutex and scoring
//! reads slots without locking: there is no tracker-wide lock on the hot path.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Instant;

use crate::error::{CoreError, Result};
use slot::{LiveEstimate, Slot, SlotStore};

pub use kind::{LatencyKind, Percentiles};

mod histogram;
mod kind;
mod slot;

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
    /// A tracker on the monotonic clock.
    ///
    /// # Errors
    /// `InvalidArgument` unless `half_life_s` is finite and > 0.
    pub fn new(half_life_s: f64) -> Result<Self> {
        Self::with_clock(half_life_s, Arc::new(MonotonicClock::default()))
    }

    /// A tracker on `clock` (tests pass a `ManualClock`).
    ///
    /// # Errors
    /// `InvalidArgument` unless `half_life_s` is finite and > 0.
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
    ///
    /// # Errors
    /// `InvalidArgument` once all 2^32 - 1 slots are taken.
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
    ///
    /// # Errors
    /// `UnknownSlot` for a slot this tracker never handed out; `InvalidArgument` when a time is
    /// negative or not finite, or `ttft_ms > total_ms`. Nothing is recorded on error.
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
        let tpot_ms = match ttft_ms {
            Some(ttft) if output_tokens >= 2 => {
                Some((total_ms - ttft) / (output_tokens - 1) as f64)
            }
            _ => None,
        };
        self.get(slot)?
            .record(self.clock.now_s(), self.lambda, total_ms, ttft_ms, tpot_ms);
        Ok(())
    }

    /// p50/p95/p99 and weighted count of one histogram; zeros when it is empty.
    ///
    /// # Errors
    /// `UnknownSlot` for a slot this tracker never handed out.
    pub fn percentiles(&self, slot: usize, kind: LatencyKind) -> Result<Percentiles> {
        Ok(self
            .get(slot)?
            .percentiles(kind, self.clock.now_s(), self.lambda))
    }

    /// Live TTFT and TPOT medians for the scorer, each only if backed by `min_samples` weight.
    /// An unknown slot yields no live data rather than an error: tables only hold slots this
    /// tracker handed out, so that case cannot arise from user input.
    pub(crate) fn live_estimate(&self, slot: usize, now_s: f64, min_samples: f64) -> LiveEstimate {
        match self.slots.get(slot) {
            Some(slot) => slot.live_estimate(now_s, self.lambda, min_samples),
            None => LiveEstimate {
                ttft_ms: None,
                tpot_ms: None,
            },
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
