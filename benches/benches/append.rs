//! Appends to a user with many pending (not yet compacted) events against appends to a user with
//! none, in the same run (`siren_benches::appends`).
//!
//! cargo bench -p siren-benches --bench append

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use siren_benches::appends::{append_one_by_one, hot_user_db, APPENDED, HOT_PENDING, HOT_USER};

fn appends(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = hot_user_db(dir.path()).expect("database");
    let mut g = c.benchmark_group("append_1000_events_one_by_one");
    g.sample_size(20);
    let mut t = HOT_PENDING as i64;
    g.bench_function("user_with_100k_pending", |b| {
        b.iter(|| {
            append_one_by_one(&db, HOT_USER, t);
            t += APPENDED as i64;
        })
    });
    let mut fresh = 1_000_000u64;
    g.bench_function("user_with_none_pending", |b| {
        b.iter_batched(
            || {
                fresh += 1;
                fresh
            },
            |user| append_one_by_one(&db, user, 0),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, appends);
criterion_main!(benches);
