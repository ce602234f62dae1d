//! Unit and property tests of scoring and ranking.
// Equal inputs must give bit-identical scores and exact zeros; that is what several tests assert.
#![allow(clippy::float_cmp)]

use std::sync::Arc;

use proptest::prelude::*;

use super::*;
use crate::latency::{LatencyTracker, ManualClock};
use crate::table::ModelSpec;

const COST_FIRST: (f64, f64, f64) = (1.0, 0.0, 0.0);
const LATENCY_FIRST: (f64, f64, f64) = (0.0, 1.0, 0.0);
const QUALITY_FIRST: (f64, f64, f64) = (0.0, 0.0, 1.0);

fn model(name: &str, price: f64, ttft: f64, quality: f64) -> ModelSpec {
    ModelSpec {
        name: name.into(),
        input_per_mtok: price,
        output_per_mtok: price * 4.0,
        context_window: 100_000,
        quality,
        ttft_prior_ms: ttft,
        tpot_prior_ms: 10.0,
        capabilities: 0,
    }
}

fn table_with(models: Vec<ModelSpec>, min_samples: u32) -> (ModelTable, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(0.0));
    let tracker = Arc::new(LatencyTracker::with_clock(300.0, clock.clone()).unwrap());
    (
        ModelTable::new(models, tracker, min_samples).unwrap(),
        clock,
    )
}

/// cheap+slow+weak, pricey+fast+strong, middling.
fn three() -> ModelTable {
    table_with(
        vec![
            model("cheap", 0.1, 900.0, 0.3),
            model("fast", 10.0, 100.0, 0.9),
            model("mid", 1.0, 400.0, 0.6),
        ],
        20,
    )
    .0
}

fn request(weights: (f64, f64, f64)) -> Request<'static> {
    Request {
        input_tokens: 1_000,
        output_tokens: 200,
        weights: Weights::new(weights.0, weights.1, weights.2).unwrap(),
        required_capabilities: 0,
        max_cost_usd: None,
        candidates: None,
        predicted: &[],
    }
}

fn order(ranking: &Ranking) -> Vec<usize> {
    ranking.ranked.iter().map(|c| c.index).collect()
}

#[test]
fn weights_are_validated_and_normalised() {
    let w = Weights::new(2.0, 1.0, 1.0).unwrap();
    assert!((w.cost() - 0.5).abs() < 1e-12 && (w.latency() - 0.25).abs() < 1e-12);
    assert!((w.quality() - 0.25).abs() < 1e-12);
    for (c, l, q) in [
        (0.0, 0.0, 0.0),
        (-1.0, 1.0, 1.0),
        (f64::NAN, 1.0, 1.0),
        (1.0, f64::INFINITY, 0.0),
        (f64::MAX, f64::MAX, 0.0),
    ] {
        let err = Weights::new(c, l, q).unwrap_err();
        assert!(err
            .to_string()
            .starts_with("weights: must be finite and >= 0, not all zero"));
    }
}

#[test]
fn strategies_pick_their_model() {
    let table = three();
    assert_eq!(
        order(&table.score(&request(COST_FIRST)).unwrap()),
        [0, 2, 1]
    );
    assert_eq!(
        order(&table.score(&request(LATENCY_FIRST)).unwrap()),
        [1, 2, 0]
    );
    assert_eq!(
        order(&table.score(&request(QUALITY_FIRST)).unwrap()),
        [1, 2, 0]
    );
    let best = table.score(&request(COST_FIRST)).unwrap();
    assert_eq!(best.best(), Some(0));
    assert!((best.ranked[0].score - 1.0).abs() < 1e-12);
    assert!(best.ranked[2].score.abs() < 1e-12);
}

