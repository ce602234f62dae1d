//! One model's latency state (a `Slot`) and the append-only store that holds every slot.
//!
//! Writes (`record`) take the slot's mutex. The scorer reads every candidate's slot on every
//! request, and profiling showed the mutex's two atomic read-modify-writes were half the cost of
//! scoring, so the few numbers it needs (landmark, weight totals, medians) are also published
//! through a sequence lock: readers load them with plain atomic loads and retry only if a write
//! overlapped, which is rare and brief.

use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};

use super::histogram::DecayedHistogram;
use super::kind::{LatencyKind, Percentiles};

/// A sample starts decaying the moment it is recorded, so N records in quick succession weigh a
/// hair under N and would never meet `min_samples = N` exactly. Samples younger than ~1.4 % of a
/// half-life (4 s at the default 300 s) therefore still count as whole.
const MIN_SAMPLES_SLACK: f64 = 0.99;

/// Move the landmark once new samples would weigh 2^32 times a landmark-time sample: far below
/// where f64 weights lose precision or overflow, and rare enough (every 32 half-lives of activity)
/// that the O(buckets) rescale is free in practice.
const RESCALE_AFTER_HALF_LIVES: f64 = 32.0;

/// How often a reader retries an overlapping write before waiting on the mutex instead.
const SEQLOCK_SPINS: u32 = 64;

/// The two kinds the scorer reads, in `Snapshot` order.
const SCORED: [LatencyKind; 2] = [LatencyKind::Ttft, LatencyKind::Tpot];

/// Live medians the scorer may use instead of config priors; `None` where the histogram holds
/// fewer weighted samples than required.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct LiveEstimate {
    pub(crate) ttft_ms: Option<f64>,
    pub(crate) tpot_ms: Option<f64>,
}

/// What the scorer needs from a slot, for TTFT and TPOT (indexed as `SCORED`).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Snapshot {
    landmark_s: f64,
    forward_totals: [f64; 2],
    /// `None` until computed after the latest record.
    p50s: [Option<f64>; 2],
}

impl Snapshot {
    /// `None` when a median the estimate needs has not been computed yet.
    fn estimate(&self, now_s: f64, lambda: f64, min_samples: f64) -> Option<LiveEstimate> {
        // A model never measured (most of a large table) skips the exp below.
        if self.forward_totals == [0.0, 0.0] {
            return Some(LiveEstimate {
                ttft_ms: None,
                tpot_ms: None,
            });
        }
        let decay = (-lambda * (now_s - self.landmark_s)).exp();
        let mut live = [None; 2];
        for (k, out) in live.iter_mut().enumerate() {
            let count = self.forward_totals[k] * decay;
            if count > 0.0 && count >= min_samples * MIN_SAMPLES_SLACK {
                *out = Some(self.p50s[k]?);
            }
        }
        Some(LiveEstimate {
            ttft_ms: live[0],
            tpot_ms: live[1],
        })
    }
}

/// One model's histograms. All three share a landmark so one rescale keeps them comparable.
#[derive(Debug)]
struct SlotState {
    landmark_s: f64,
    histograms: [DecayedHistogram; 3],
    /// Medians, per kind. Under forward decay a median only changes when a sample is added, so
    /// the cache is invalidated by `add` and nothing else.
    p50_cache: [Option<f64>; 3],
}

impl SlotState {
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

    fn p50(&mut self, kind: LatencyKind) -> f64 {
        let histograms = &self.histograms;
        *self.p50_cache[kind.index()].get_or_insert_with(|| {
            let [p50] = histograms[kind.index()].quantiles([0.5]);
            p50
        })
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            landmark_s: self.landmark_s,
            forward_totals: SCORED.map(|kind| self.histograms[kind.index()].forward_total()),
            p50s: SCORED.map(|kind| self.p50_cache[kind.index()]),
        }
    }
}

/// A `Snapshot` behind a sequence lock. Writers are already serialised by the slot mutex; the
/// sequence number is odd while a write is in progress.
#[derive(Debug, Default)]
struct Published {
    seq: AtomicU64,
    /// landmark, two totals, two medians (NaN bits for `None`).
    words: [AtomicU64; 5],
}

