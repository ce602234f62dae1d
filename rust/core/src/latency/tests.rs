//! Unit and property tests of the latency tracker; decay is driven by a `ManualClock`.

use std::sync::Arc;
use std::thread;

use proptest::prelude::*;

use super::*;

fn tracker(half_life_s: f64) -> (LatencyTracker, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(1_000.0));
    let tracker = LatencyTracker::with_clock(half_life_s, clock.clone()).expect("valid half-life");
    (tracker, clock)
}

fn close(got: f64, want: f64, relative: f64) -> bool {
    (got - want).abs() <= relative * want.abs().max(1e-9)
}

#[test]
fn rejects_bad_half_life() {
    for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let err = LatencyTracker::new(bad).expect_err("must reject");
        assert!(err.to_string().starts_with("half_life_s:"), "{err}");
    }
}

#[test]
fn slots_are_stable_and_dense() {
    let (tracker, _) = tracker(60.0);
    let a = tracker.slot("a").unwrap();
    let b = tracker.slot("b").unwrap();
    assert_eq!((a, b), (0, 1));
    assert_eq!(tracker.slot("a").unwrap(), a);
    assert_eq!(tracker.len(), 2);
    // Enough slots to span several chunks.
    for i in 0..100 {
        let slot = tracker.slot(&format!("m{i}")).unwrap();
        assert_eq!(slot, i + 2);
        assert!(tracker.get(slot).is_ok());
    }
}

#[test]
fn unknown_slot_is_an_error() {
    let (tracker, _) = tracker(60.0);
    tracker.slot("a").unwrap();
    let err = tracker.record(5, 10.0, None, 0).unwrap_err();
    assert_eq!(err, CoreError::UnknownSlot { slot: 5, len: 1 });
    assert!(tracker.percentiles(usize::MAX, LatencyKind::Total).is_err());
}

#[test]
fn record_validates_inputs() {
    let (tracker, _) = tracker(60.0);
    let slot = tracker.slot("a").unwrap();
    assert!(tracker.record(slot, -1.0, None, 0).is_err());
    assert!(tracker.record(slot, f64::NAN, None, 0).is_err());
    assert!(tracker.record(slot, 10.0, Some(f64::INFINITY), 0).is_err());
    let err = tracker.record(slot, 10.0, Some(20.0), 5).unwrap_err();
    assert!(err.to_string().starts_with("ttft_ms: must be <= total_ms"));
    // Nothing was recorded by the rejected calls.
    assert_eq!(
        tracker.percentiles(slot, LatencyKind::Total).unwrap(),
        Percentiles::default()
    );
}

#[test]
fn tpot_needs_ttft_and_two_tokens() {
    let (tracker, _) = tracker(60.0);
    let slot = tracker.slot("a").unwrap();
    tracker.record(slot, 1_000.0, None, 100).unwrap();
    tracker.record(slot, 1_000.0, Some(200.0), 1).unwrap();
    assert!(
        tracker
            .percentiles(slot, LatencyKind::Tpot)
            .unwrap()
            .count
            .abs()
            < f64::EPSILON
    );
    tracker.record(slot, 1_000.0, Some(200.0), 101).unwrap();
    let tpot = tracker.percentiles(slot, LatencyKind::Tpot).unwrap();
    assert!(close(tpot.p50, 8.0, 1e-9), "{tpot:?}");
    assert!(close(tpot.count, 1.0, 1e-9));
    assert!(close(
        tracker.percentiles(slot, LatencyKind::Ttft).unwrap().count,
        2.0,
        1e-9
    ));
    assert!(close(
        tracker.percentiles(slot, LatencyKind::Total).unwrap().count,
        3.0,
        1e-9
    ));
}

#[test]
fn kind_parses_and_rejects() {
    assert_eq!("ttft".parse::<LatencyKind>().unwrap(), LatencyKind::Ttft);
    assert_eq!("total".parse::<LatencyKind>().unwrap(), LatencyKind::Total);
    assert_eq!("tpot".parse::<LatencyKind>().unwrap(), LatencyKind::Tpot);
    let err = "p99".parse::<LatencyKind>().unwrap_err();
    assert!(err.to_string().starts_with("kind: must be"), "{err}");
}

