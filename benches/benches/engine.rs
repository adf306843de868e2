//! Engine benchmarks on 100,000-event synthetic users: bytes per event on disk, and hard and
//! soft retrieval against a naive linear scan of the decoded history, in the same run.
//!
//! cargo bench -p siren-benches --bench engine

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use siren_benches::{fixture, NaiveCatalog};
use siren_engine::ReadRange;

fn engine(c: &mut Criterion) {
    let f = fixture(5, 100_000, 100_000, 128);
    let s = f.db.stats();
    let n = s.events as f64;
    let l = s.live;
    eprintln!(
        "bytes/event ({} users x {} events): segments {:.2} (time {:.2}, item {:.2}, action {:.2}, domain {:.2}, dict {:.2}, prefix index {:.2}, headers {:.2}); whole directory {:.2}, of which the catalog (RocksDB items) {:.2}",
        f.users.len(),
        f.events_per_user,
        s.segment_file_bytes as f64 / n,
        l.time as f64 / n,
        l.item as f64 / n,
        l.action as f64 / n,
        l.domain as f64 / n,
        l.dict as f64 / n,
        l.index as f64 / n,
        l.meta as f64 / n,
        f.db.disk_bytes() as f64 / n,
        s.rocksdb.items as f64 / n,
    );
    let naive = NaiveCatalog::new(&f.catalog);
    let user = f.users[0];
    let snap = f.db.snapshot();
    let history = snap.read(user, ReadRange::all()).unwrap();
    assert_eq!(history.len(), 100_000);
    // Targets: items of the user's own recent history, and of the catalog at large.
    let targets: Vec<_> = (0..100)
        .map(|i| f.catalog.items[(i * 997) % f.catalog.items.len()].clone())
        .collect();
    let t = &targets[0];
    let (semid, emb) = (t.semid.unwrap(), t.embedding.clone().unwrap());
    let k = 50;
    // Same answers from both, up to int8 rounding in soft.
    let got: Vec<(usize, u8)> = snap
        .retrieve_hard(user, &semid, k, None)
        .unwrap()
        .iter()
        .map(|h| (h.position as usize, h.depth))
        .collect();
    assert_eq!(got, naive.hard_scan(&history, &semid, k));

    let mut g = c.benchmark_group("100k_events");
    g.bench_function("read_whole_history", |b| {
        b.iter(|| black_box(snap.read(user, ReadRange::all()).unwrap()))
    });
    g.bench_function("hard/siren", |b| {
        b.iter(|| black_box(snap.retrieve_hard(user, &semid, k, None).unwrap()))
    });
    g.bench_function("hard/linear_scan_of_decoded", |b| {
        b.iter(|| black_box(naive.hard_scan(&history, &semid, k)))
    });
    let mid = history[50_000].ts;
    g.bench_function("hard/siren_as_of_middle", |b| {
        b.iter(|| black_box(snap.retrieve_hard(user, &semid, k, Some(mid)).unwrap()))
    });
    g.bench_function("soft/siren", |b| {
        b.iter(|| black_box(snap.retrieve_soft(user, &emb, k, None).unwrap()))
    });
    g.bench_function("soft/linear_scan_of_decoded", |b| {
        b.iter(|| black_box(naive.soft_scan(&history, &emb, k)))
    });
    let semids: Vec<_> = targets.iter().map(|t| t.semid.unwrap()).collect();
    let embs: Vec<_> = targets
        .iter()
        .map(|t| t.embedding.clone().unwrap())
        .collect();
    g.sample_size(20);
    g.bench_function("hard_batch_100/siren", |b| {
        b.iter(|| black_box(snap.retrieve_hard_batch(user, &semids, k, None).unwrap()))
    });
    g.bench_function("soft_batch_100/siren", |b| {
        b.iter(|| black_box(snap.retrieve_soft_batch(user, &embs, k, None).unwrap()))
    });
    g.finish();

    // Compaction of one user's 100,000 pending events into a segment entry with its prefix
    // index (fresh database per iteration; appending is set-up, not measured).
    // SemIDs without embeddings: quantising 100,000 embeddings would dominate the set-up.
    let items: Vec<siren_engine::Item> = f
        .catalog
        .items
        .iter()
        .map(|i| siren_engine::Item {
            embedding: None,
            ..i.clone()
        })
        .collect();
    let mut g = c.benchmark_group("compaction");
    g.sample_size(10);
    g.throughput(criterion::Throughput::Elements(100_000));
    g.bench_function("100k_pending_events_one_user", |b| {
        b.iter_batched(
            || {
                let dir = tempfile::tempdir().unwrap();
                let db = siren_engine::Db::open(
                    dir.path(),
                    siren_engine::Options {
                        embedding_dim: 128,
                        auto_compact: None,
                        ..Default::default()
                    },
                )
                .unwrap();
                db.upsert_items(&items, siren_engine::Durability::Unlogged)
                    .unwrap();
                let opts = siren_engine::AppendOptions {
                    durability: siren_engine::Durability::Unlogged,
                    source: None,
                };
                db.append(&history, &opts).unwrap();
                // The catalog's memtable is flushed here so that compaction pays only for
                // the events.
                db.flush().unwrap();
                (dir, db)
            },
            |(dir, db)| {
                db.compact().unwrap();
                (dir, db)
            },
            criterion::BatchSize::PerIteration,
        )
    });
    g.finish();

    // Hard retrieval with the decoded cache off (the cold figure `compare` reports): the same
    // directory reopened, so every call maps the user's entry and reads its position lists in
    // place.
    let siren_benches::Fixture { dir, db, .. } = f;
    drop(snap);
    drop(db);
    let cold = siren_engine::Db::open(
        dir.path(),
        siren_engine::Options {
            embedding_dim: 128,
            auto_compact: None,
            cache_bytes: 0,
            ..Default::default()
        },
    )
    .unwrap();
    let snap = cold.snapshot();
    let mut g = c.benchmark_group("100k_events_cache_off");
    g.bench_function("hard/siren", |b| {
        b.iter(|| black_box(snap.retrieve_hard(user, &semid, k, None).unwrap()))
    });
    g.finish();
}

criterion_group!(benches, engine);
criterion_main!(benches);
