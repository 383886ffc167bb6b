//! What a request's worst-case estimate and its settled cost cost the relay, for a model the
//! price table knows and for one it does not (the unpriced fallback prices the request at the
//! dearest model of its family or of the whole table). Both run on every request.
//!
//! `cargo bench -p relay-core --bench estimate -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use relay_core::pricing::limit_cost_nano_usd;
use relay_core::relay::estimate;
use relay_protocol::Usage;

fn estimates(c: &mut Criterion) {
    let usage = Usage {
        input_tokens: 1_200,
        output_tokens: 300,
        cache_read_tokens: 40_000,
        ..Usage::default()
    };
    let mut group = c.benchmark_group("per request");
    for model in ["claude-sonnet-4-5-20250929", "claude-mock"] {
        group.bench_function(format!("estimate {model}"), |b| {
            b.iter(|| estimate(black_box(model), black_box(4_096), Some(1_024), 1, None));
        });
        group.bench_function(format!("settled cost {model}"), |b| {
            b.iter(|| limit_cost_nano_usd(black_box(model), black_box(&usage), None));
        });
    }
    group.finish();
}

criterion_group!(benches, estimates);
criterion_main!(benches);