impl Published {
    /// Only called with the slot mutex held.
    fn store(&self, snapshot: &Snapshot) {
        let seq = self.seq.load(Ordering::Relaxed);
        self.seq.store(seq.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        let [t0, t1] = snapshot.forward_totals;
        let [m0, m1] = snapshot.p50s.map(|m| m.unwrap_or(f64::NAN));
        for (word, value) in self.words.iter().zip([snapshot.landmark_s, t0, t1, m0, m1]) {
            word.store(value.to_bits(), Ordering::Relaxed);
        }
        self.seq.store(seq.wrapping_add(2), Ordering::Release);
    }

    /// A consistent snapshot, or `None` if writes kept overlapping the read.
    fn load(&self) -> Option<Snapshot> {
        for _ in 0..SEQLOCK_SPINS {
            let before = self.seq.load(Ordering::Acquire);
            if before % 2 == 0 {
                let [landmark, t0, t1, m0, m1] =
                    std::array::from_fn(|i| f64::from_bits(self.words[i].load(Ordering::Relaxed)));
                fence(Ordering::Acquire);
                if self.seq.load(Ordering::Relaxed) == before {
                    let median = |m: f64| (!m.is_nan()).then_some(m);
                    return Some(Snapshot {
                        landmark_s: landmark,
                        forward_totals: [t0, t1],
                        p50s: [median(m0), median(m1)],
                    });
                }
            }
            std::hint::spin_loop();
        }
        None
    }
}

/// One model's latency state.
#[derive(Debug)]
pub(crate) struct Slot {
    state: Mutex<SlotState>,
    published: Published,
}

impl Slot {
    fn new(now_s: f64) -> Self {
        let state = SlotState {
            landmark_s: now_s,
            histograms: std::array::from_fn(|_| DecayedHistogram::new()),
            p50_cache: [None; 3],
        };
        let published = Published::default();
        published.store(&state.snapshot());
        Self {
            state: Mutex::new(state),
            published,
        }
    }

    /// The mutex never guards a half-done update (nothing inside can panic midway), so a poisoned
    /// lock still holds consistent data and is used as is rather than propagating a panic.
    fn lock(&self) -> MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds one call's measurements (already validated) at time `now_s`.
    pub(crate) fn record(
        &self,
        now_s: f64,
        lambda: f64,
        total_ms: f64,
        ttft_ms: Option<f64>,
        tpot_ms: Option<f64>,
    ) {
        let mut state = self.lock();
        let weight = state.weight_at(now_s, lambda);
        state.add(LatencyKind::Total, total_ms, weight);
        if let Some(ttft) = ttft_ms {
            state.add(LatencyKind::Ttft, ttft, weight);
        }
        if let Some(tpot) = tpot_ms {
            state.add(LatencyKind::Tpot, tpot, weight);
        }
        self.published.store(&state.snapshot());
    }

    /// p50/p95/p99 and decayed weight of one histogram as seen at `now_s`.
    pub(crate) fn percentiles(&self, kind: LatencyKind, now_s: f64, lambda: f64) -> Percentiles {
        let state = self.lock();
        let histogram = &state.histograms[kind.index()];
        let [p50, p95, p99] = histogram.quantiles([0.5, 0.95, 0.99]);
        let decay = (-lambda * (now_s - state.landmark_s)).exp();
        Percentiles {
            p50,
            p95,
            p99,
            count: histogram.forward_total() * decay,
        }
    }

