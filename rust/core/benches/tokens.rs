//! Exact token counts per byte: the `toktok` counter tiktoken's own encodings take against the
//! regex and merge every other encoding takes, on this repository's README and docs (prose, YAML,
//! tables, code) cut to 4, 20 and 100 KB. docs/benchmarks.md ("Exact token counts") has the
//! figures and the wider comparison. And the one pass that bounds a count without making it
//! (`Shape::of`), on the same texts.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use switchpoint_core::testing::ranks_of;
use switchpoint_core::{Bpe, Shape, Stop};
use tiktoken_rs::{cl100k_base_singleton, o200k_base_singleton};

const CL100K_BASE_PATTERN: &str = r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s";

const TEXT: &str = concat!(
    include_str!("../../../README.md"),
    include_str!("../../../docs/routing.md"),
    include_str!("../../../docs/configuration.md"),
    include_str!("../../../docs/benchmarks.md"),
);

fn prefix(bytes: usize) -> String {
    let text = TEXT.repeat(bytes / TEXT.len() + 1);
    let mut end = bytes;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

fn counts(c: &mut Criterion) {
    let encodings = [
        (
            "cl100k_base",
            ranks_of(cl100k_base_singleton()),
            CL100K_BASE_PATTERN,
        ),
        (
            "o200k_base",
            ranks_of(o200k_base_singleton()),
            tiktoken_rs::O200K_BASE_PAT_STR,
        ),
    ];
    for (name, ranks, pattern) in encodings {
        let builtin = Bpe::new(ranks.clone(), pattern).expect("tiktoken's encoding");
        assert_eq!(builtin.counter_name(), "toktok");
        let general = Bpe::general(ranks, pattern).expect("tiktoken's encoding");
        let mut group = c.benchmark_group(format!("count_{name}"));
        for size in [4_096, 20_480, 102_400] {
            let text = prefix(size);
            group.throughput(Throughput::Bytes(text.len() as u64));
            for (counter, bpe) in [("toktok", &builtin), ("regex", &general)] {
                group.bench_with_input(BenchmarkId::new(counter, size), &text, |b, text| {
                    b.iter(|| bpe.count(black_box(text), Stop::never()).expect("counted"));
                });
            }
        }
        group.finish();
    }
}

fn shapes(c: &mut Criterion) {
    let mut group = c.benchmark_group("shape");
    for size in [4_096, 20_480, 102_400] {
        let text = prefix(size);
        group.throughput(Throughput::Bytes(text.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &text, |b, text| {
            b.iter(|| Shape::of(black_box(text)));
        });
    }
    group.finish();
}

criterion_group!(benches, counts, shapes);
criterion_main!(benches);
