//! In-database scoring: 100 candidates for a user with 100,000 events, hard and soft GSU, with
//! the GSU alone (the engine's batched retrieval for the same 100 targets) measured in the same
//! run as the reference.
//!
//! cargo bench -p siren-benches --bench score

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use siren_benches::scoring_fixture;
use siren_serve::{Retrieval, ScoreOptions, ScoreTimings};

fn score(c: &mut Criterion) {
    let f = scoring_fixture();
    let (db, ranker) = (Arc::clone(&f.db), Arc::clone(&f.ranker));
    let snap = db.snapshot();
    let user = f.lifelong_user;
    assert_eq!(snap.user_len(user, None).unwrap(), 100_000);
    let cands = &f.candidates;
    let items: Vec<_> = cands.iter().map(|&id| snap.item(id).unwrap()).collect();
    let semids: Vec<_> = items.iter().map(|i| i.semid.unwrap()).collect();
    let embs: Vec<Vec<f32>> = items.iter().map(|i| i.embedding.clone().unwrap()).collect();

    // Percentiles and where the time goes, over 200 calls each.
    // Each call takes its own snapshot, as a server's handler does.
    for gsu in [Retrieval::Hard, Retrieval::Soft] {
        let opts = ScoreOptions {
            retrieval: gsu,
            ..ScoreOptions::default()
        };
        let mut runs: Vec<_> = (0..200)
            .map(|_| {
                ranker
                    .score(&db.snapshot(), user, cands, &opts)
                    .unwrap()
                    .timings
            })
            .collect();
        runs.sort_by(|a, b| a.total_us.total_cmp(&b.total_us));
        let n = runs.len() as f64;
        let mean = |f: &dyn Fn(&ScoreTimings) -> f64| runs.iter().map(f).sum::<f64>() / n;
        let total = mean(&|t| t.total_us);
        eprintln!(
            "score 100 candidates, {gsu:?} GSU, {} model: p50 {:.2} ms, p99 {:.2} ms; mean {:.2} ms = read {:.1}% + retrieve {:.1}% + features {:.1}% + ESU {:.1}%",
            f.model_name,
            runs[runs.len() / 2].total_us / 1e3,
            runs[(runs.len() * 99) / 100].total_us / 1e3,
            total / 1e3,
            100.0 * mean(&|t| t.build.read_us) / total,
            100.0 * mean(&|t| t.build.retrieve_us) / total,
            100.0 * mean(&|t| t.build.tokens_us) / total,
            100.0 * mean(&|t| t.esu_us) / total,
        );
    }

    let mut g = c.benchmark_group("score_100_candidates_100k_events");
    g.sample_size(30);
    for gsu in [Retrieval::Hard, Retrieval::Soft] {
        let opts = ScoreOptions {
            retrieval: gsu,
            ..ScoreOptions::default()
        };
        g.bench_function(format!("{gsu:?}").to_lowercase(), |b| {
            b.iter(|| {
                black_box(
                    ranker
                        .score(&db.snapshot(), user, black_box(cands), &opts)
                        .unwrap(),
                )
            })
        });
    }
    g.bench_function("gsu_only_hard", |b| {
        b.iter(|| {
            black_box(
                snap.retrieve_hard_batch(user, black_box(&semids), 50, None)
                    .unwrap(),
            )
        })
    });
    g.bench_function("gsu_only_soft", |b| {
        b.iter(|| {
            black_box(
                snap.retrieve_soft_batch(user, black_box(&embs), 50, None)
                    .unwrap(),
            )
        })
    });
    g.finish();
}

criterion_group!(benches, score);
criterion_main!(benches);