    /// Live TTFT and TPOT medians, each only if backed by `min_samples` weight. Lock-free unless
    /// a median has to be computed (once per record) or writers keep overlapping the read.
    pub(crate) fn live_estimate(&self, now_s: f64, lambda: f64, min_samples: f64) -> LiveEstimate {
        if let Some(live) = self
            .published
            .load()
            .and_then(|snapshot| snapshot.estimate(now_s, lambda, min_samples))
        {
            return live;
        }
        let mut state = self.lock();
        for kind in SCORED {
            state.p50(kind);
        }
        let snapshot = state.snapshot();
        self.published.store(&snapshot);
        // Every median is now present, so `estimate` cannot return `None`; the fallback only
        // satisfies the type.
        snapshot
            .estimate(now_s, lambda, min_samples)
            .unwrap_or(LiveEstimate {
                ttft_ms: None,
                tpot_ms: None,
            })
    }
}

/// Chunk `k` holds `2^k` slots, so `CHUNKS` chunks hold `2^CHUNKS - 1` slots in all.
const CHUNKS: usize = 32;

/// Append-only slot storage. Chunks are allocated on demand and never move, so a slot index maps to
/// a fixed address and readers need no lock: each chunk and each slot inside it is a `OnceLock`,
/// written once (by `create`, which the caller serialises) and read freely afterwards.
pub(crate) struct SlotStore {
    chunks: [OnceLock<Box<[OnceLock<Slot>]>>; CHUNKS],
}

impl SlotStore {
    pub(crate) fn new() -> Self {
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

    pub(crate) fn get(&self, index: usize) -> Option<&Slot> {
        let (chunk, offset) = Self::locate(index)?;
        self.chunks[chunk].get()?.get(offset)?.get()
    }

    /// Creates slot `index`; `None` past capacity. Callers serialise creation (the tracker holds
    /// its name map's write lock), so indices are handed out densely.
    pub(crate) fn create(&self, index: usize, now_s: f64) -> Option<()> {
        let (chunk, offset) = Self::locate(index)?;
        let slots = self.chunks[chunk]
            .get_or_init(|| (0..1usize << chunk).map(|_| OnceLock::new()).collect());
        slots.get(offset)?.get_or_init(|| Slot::new(now_s));
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    use std::thread;

    use super::*;

    #[test]
    fn locate_maps_indices_to_growing_chunks() {
        assert_eq!(SlotStore::locate(0), Some((0, 0)));
        assert_eq!(SlotStore::locate(1), Some((1, 0)));
        assert_eq!(SlotStore::locate(2), Some((1, 1)));
        assert_eq!(SlotStore::locate(3), Some((2, 0)));
        assert_eq!(SlotStore::locate(6), Some((2, 3)));
        assert_eq!(SlotStore::locate(7), Some((3, 0)));
        let last = (1 << CHUNKS) - 2;
        assert_eq!(
            SlotStore::locate(last),
            Some((CHUNKS - 1, (1 << (CHUNKS - 1)) - 1))
        );
        assert_eq!(SlotStore::locate(last + 1), None);
        assert_eq!(SlotStore::locate(usize::MAX), None);
    }

    #[test]
    fn store_hands_out_only_created_slots() {
        let store = SlotStore::new();
        assert!(store.get(0).is_none());
        for index in 0..20 {
            assert_eq!(store.create(index, 0.0), Some(()));
        }
        assert!(store.get(19).is_some());
        assert!(store.get(20).is_none());
        assert_eq!(store.create(usize::MAX, 0.0), None);
    }

    #[test]
    fn published_round_trips_and_marks_missing_medians() {
        let published = Published::default();
        let snapshot = Snapshot {
            landmark_s: 12.5,
            forward_totals: [3.0, 2.0],
            p50s: [Some(40.0), None],
        };
        published.store(&snapshot);
        assert_eq!(published.load(), Some(snapshot));
        // A needed median that is missing sends the reader to the slow path.
        assert_eq!(snapshot.estimate(12.5, 0.01, 2.0), None);
        let live = snapshot.estimate(12.5, 0.01, 3.0).unwrap();
        assert_eq!((live.ttft_ms, live.tpot_ms), (Some(40.0), None));
    }

    #[test]
    fn readers_see_consistent_snapshots_under_concurrent_writes() {
        // Every record adds the same weight to TTFT and TPOT, so any consistent snapshot has
        // equal totals; a torn read would show them apart.
        let slot = Arc::new(Slot::new(0.0));
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (slot, stop) = (Arc::clone(&slot), Arc::clone(&stop));
            thread::spawn(move || {
                let mut now = 0.0;
                while !stop.load(Ordering::Relaxed) {
                    // Fast decay so the landmark moves (rescales) often as well.
                    now += 0.5;
                    slot.record(now, 1.0, 20.0, Some(5.0), Some(7.5));
                }
            })
        };
        for _ in 0..200_000 {
            if let Some(snapshot) = slot.published.load() {
                let [ttft, tpot] = snapshot.forward_totals;
                assert_eq!(ttft.to_bits(), tpot.to_bits(), "{snapshot:?}");
            }
        }
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap();
        let live = slot.live_estimate(1e9, 1e-12, 1.0);
        assert_eq!((live.ttft_ms, live.tpot_ms), (Some(5.0), Some(7.5)));
    }
}
