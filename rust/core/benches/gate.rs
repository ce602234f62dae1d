//! Token-gate cost per call: `check` and `reserve` + `settle` with three rate limits and two
//! budgets, as a request limited per tenant, per model and per deployment and budgeted per day
//! and per month would see them. Limits are set high enough that nothing is ever refused, and
//! time moves on each iteration so every bucket refills and every window is checked.

use std::cell::Cell;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use switchpoint_core::{Gate, Window};

/// 2024-03-15T12:00:00Z.
const START: f64 = 1_710_504_000.0;

fn gate() -> (Gate, [usize; 3], [usize; 2]) {
    let gate = Gate::new();
    let limits = [
        gate.add_rate_limit("tenant", Some(1e9), Some(1e12), Some(1_000))
            .expect("valid limit"),
        gate.add_rate_limit("model", Some(1e9), Some(1e12), None)
            .expect("valid limit"),
        gate.add_rate_limit("deployment", None, None, Some(64))
            .expect("valid limit"),
    ];
    let budgets = [
        gate.add_budget("tenant-daily", 1e12, Window::Day)
            .expect("valid budget"),
        gate.add_budget("org-monthly", 1e12, Window::Month)
            .expect("valid budget"),
    ];
    (gate, limits, budgets)
}

fn gate_calls(c: &mut Criterion) {
    let mut group = c.benchmark_group("gate");
    let (gate, limits, budgets) = gate();
    let now = Cell::new(START);
    let tick = || {
        now.set(now.get() + 1e-6);
        now.get()
    };
    group.bench_function("check", |b| {
        b.iter(|| {
            gate.check(
                black_box(&limits),
                black_box(&budgets),
                1_500,
                0.004,
                tick(),
            )
            .expect("valid call")
        });
    });
    group.bench_function("reserve_settle", |b| {
        b.iter(|| {
            let id = gate
                .reserve(
                    black_box(&limits),
                    black_box(&budgets),
                    1_500,
                    0.004,
                    tick(),
                )
                .expect("admitted");
            gate.settle(id, 1_350, 0.0036, tick()).expect("outstanding");
        });
    });
    group.finish();
    assert_eq!(gate.outstanding_reservations(), 0);
}

criterion_group!(benches, gate_calls);
criterion_main!(benches);