#[test]
fn count_halves_every_half_life() {
    let (tracker, clock) = tracker(10.0);
    let slot = tracker.slot("a").unwrap();
    for _ in 0..8 {
        tracker.record(slot, 100.0, None, 0).unwrap();
    }
    clock.advance(10.0);
    let count = tracker.percentiles(slot, LatencyKind::Total).unwrap().count;
    assert!(close(count, 4.0, 1e-9), "{count}");
    clock.advance(20.0);
    let count = tracker.percentiles(slot, LatencyKind::Total).unwrap().count;
    assert!(close(count, 1.0, 1e-9), "{count}");
}

#[test]
fn new_samples_take_over_after_many_half_lives() {
    let (tracker, clock) = tracker(10.0);
    let slot = tracker.slot("a").unwrap();
    for _ in 0..1_000 {
        tracker.record(slot, 5_000.0, None, 0).unwrap();
    }
    // 20 half-lives later, 10 fresh samples outweigh 1000 old ones by ~1000x.
    clock.advance(200.0);
    for _ in 0..10 {
        tracker.record(slot, 50.0, None, 0).unwrap();
    }
    let p = tracker.percentiles(slot, LatencyKind::Total).unwrap();
    assert!(close(p.p50, 50.0, 0.05), "{p:?}");
    assert!(close(p.p95, 50.0, 0.05), "{p:?}");
}

#[test]
fn rescale_keeps_counts_and_quantiles() {
    let (tracker, clock) = tracker(1.0);
    let slot = tracker.slot("a").unwrap();
    // Step past the rescale threshold several times, recording as we go.
    for step in 0..200 {
        tracker
            .record(slot, f64::from(step % 10 + 1), None, 0)
            .unwrap();
        clock.advance(0.5);
    }
    let p = tracker.percentiles(slot, LatencyKind::Total).unwrap();
    assert!(
        p.count.is_finite() && p.count > 0.0 && p.count < 4.0,
        "{p:?}"
    );
    assert!(p.p50 >= 1.0 && p.p99 <= 10.0, "{p:?}");
    // A very long idle period underflows to zero weight instead of overflowing.
    clock.advance(1e6);
    tracker.record(slot, 3.0, None, 0).unwrap();
    let p = tracker.percentiles(slot, LatencyKind::Total).unwrap();
    assert!(close(p.count, 1.0, 1e-9), "{p:?}");
    // Interpolated within 3.0's bucket: the lifetime range [1, 10] no longer pins it exactly.
    assert!(close(p.p50, 3.0, 0.04), "{p:?}");
}

#[test]
fn live_estimate_waits_for_min_samples() {
    let (tracker, clock) = tracker(60.0);
    let slot = tracker.slot("a").unwrap();
    let now = clock.now_s();
    let none = LiveEstimate {
        ttft_ms: None,
        tpot_ms: None,
    };
    assert_eq!(tracker.live_estimate(slot, now, 0.0), none);
    for _ in 0..4 {
        tracker.record(slot, 1_100.0, Some(100.0), 11).unwrap();
    }
    assert_eq!(tracker.live_estimate(slot, now, 5.0), none);
    tracker.record(slot, 1_100.0, Some(100.0), 11).unwrap();
    let live = tracker.live_estimate(slot, now, 5.0);
    assert!(close(live.ttft_ms.unwrap(), 100.0, 1e-9));
    assert!(close(live.tpot_ms.unwrap(), 100.0, 1e-9));
    // Decay drops the weight under the threshold again.
    assert_eq!(tracker.live_estimate(slot, now + 60.0, 5.0), none);
    assert_eq!(tracker.live_estimate(usize::MAX, now, 0.0), none);
}

