//! Scoring cost per request for tables of 10, 100 and 1000 models, with a mix of live and prior
//! latency estimates and a few exclusions, as a routed request would see them.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use switchpoint_core::{LatencyTracker, ModelSpec, ModelTable, Request, Weights};

fn table(models: usize) -> ModelTable {
    let tracker = Arc::new(LatencyTracker::new(300.0).expect("valid half-life"));
    let specs = (0..models)
        .map(|i| {
            let i = i as f64;
            ModelSpec {
                name: format!("model-{i}"),
                input_per_mtok: 0.1 + (i * 0.37) % 15.0,
                output_per_mtok: 0.4 + (i * 1.3) % 60.0,
                // Every tenth model is too small for the request below.
                context_window: if i % 10.0 == 0.0 { 4_096 } else { 128_000 },
                quality: (i * 0.13) % 1.0,
                ttft_prior_ms: 100.0 + (i * 17.0) % 900.0,
                tpot_prior_ms: 5.0 + (i * 3.0) % 40.0,
                capabilities: 0b101,
            }
        })
        .collect();
    let table = ModelTable::new(specs, Arc::clone(&tracker), 20).expect("valid table");
    // Half the models have enough samples for live estimates.
    for index in (0..models).step_by(2) {
        let slot = table.slot(index).expect("in range");
        for sample in 0..30 {
            let ttft = 80.0 + f64::from(sample) * 3.0;
            tracker
                .record(slot, ttft + 20.0 * 499.0, Some(ttft), 500)
                .expect("valid sample");
        }
    }
    table
}

fn scoring(c: &mut Criterion) {
    let mut group = c.benchmark_group("score");
    let weights = Weights::new(0.3, 0.3, 0.4).expect("valid weights");
    for models in [10, 100, 1_000] {
        let table = table(models);
        let request = Request {
            input_tokens: 3_000,
            output_tokens: 1_500,
            weights,
            required_capabilities: 0b1,
            max_cost_usd: Some(0.5),
            candidates: None,
            predicted: &[],
        };
        group.bench_with_input(
            BenchmarkId::from_parameter(models),
            &request,
            |b, request| {
                b.iter(|| table.score(black_box(request)).expect("valid request"));
            },
        );
    }
    group.finish();
}

criterion_group!(benches, scoring);
criterion_main!(benches);