#[test]
fn estimates_follow_the_formulas() {
    let table = three();
    let ranking = table.score(&request(COST_FIRST)).unwrap();
    let mid = ranking.ranked.iter().find(|c| c.index == 2).unwrap();
    // 1000 * 1.0 / 1e6 + 200 * 4.0 / 1e6
    assert!((mid.estimated_cost_usd - 0.0018).abs() < 1e-12);
    // 400 + 200 * 10
    assert!((mid.estimated_latency_ms - 2_400.0).abs() < 1e-9);
    assert!(!mid.latency_observed);
    assert!((mid.quality - 0.6).abs() < f64::EPSILON);
}

#[test]
fn exclusions_in_filter_order() {
    let mut small = model("small", 0.1, 100.0, 0.5);
    small.context_window = 1_000;
    small.capabilities = 0b11;
    let mut no_tools = model("no_tools", 0.1, 100.0, 0.5);
    no_tools.capabilities = 0b01;
    let mut tools = model("tools", 0.1, 100.0, 0.5);
    tools.capabilities = 0b11;
    let mut pricey = model("pricey", 100.0, 100.0, 0.5);
    pricey.capabilities = 0b111;
    let (table, _) = table_with(vec![small, no_tools, tools, pricey], 20);
    let mut req = request(COST_FIRST);
    req.required_capabilities = 0b10;
    req.max_cost_usd = Some(0.01);
    let ranking = table.score(&req).unwrap();
    assert_eq!(order(&ranking), [2]);
    assert_eq!(
        ranking.excluded,
        [
            (0, Exclusion::ContextWindow),
            (1, Exclusion::Capabilities),
            (3, Exclusion::MaxCost)
        ]
    );
    let names: Vec<_> = ranking.excluded.iter().map(|(_, e)| e.as_str()).collect();
    assert_eq!(names, ["context_window", "capabilities", "max_cost"]);
}

#[test]
fn context_window_is_inclusive_and_overflow_safe() {
    let mut spec = model("m", 1.0, 100.0, 0.5);
    spec.context_window = 1_200;
    let (table, _) = table_with(vec![spec], 20);
    assert_eq!(order(&table.score(&request(COST_FIRST)).unwrap()), [0]);
    let mut req = request(COST_FIRST);
    req.output_tokens = 201;
    assert!(table.score(&req).unwrap().ranked.is_empty());
    req.input_tokens = u64::MAX;
    let ranking = table.score(&req).unwrap();
    assert_eq!(ranking.excluded, [(0, Exclusion::ContextWindow)]);
}

#[test]
fn candidate_subset_keeps_order_and_drops_duplicates() {
    let table = three();
    let subset = [2, 0, 2, 0];
    let mut req = request(LATENCY_FIRST);
    req.candidates = Some(&subset);
    assert_eq!(order(&table.score(&req).unwrap()), [2, 0]);
    let empty: [usize; 0] = [];
    req.candidates = Some(&empty);
    assert_eq!(table.score(&req).unwrap(), Ranking::default());
}

#[test]
fn bad_candidate_index_and_max_cost_are_errors() {
    let table = three();
    let subset = [0, 3];
    let mut req = request(COST_FIRST);
    req.candidates = Some(&subset);
    let err = table.score(&req).unwrap_err();
    assert_eq!(
        err.to_string(),
        "candidate index 3 out of range (table has 3 models)"
    );
    let mut req = request(COST_FIRST);
    for bad in [-0.5, f64::NAN] {
        req.max_cost_usd = Some(bad);
        assert!(table
            .score(&req)
            .unwrap_err()
            .to_string()
            .starts_with("max_cost_usd:"));
    }
}

#[test]
fn single_and_identical_candidates_normalise_to_zero() {
    let (table, _) = table_with(vec![model("a", 1.0, 100.0, 0.5)], 20);
    let only = table.score(&request((1.0, 1.0, 1.0))).unwrap().ranked[0];
    assert!(only.norm_cost.abs() < f64::EPSILON && only.norm_latency.abs() < f64::EPSILON);
    assert!((only.score - (2.0 + 0.5) / 3.0).abs() < 1e-12);
    let (table, _) = table_with(
        vec![model("a", 1.0, 100.0, 0.5), model("b", 1.0, 100.0, 0.5)],
        20,
    );
    let ranking = table.score(&request((1.0, 1.0, 1.0))).unwrap();
    assert_eq!(order(&ranking), [0, 1]);
    assert_eq!(ranking.ranked[0].score, ranking.ranked[1].score);
}

