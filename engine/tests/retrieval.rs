//! Hard and soft retrieval and sequence reads agree with a brute-force reference, with and
//! without `as_of`, before and after compaction, with pending and compacted events mixed.

mod common;

use common::{catalog, rng, test_options, zipf_events, Model};
use rand::seq::SliceRandom;
use rand::Rng;
use siren_engine::{AppendOptions, Db, Durability, Event, Options, ReadRange, SemId};

const DIM: usize = 16;

fn check_all(db: &Db, model: &Model, users: &[u64], seed: u64, what: &str) {
    let snap = db.snapshot();
    let mut r = rng(seed);
    let items: Vec<_> = model.items.values().cloned().collect();
    for &u in users {
        let full = model.visible(u, None);
        assert_eq!(
            snap.read(u, ReadRange::all()).unwrap(),
            full,
            "{what}: read user {u}"
        );
        let mut cut_points = vec![None, Some(i64::MIN), Some(i64::MAX)];
        for _ in 0..4 {
            if !full.is_empty() {
                cut_points.push(Some(full[r.random_range(0..full.len())].ts));
                cut_points.push(Some(full[r.random_range(0..full.len())].ts + 1));
            }
        }
        for as_of in cut_points {
            let vis = model.visible(u, as_of);
            assert_eq!(
                snap.user_len(u, as_of).unwrap(),
                vis.len(),
                "{what}: len user {u} as_of {as_of:?}"
            );
            let last = r.random_range(1..50);
            let since = full.get(full.len() / 3).map(|e| e.ts);
            let range = ReadRange {
                since,
                as_of,
                last: Some(last),
            };
            let mut want: Vec<Event> = vis
                .iter()
                .copied()
                .filter(|e| since.is_none_or(|s| e.ts >= s))
                .collect();
            want.drain(..want.len().saturating_sub(last));
            assert_eq!(
                snap.read(u, range).unwrap(),
                want,
                "{what}: ranged read user {u}"
            );

            let k = [1, 5, 50, 10_000][r.random_range(0..4)];
            let targets: Vec<_> = (0..6)
                .map(|_| items[r.random_range(0..items.len())].clone())
                .collect();
            let semids: Vec<SemId> = targets.iter().filter_map(|t| t.semid).collect();
            let batch = snap.retrieve_hard_batch(u, &semids, k, as_of).unwrap();
            for (s, got) in semids.iter().zip(&batch) {
                let want = model.hard(u, s, k, as_of);
                let got: Vec<_> = got.iter().map(|h| (h.event, h.position, h.depth)).collect();
                assert_eq!(
                    got, want,
                    "{what}: hard user {u} target {s:?} k {k} as_of {as_of:?}"
                );
                let single: Vec<_> = snap
                    .retrieve_hard(u, s, k, as_of)
                    .unwrap()
                    .iter()
                    .map(|h| (h.event, h.position, h.depth))
                    .collect();
                assert_eq!(single, want, "{what}: single hard");
            }
            let embs: Vec<Vec<f32>> = targets.iter().filter_map(|t| t.embedding.clone()).collect();
            let batch = snap.retrieve_soft_batch(u, &embs, k, as_of).unwrap();
            for (e, got) in embs.iter().zip(&batch) {
                let want = model.soft(u, e, k, as_of);
                let got: Vec<_> = got
                    .iter()
                    .map(|h| (h.event, h.position, h.similarity))
                    .collect();
                assert_eq!(got, want, "{what}: soft user {u} k {k} as_of {as_of:?}");
            }
        }
    }
}

