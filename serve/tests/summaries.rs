//! The summary cache hands out only the summary a fresh read would give: after an append,
//! for an `as_of` in the past, after a catalog upsert, a deletion, a compaction and a reopen;
//! and the ranker's scores over it are the training path's predictions.

mod common;

use siren_engine::{AppendOptions, Db, Durability, Event, Snapshot};
use siren_model::train::{train, TrainConfig};
use siren_model::SeqKind;
use siren_serve::candidates::{candidate_samples, candidate_samples_cached};
use siren_serve::retrieval::SeqPlan;
use siren_serve::{Ranker, ScoreOptions, ServedModel, SummaryCache};

const LEVELS: usize = 2;

/// Candidates: every item of the fixture's catalog and an unknown one.
fn candidates() -> Vec<u64> {
    (0..20u64).chain([12_345]).collect()
}

fn plan() -> Vec<SeqPlan> {
    vec![SeqPlan {
        slot: SeqKind::Recent,
        read: SeqKind::Recent,
        len: 4,
    }]
}

/// The evidence of `user` as of `at` through `cache`, after checking that it is, bit for bit,
/// the evidence of a call that reads its own summary.
fn evidence(snap: &Snapshot, cache: &SummaryCache, user: u64, at: i64) -> Vec<u32> {
    let (cands, plan) = (candidates(), plan());
    let ev = Some(LEVELS);
    let cached = candidate_samples_cached(snap, user, at, 0, &cands, &plan, ev, 4, cache).unwrap();
    let fresh = candidate_samples(snap, user, at, 0, &cands, &plan, ev, 4).unwrap();
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert!(!fresh.set.evidence.is_empty());
    assert_eq!(
        bits(&cached.set.evidence),
        bits(&fresh.set.evidence),
        "user {user} at {at}"
    );
    bits(&fresh.set.evidence)
}

fn ev(user: u64, ts: i64, item: u64) -> Event {
    Event {
        user,
        ts,
        item,
        action: 1,
        domain: 0,
    }
}

fn append(db: &Db, evs: &[Event]) {
    db.append(evs, &AppendOptions::default()).unwrap();
}

/// A repeated call, and a later `at` that sees the same events, are answered from the cache;
/// an append after a cached read (at the same `at`, as a wall-clock `at` would be) is seen.
#[test]
fn an_append_after_a_cached_read_is_seen() {
    let (_dir, db, _) = common::fixture();
    let cache = SummaryCache::new(1 << 20);
    let now = 1_000_000;
    let first = evidence(&db.snapshot(), &cache, 2, now);
    assert_eq!(cache.hits_and_misses(), (0, 1));
    assert_eq!(evidence(&db.snapshot(), &cache, 2, now), first);
    assert_eq!(evidence(&db.snapshot(), &cache, 2, now + 1), first);
    assert_eq!(cache.hits_and_misses(), (2, 1), "the same events: kept");

    append(&db, &[ev(2, now - 10, 7), ev(2, now - 5, 7)]);
    let grown = evidence(&db.snapshot(), &cache, 2, now);
    assert_ne!(grown, first, "two more behaviours change the evidence");
    assert_eq!(cache.hits_and_misses(), (2, 2));
    // An older snapshot still sees, and is given, the history it holds.
    let old = db.snapshot();
    append(&db, &[ev(2, 50, 3)]);
    assert_eq!(evidence(&old, &cache, 2, now), grown);
    let late = evidence(&db.snapshot(), &cache, 2, now);
    assert_ne!(late, grown, "an event older than the rest, appended late");
}

/// Requests as of times in the past, before and after the present one is cached, get the
/// summary of what was visible then; a user without events gets the new user's evidence.
#[test]
fn as_of_in_the_past_is_its_own_history() {
    let (_dir, db, _) = common::fixture();
    let cache = SummaryCache::new(1 << 20);
    let snap = db.snapshot();
    let now = evidence(&snap, &cache, 2, i64::MAX);
    let past = evidence(&snap, &cache, 2, 50_000);
    assert_ne!(now, past, "the past sees fewer behaviours");
    for at in [500, 0, 100_000, 100_001, 57_000] {
        evidence(&snap, &cache, 2, at);
    }
    assert_eq!(cache.hits_and_misses(), (0, 7));
    // Nothing is visible before 0, as before i64::MIN; 50,000 was asked before.
    evidence(&snap, &cache, 2, i64::MIN);
    assert_eq!(evidence(&snap, &cache, 2, 50_000), past);
    assert_eq!(cache.hits_and_misses(), (2, 7));
    evidence(&snap, &cache, 99, i64::MAX);
}