#[test]
fn observed_latency_replaces_priors_after_min_samples() {
    let (table, clock) = table_with(
        vec![model("a", 1.0, 100.0, 0.5), model("b", 1.0, 200.0, 0.5)],
        3,
    );
    let tracker = Arc::clone(table.tracker());
    let slot = table.slot(0).unwrap();
    assert_eq!(
        order(&table.score(&request(LATENCY_FIRST)).unwrap()),
        [0, 1]
    );
    // "a" turns out slow: 2000 ms TTFT, 50 ms per token.
    for _ in 0..2 {
        tracker
            .record(slot, 2_000.0 + 50.0 * 199.0, Some(2_000.0), 200)
            .unwrap();
    }
    assert!(!table.score(&request(LATENCY_FIRST)).unwrap().ranked[0].latency_observed);
    tracker
        .record(slot, 2_000.0 + 50.0 * 199.0, Some(2_000.0), 200)
        .unwrap();
    let ranking = table.score(&request(LATENCY_FIRST)).unwrap();
    assert_eq!(order(&ranking), [1, 0]);
    let a = ranking.ranked[1];
    assert!(a.latency_observed);
    assert!((a.estimated_latency_ms - (2_000.0 + 200.0 * 50.0)).abs() < 1e-6);
    // History fades: after many half-lives the priors are back.
    clock.advance(3_000.0);
    let ranking = table.score(&request(LATENCY_FIRST)).unwrap();
    assert_eq!(order(&ranking), [0, 1]);
    assert!(!ranking.ranked[0].latency_observed);
}

#[test]
fn large_tables_dedupe_on_the_heap() {
    let models = (0..1_500).map(|i| model(&format!("m{i}"), 1.0 + f64::from(i), 100.0, 0.5));
    let (table, _) = table_with(models.collect(), 20);
    let subset = [1_499, 3, 1_499, 1_024, 3];
    let mut req = request(COST_FIRST);
    req.candidates = Some(&subset);
    assert_eq!(order(&table.score(&req).unwrap()), [3, 1_024, 1_499]);
}

// ---- properties ----------------------------------------------------------------------------

fn arb_spec() -> impl Strategy<Value = (f64, f64, u64, f64, f64, f64, u64)> {
    (
        0.0f64..100.0,
        0.0f64..400.0,
        1u64..200_000,
        0.0f64..=1.0,
        0.0f64..5_000.0,
        0.0f64..200.0,
        0u64..8,
    )
}

fn arb_table() -> impl Strategy<Value = Vec<ModelSpec>> {
    prop::collection::vec(arb_spec(), 1..40).prop_map(|rows| {
        rows.into_iter()
            .enumerate()
            .map(
                |(i, (inp, out, ctx, quality, ttft, tpot, caps))| ModelSpec {
                    name: format!("m{i}"),
                    input_per_mtok: inp,
                    output_per_mtok: out,
                    context_window: ctx,
                    quality,
                    ttft_prior_ms: ttft,
                    tpot_prior_ms: tpot,
                    capabilities: caps,
                },
            )
            .collect()
    })
}

fn arb_weights() -> impl Strategy<Value = Weights> {
    (0.0f64..10.0, 0.0f64..10.0, 0.0f64..10.0)
        .prop_filter_map("not all zero", |(c, l, q)| Weights::new(c, l, q).ok())
}

