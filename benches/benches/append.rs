//! Appends to a user with many pending (not yet compacted) events against appends to a user with
//! none, in the same run: an append must not cost O(the user's pending events).
//!
//! cargo bench -p siren-benches --bench append

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use siren_engine::{AppendOptions, Db, Durability, Event, Options};

const HOT_PENDING: usize = 100_000;
const APPENDED: usize = 1_000;

fn event(user: u64, ts: i64) -> Event {
    Event {
        user,
        ts,
        item: (ts as u64).wrapping_mul(2_654_435_761) % 50_000,
        action: 0,
        domain: 0,
    }
}

/// `APPENDED` appends of one event each to `user`, from time `t0` on.
fn append_one_by_one(db: &Db, user: u64, t0: i64) {
    let opts = AppendOptions {
        durability: Durability::Buffered,
        source: None,
    };
    for i in 0..APPENDED as i64 {
        black_box(db.append(&[event(user, t0 + i)], &opts).expect("append"));
    }
}

fn appends(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = Db::open(
        dir.path(),
        Options {
            embedding_dim: 0,
            auto_compact: None,
            ..Options::default()
        },
    )
    .expect("open");
    let hot = 1;
    let history: Vec<Event> = (0..HOT_PENDING as i64).map(|t| event(hot, t)).collect();
    let opts = AppendOptions {
        durability: Durability::Unlogged,
        source: None,
    };
    for chunk in history.chunks(10_000) {
        db.append(chunk, &opts).expect("append");
    }
    let mut g = c.benchmark_group("append_1000_events_one_by_one");
    g.sample_size(20);
    let mut t = HOT_PENDING as i64;
    g.bench_function("user_with_100k_pending", |b| {
        b.iter(|| {
            append_one_by_one(&db, hot, t);
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
