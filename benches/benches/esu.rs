//! The SIREN ESU forward for 100 candidates with 50 retrieved behaviours each at width 32:
//! candle's forward against the fused serving forward, on the same weights and the same batch,
//! in the same run (calls alternating, so that both see the same load), with their ratio.
//!
//! cargo bench -p siren-benches --bench esu

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use siren_benches::esu::{esu_fixture, threads};

fn esu(c: &mut Criterion) {
    let f = esu_fixture(100, 50, 32, 7);
    let (want, got) = (f.candle_probs(), f.fused_probs());
    let diff = want
        .iter()
        .zip(&got)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(diff < 1e-5, "the two forwards differ by {diff}");

    let (candle, fused) = f.time_both(200);
    eprintln!(
        "ESU forward, {} candidates x {} retrieved, width {}: candle p50 {:.3} ms, fused p50 {:.3} ms, fused / candle {:.3} ({} threads)",
        f.candidates,
        f.cfg.retrieved,
        f.cfg.dim,
        candle.p50 * 1e3,
        fused.p50 * 1e3,
        fused.p50 / candle.p50,
        threads(),
    );

    let mut g = c.benchmark_group("esu_forward_100x50_d32");
    g.sample_size(30);
    g.bench_function("candle", |b| b.iter(|| black_box(f.candle_probs())));
    g.bench_function("fused", |b| b.iter(|| black_box(f.fused_probs())));
    g.finish();
}

criterion_group!(benches, esu);
criterion_main!(benches);