proptest! {
    #[test]
    fn scores_are_finite_bounded_and_sets_partition(
        specs in arb_table(),
        weights in arb_weights(),
        input in 0u64..150_000,
        output in 0u64..50_000,
        caps in 0u64..8,
        max_cost in prop::option::of(0.0f64..5.0),
        subset in prop::option::of(prop::collection::vec(0usize..40, 0..60)),
    ) {
        let n = specs.len();
        let (table, _) = table_with(specs, 20);
        let subset: Option<Vec<usize>> = subset.map(|s| s.into_iter().map(|i| i % n).collect());
        let req = Request {
            input_tokens: input,
            output_tokens: output,
            weights,
            required_capabilities: caps,
            max_cost_usd: max_cost,
            candidates: subset.as_deref(),
            predicted: &[],
        };
        let ranking = table.score(&req).unwrap();
        for c in &ranking.ranked {
            prop_assert!(c.score.is_finite() && (0.0..=1.0).contains(&c.score), "{:?}", c);
            prop_assert!((0.0..=1.0).contains(&c.norm_cost) && (0.0..=1.0).contains(&c.norm_latency));
        }
        // Ranked and excluded partition the (deduplicated) candidates.
        let mut expected: Vec<usize> = subset.clone().unwrap_or_else(|| (0..n).collect());
        expected.sort_unstable();
        expected.dedup();
        let mut got: Vec<usize> = ranking.ranked.iter().map(|c| c.index)
            .chain(ranking.excluded.iter().map(|(i, _)| *i)).collect();
        got.sort_unstable();
        prop_assert_eq!(got, expected);
        // Same input, same output; and the ranking is sorted by the documented order.
        prop_assert_eq!(&table.score(&req).unwrap(), &ranking);
        for pair in ranking.ranked.windows(2) {
            prop_assert!(rank_order(&pair[0], &pair[1]) == Ordering::Less);
        }
    }

    #[test]
    fn identical_candidates_never_produce_nan(
        spec in arb_spec(),
        copies in 1usize..60, // past SORT_IN_PLACE_UP_TO too: all-tie runs in the keyed sort
        weights in arb_weights(),
        output in 0u64..10_000,
    ) {
        let (inp, out, _, quality, ttft, tpot, _) = spec;
        let specs = (0..copies).map(|i| ModelSpec {
            name: format!("m{i}"), input_per_mtok: inp, output_per_mtok: out,
            context_window: u64::MAX, quality, ttft_prior_ms: ttft, tpot_prior_ms: tpot,
            capabilities: 0,
        }).collect();
        let (table, _) = table_with(specs, 20);
        let req = Request { output_tokens: output, weights, ..request(COST_FIRST) };
        let ranking = table.score(&req).unwrap();
        prop_assert_eq!(ranking.ranked.len(), copies);
        for (position, c) in ranking.ranked.iter().enumerate() {
            prop_assert!(!c.score.is_nan() && c.norm_cost == 0.0 && c.norm_latency == 0.0);
            prop_assert_eq!(c.index, position);
        }
    }

    #[test]
    fn cheaper_never_ranks_lower_under_cost_first(
        specs in arb_table(),
        pick in any::<prop::sample::Index>(),
        discount in 0.01f64..1.0,
        input in 1u64..10_000,
        output in 1u64..10_000,
    ) {
        // Add a copy of one model that is strictly cheaper and otherwise identical.
        let mut specs = specs;
        let original = pick.index(specs.len());
        let mut cheaper = specs[original].clone();
        cheaper.name = "cheaper".into();
        cheaper.input_per_mtok *= discount;
        cheaper.output_per_mtok *= discount;
        prop_assume!(cheaper.input_per_mtok + cheaper.output_per_mtok
            < specs[original].input_per_mtok + specs[original].output_per_mtok);
        specs.push(cheaper);
        let copy = specs.len() - 1;
        let (table, _) = table_with(specs, 20);
        let req = Request { input_tokens: input, output_tokens: output, ..request(COST_FIRST) };
        let ranking = table.score(&req).unwrap();
        let position = |index: usize| ranking.ranked.iter().position(|c| c.index == index);
        if let (Some(cheap), Some(orig)) = (position(copy), position(original)) {
            prop_assert!(cheap < orig, "cheaper at {} vs original at {}", cheap, orig);
        }
    }
}