fn scenario(seed: u64, opts: Options) {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), opts.clone()).unwrap();
    let mut model = Model::new(&opts);
    let mut r = rng(seed);
    let items = catalog(
        &mut r,
        400,
        DIM,
        opts.semid_levels as usize,
        opts.semid_codebook_size as u16,
    );
    // Most of the catalog first; the rest arrives after the events that use it.
    let (early, late) = items.split_at(350);
    db.upsert_items(early, Durability::Sync).unwrap();
    model.upsert(early);
    let ids: Vec<u64> = items.iter().map(|i| i.id).collect();
    let users: Vec<u64> = vec![1, 2, 3, 77, u64::MAX];
    // 5,000 events: the inverted layout (position lists); the others the forward one.
    let sizes = [0usize, 1, 300, 5_000, 900];
    let mut all = Vec::new();
    for (&u, &n) in users.iter().zip(&sizes) {
        let t0 = 1_700_000_000_000 + r.random_range(0..1_000_000);
        all.extend(zipf_events(&mut r, u, n, &ids, t0));
    }
    // Append in random batches, so arrival order differs from time order (out-of-order appends).
    all.shuffle(&mut r);
    let (first, second) = all.split_at(all.len() * 2 / 3);
    for chunk in first.chunks(257) {
        db.append(
            chunk,
            &AppendOptions {
                durability: Durability::Buffered,
                source: None,
            },
        )
        .unwrap();
        model.append(chunk);
    }
    check_all(&db, &model, &users, seed, "pending only");
    db.compact().unwrap();
    check_all(&db, &model, &users, seed + 1, "after compaction");
    db.upsert_items(late, Durability::Sync).unwrap();
    model.upsert(late);
    for chunk in second.chunks(101) {
        db.append(chunk, &AppendOptions::default()).unwrap();
        model.append(chunk);
    }
    check_all(
        &db,
        &model,
        &users,
        seed + 2,
        "compacted + pending, late items",
    );
    // Change SemIDs of some items after they were indexed: reads must use the new ones.
    let mut changed: Vec<_> = items.iter().step_by(5).cloned().collect();
    for it in &mut changed {
        if let Some(s) = it.semid {
            let mut c = s.codes().to_vec();
            c.reverse();
            it.semid = Some(SemId::new(&c).unwrap());
        }
    }
    db.upsert_items(&changed, Durability::Sync).unwrap();
    model.upsert(&changed);
    check_all(&db, &model, &users, seed + 3, "stale prefix index");
    db.compact().unwrap();
    check_all(&db, &model, &users, seed + 4, "second compaction");
    drop(db);
    let db = Db::open(dir.path(), opts).unwrap();
    check_all(&db, &model, &users, seed + 5, "after reopen");
}

#[test]
fn agrees_with_brute_force() {
    for seed in 0..3 {
        scenario(seed, test_options(DIM as u32, 3, 4));
    }
}

/// Without the decoded cache, every read and retrieval decodes what it needs from the entry
/// itself (hard retrieval on a long history reads its position lists in place).
#[test]
fn agrees_with_brute_force_without_the_cache() {
    for seed in 20..22 {
        scenario(
            seed,
            Options {
                cache_bytes: 0,
                ..test_options(DIM as u32, 3, 4)
            },
        );
    }
}

#[test]
fn agrees_with_brute_force_with_retention() {
    let mut o = test_options(DIM as u32, 2, 8);
    o.max_events_per_user = 700;
    scenario(10, o.clone());
    o.max_event_age_ms = Some(20 * 60 * 60 * 1000);
    o.max_events_per_user = 1_500;
    scenario(11, o);
}

#[test]
fn hundred_thousand_event_user() {
    for cache_bytes in [64 << 20, 0] {
        hundred_thousand_events(Options {
            embedding_dim: DIM as u32,
            auto_compact: None,
            cache_bytes,
            ..Options::default()
        });
    }
}

fn hundred_thousand_events(opts: Options) {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), opts.clone()).unwrap();
    let mut model = Model::new(&opts);
    let mut r = rng(99);
    let items = catalog(&mut r, 20_000, DIM, 3, 256);
    db.upsert_items(&items, Durability::Sync).unwrap();
    model.upsert(&items);
    let ids: Vec<u64> = items.iter().map(|i| i.id).collect();
    let evs = zipf_events(&mut r, 5, 100_000, &ids, 0);
    for c in evs.chunks(10_000) {
        db.append(c, &AppendOptions::default()).unwrap();
        model.append(c);
    }
    db.compact().unwrap();
    let tail = zipf_events(&mut r, 5, 50, &ids, evs.last().unwrap().ts);
    db.append(&tail, &AppendOptions::default()).unwrap();
    model.append(&tail);
    check_all(&db, &model, &[5], 7, "100k user");
    assert_eq!(
        db.snapshot().user_len(5, None).unwrap(),
        100_000,
        "cap of 100,000 keeps the newest"
    );
}