#[test]
fn quick_records_meet_min_samples_despite_decay() {
    let (tracker, clock) = tracker(60.0);
    let slot = tracker.slot("a").unwrap();
    for _ in 0..5 {
        tracker.record(slot, 30.0, Some(10.0), 3).unwrap();
        clock.advance(0.2);
    }
    let live = tracker.live_estimate(slot, clock.now_s(), 5.0);
    assert!(live.ttft_ms.is_some() && live.tpot_ms.is_some(), "{live:?}");
    // Well past the slack, the same five samples no longer qualify.
    let later = tracker.live_estimate(slot, clock.now_s() + 10.0, 5.0);
    assert!(later.ttft_ms.is_none(), "{later:?}");
}

#[test]
fn median_cache_follows_records() {
    let (tracker, clock) = tracker(60.0);
    let slot = tracker.slot("a").unwrap();
    tracker.record(slot, 10.0, Some(10.0), 0).unwrap();
    let now = clock.now_s();
    assert_eq!(tracker.live_estimate(slot, now, 1.0).ttft_ms, Some(10.0));
    for _ in 0..3 {
        tracker.record(slot, 40.0, Some(40.0), 0).unwrap();
    }
    let p50 = tracker.live_estimate(slot, now, 1.0).ttft_ms.unwrap();
    assert!(close(p50, 40.0, 0.04), "{p50}");
}

#[test]
fn concurrent_records_are_all_counted() {
    let (tracker, _) = tracker(1e9);
    let tracker = Arc::new(tracker);
    let slot = tracker.slot("a").unwrap();
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let tracker = Arc::clone(&tracker);
            thread::spawn(move || {
                for _ in 0..1_000 {
                    tracker.record(slot, 12.0, Some(2.0), 3).unwrap();
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().unwrap();
    }
    let p = tracker.percentiles(slot, LatencyKind::Tpot).unwrap();
    assert!(close(p.count, 4_000.0, 1e-6), "{p:?}");
    assert!(close(p.p50, 5.0, 1e-9), "{p:?}");
}

#[test]
fn debug_is_short() {
    let (tracker, _) = tracker(30.0);
    tracker.slot("a").unwrap();
    let text = format!("{tracker:?}");
    assert!(
        text.contains("half_life_s: 30.0") && text.contains("slots: 1"),
        "{text}"
    );
}

proptest! {
    #[test]
    fn percentiles_are_ordered_and_within_recorded_range(
        values in prop::collection::vec(0.0f64..1e7, 1..200),
        gaps in prop::collection::vec(0.0f64..30.0, 200),
    ) {
        let (tracker, clock) = tracker(15.0);
        let slot = tracker.slot("a").unwrap();
        for (value, gap) in values.iter().zip(&gaps) {
            tracker.record(slot, *value, None, 0).unwrap();
            clock.advance(*gap);
        }
        let p = tracker.percentiles(slot, LatencyKind::Total).unwrap();
        let min = values.iter().copied().fold(f64::INFINITY, f64::min);
        let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        prop_assert!(p.p50 <= p.p95 && p.p95 <= p.p99, "{:?}", p);
        prop_assert!(min <= p.p50 && p.p99 <= max, "{:?} not in [{}, {}]", p, min, max);
        prop_assert!(p.count.is_finite() && p.count > 0.0);
    }

    #[test]
    fn old_samples_stop_dominating(
        old in 1_000.0f64..100_000.0,
        new in 1.0f64..100.0,
        old_count in 1usize..2_000,
        half_lives in 25.0f64..1_000.0,
    ) {
        let (tracker, clock) = tracker(2.0);
        let slot = tracker.slot("a").unwrap();
        for _ in 0..old_count {
            tracker.record(slot, old, None, 0).unwrap();
        }
        clock.advance(half_lives * 2.0);
        for _ in 0..5 {
            tracker.record(slot, new, None, 0).unwrap();
        }
        let p = tracker.percentiles(slot, LatencyKind::Total).unwrap();
        // 25 half-lives shrink 2000 old samples to < 1e-4 of one fresh one.
        prop_assert!(close(p.p50, new, 0.05), "{:?} vs new {}", p, new);
        prop_assert!(close(p.p95, new, 0.05), "{:?} vs new {}", p, new);
        prop_assert!(close(p.count, 5.0, 1e-3), "{:?}", p);
    }
}