/// An upsert that changes an item of the history (its SemID, its embedding), a deletion of
/// the user and its rebirth with the same events, a compaction, and an upsert of an item that
/// events named before the catalog had it each give the summary of a fresh read.
#[test]
fn upserts_deletions_and_compactions_are_seen() {
    let (_dir, db, _) = common::fixture();
    let cache = SummaryCache::new(1 << 20);
    let at = 1_000_000;
    let before = evidence(&db.snapshot(), &cache, 1, at);
    let mut item = db.snapshot().item(8).unwrap();
    item.semid = None;
    item.embedding = Some(vec![-3.0, 1.0, 2.0, 0.5]);
    db.upsert_items(&[item], Durability::Sync).unwrap();
    let upserted = evidence(&db.snapshot(), &cache, 1, at);
    assert_ne!(upserted, before, "item 8 is in user 1's history");

    let events = db
        .snapshot()
        .read(1, siren_engine::ReadRange::all())
        .unwrap();
    db.delete_user(1, Durability::Sync).unwrap();
    assert_ne!(evidence(&db.snapshot(), &cache, 1, at), upserted);
    append(&db, &events[..events.len() - 1]);
    append(&db, &[ev(1, 5, 0)]);
    evidence(&db.snapshot(), &cache, 1, at);

    db.compact().unwrap();
    evidence(&db.snapshot(), &cache, 1, at);
    evidence(&db.snapshot(), &cache, 1, 20_000);

    // Events naming an item the catalog does not have yet, then the item upserted: its
    // behaviours now have a category, a SemID and an embedding.
    append(&db, &[ev(1, at - 3, 777), ev(1, at - 2, 777)]);
    let unknown = evidence(&db.snapshot(), &cache, 1, at);
    let mut known = db.snapshot().item(3).unwrap();
    known.id = 777;
    db.upsert_items(&[known], Durability::Sync).unwrap();
    assert_ne!(evidence(&db.snapshot(), &cache, 1, at), unknown);
}

/// A summary kept for one open of a database is not handed to another open of it (whose
/// catalog counts start again), nor to another database.
#[test]
fn another_open_of_the_database_is_not_given_its_summaries() {
    let (dir, db, _) = common::fixture();
    let cache = SummaryCache::new(1 << 20);
    let at = 1_000_000;
    evidence(&db.snapshot(), &cache, 3, at);
    let opts = db.options().clone();
    drop(db);
    let db = Db::open(dir.path(), opts).unwrap();
    let mut item = db.snapshot().item(4).unwrap();
    item.category = 2;
    db.upsert_items(&[item], Durability::Sync).unwrap();
    evidence(&db.snapshot(), &cache, 3, at);
    let (other_dir, other, _) = common::fixture();
    evidence(&other.snapshot(), &cache, 3, at);
    assert_eq!(cache.hits_and_misses(), (0, 3));
    drop((other, other_dir));
}

/// With no bytes to keep, every call reads its own summary.
#[test]
fn a_cache_of_zero_bytes_keeps_nothing() {
    let (_dir, db, _) = common::fixture();
    let cache = SummaryCache::new(0);
    evidence(&db.snapshot(), &cache, 2, 60_000);
    evidence(&db.snapshot(), &cache, 2, 60_000);
    assert_eq!(cache.hits_and_misses(), (0, 2));
}

/// Through the ranker: after an append to a user whose summary is kept, the scores are the
/// training path's predictions over the grown history, and a repeat, answered from the cache,
/// gives the same scores.
#[test]
fn the_rankers_scores_follow_an_append_to_a_kept_user() {
    let (_dir, db, data) = common::small_with_db();
    let ck = tempfile::tempdir().unwrap();
    let tc = TrainConfig {
        epochs: 1,
        batch_size: 64,
        seed: 1,
        ..TrainConfig::default()
    };
    let t = train(&common::cfg("siren-hard"), &tc, &data).unwrap();
    t.save(ck.path(), &data.vocabs, data.levels).unwrap();
    let ranker = Ranker::new(&db, Some(ServedModel::load(ck.path()).unwrap()), None).unwrap();
    let m = ranker.model().unwrap();
    let imp = data.test.impressions()[5];
    let others = data.items.ids.iter().step_by(37).take(20).copied();
    let cands: Vec<u64> = std::iter::once(imp.item).chain(others).collect();
    let opts = ScoreOptions {
        at: Some(imp.ts),
        domain: imp.domain,
        ..ScoreOptions::default()
    };
    let scores = || -> Vec<f32> {
        let got = ranker
            .score(&db.snapshot(), imp.user, &cands, &opts)
            .unwrap();
        got.scores.iter().map(|s| s.score).collect()
    };
    let before = scores();
    assert!(common::close(
        &before,
        &common::reference(&db, &data, &m, imp, &cands)
    ));
    // Behaviours on the candidates themselves, just before `at`: each one's evidence grows.
    let evs: Vec<Event> = (0..10)
        .map(|k| ev(imp.user, imp.ts - 1 - k, cands[k as usize]))
        .collect();
    append(&db, &evs);
    let after = scores();
    assert_ne!(after, before);
    let want = common::reference(&db, &data, &m, imp, &cands);
    assert!(common::close(&after, &want), "{after:?} vs {want:?}");
    assert_eq!(scores(), after, "a repeat");
    assert_eq!(ranker.summaries().hits_and_misses(), (1, 2));
}
