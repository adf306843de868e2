//! The library API on real RocksDB and real segment files.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::{catalog, rng, test_options, zipf_events};
use siren_engine::{
    AppendOptions, AppendOutcome, AutoCompact, Db, Durability, Error, Event, Item, Options,
    ReadRange, SemId,
};

fn ev(user: u64, ts: i64, item: u64) -> Event {
    Event {
        user,
        ts,
        item,
        action: 1,
        domain: 0,
    }
}

fn opts() -> Options {
    test_options(8, 3, 16)
}

fn append(db: &Db, evs: &[Event]) {
    db.append(evs, &AppendOptions::default()).unwrap();
}

fn read_all(db: &Db, user: u64) -> Vec<Event> {
    db.snapshot().read(user, ReadRange::all()).unwrap()
}

#[test]
fn empty_one_and_equal_timestamps() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), opts()).unwrap();
    assert!(read_all(&db, 1).is_empty(), "unknown user reads as empty");
    assert!(db
        .snapshot()
        .retrieve_hard(1, &SemId::new(&[1, 2, 3]).unwrap(), 5, None)
        .unwrap()
        .is_empty());
    assert!(db
        .snapshot()
        .retrieve_soft(1, &[1.0; 8], 5, None)
        .unwrap()
        .is_empty());
    assert_eq!(
        db.append(&[], &AppendOptions::default()).unwrap(),
        AppendOutcome::Applied { events: 0 }
    );

    append(&db, &[ev(1, 10, 5)]);
    assert_eq!(read_all(&db, 1), vec![ev(1, 10, 5)]);
    let same: Vec<Event> = (0..5).map(|i| ev(2, 100, i)).collect();
    append(&db, &same);
    assert_eq!(
        read_all(&db, 2),
        same,
        "equal timestamps keep arrival order"
    );
    db.compact().unwrap();
    assert_eq!(read_all(&db, 1), vec![ev(1, 10, 5)]);
    assert_eq!(read_all(&db, 2), same);
    // More events at the same time after compaction come after the compacted ones.
    append(&db, &[ev(2, 100, 99)]);
    let mut want = same.clone();
    want.push(ev(2, 100, 99));
    assert_eq!(read_all(&db, 2), want);
}

/// The rule for out-of-order appends: a user's sequence is ordered by timestamp; events with
/// equal timestamps stay in arrival order. A late event is inserted at its time, whether the
/// events it precedes are compacted or not.
#[test]
fn out_of_order_appends_are_placed_by_time() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), opts()).unwrap();
    append(&db, &[ev(1, 10, 1), ev(1, 30, 3)]);
    db.compact().unwrap();
    append(&db, &[ev(1, 20, 2), ev(1, 5, 0), ev(1, 30, 4)]);
    let got: Vec<u64> = read_all(&db, 1).iter().map(|e| e.item).collect();
    assert_eq!(got, vec![0, 1, 2, 3, 4]);
    let snap = db.snapshot();
    let as_of: Vec<u64> = snap
        .read(1, ReadRange::as_of(30))
        .unwrap()
        .iter()
        .map(|e| e.item)
        .collect();
    assert_eq!(as_of, vec![0, 1, 2], "as_of is exclusive");
    db.compact().unwrap();
    let got: Vec<u64> = read_all(&db, 1).iter().map(|e| e.item).collect();
    assert_eq!(got, vec![0, 1, 2, 3, 4]);
}

#[test]
fn retention_drops_oldest_first() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(
        dir.path(),
        Options {
            max_events_per_user: 3,
            ..opts()
        },
    )
    .unwrap();
    append(
        &db,
        &(0..5).map(|i| ev(1, i * 10, i as u64)).collect::<Vec<_>>(),
    );
    let items = |db: &Db| read_all(db, 1).iter().map(|e| e.item).collect::<Vec<_>>();
    assert_eq!(items(&db), vec![2, 3, 4]);
    db.compact().unwrap();
    assert_eq!(
        db.stats().events,
        3,
        "compaction drops what retention hides"
    );
    append(&db, &[ev(1, 15, 9)]);
    assert_eq!(
        items(&db),
        vec![2, 3, 4],
        "a late event older than the kept ones is dropped"
    );
    append(&db, &[ev(1, 35, 8)]);
    assert_eq!(items(&db), vec![3, 8, 4]);
}

#[test]
fn source_sequence_numbers_make_appends_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let o = opts();
    {
        let db = Db::open(dir.path(), o.clone()).unwrap();
        let a = AppendOptions {
            durability: Durability::Sync,
            source: Some(("kafka/p0".into(), 7)),
        };
        assert_eq!(
            db.append(&[ev(1, 1, 1)], &a).unwrap(),
            AppendOutcome::Applied { events: 1 }
        );
        assert_eq!(
            db.append(&[ev(1, 1, 1)], &a).unwrap(),
            AppendOutcome::Duplicate { last_applied: 7 }
        );
        let older = AppendOptions {
            source: Some(("kafka/p0".into(), 3)),
            ..a.clone()
        };
        assert_eq!(
            db.append(&[ev(1, 2, 2)], &older).unwrap(),
            AppendOutcome::Duplicate { last_applied: 7 }
        );
        let other = AppendOptions {
            source: Some(("kafka/p1".into(), 3)),
            ..a.clone()
        };
        assert_eq!(
            db.append(&[ev(1, 3, 3)], &other).unwrap(),
            AppendOutcome::Applied { events: 1 }
        );
        assert_eq!(db.source_position("kafka/p0"), Some(7));
        let bad = AppendOptions {
            source: Some((String::new(), 1)),
            ..a
        };
        assert!(matches!(
            db.append(&[ev(1, 1, 1)], &bad),
            Err(Error::InvalidArgument(_))
        ));
    }
    let db = Db::open(dir.path(), o).unwrap();
    let a = AppendOptions {
        durability: Durability::Sync,
        source: Some(("kafka/p0".into(), 7)),
    };
    assert_eq!(
        db.append(&[ev(1, 1, 1)], &a).unwrap(),
        AppendOutcome::Duplicate { last_applied: 7 },
        "after reopen"
    );
    assert_eq!(read_all(&db, 1).len(), 2);
}

#[test]
fn deletes_and_upserts_with_a_source_are_applied_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let o = opts();
    let at = |seq| AppendOptions {
        durability: Durability::Sync,
        source: Some(("log/p3".into(), seq)),
    };
    let item = |category| Item {
        id: 9,
        category,
        semid: Some(SemId::new(&[1, 2, 3]).unwrap()),
        embedding: None,
    };
    {
        let db = Db::open(dir.path(), o.clone()).unwrap();
        db.append(&[ev(1, 1, 1), ev(2, 1, 1)], &at(1)).unwrap();
        assert_eq!(
            db.delete_users(&[1, 77], &at(2)).unwrap(),
            AppendOutcome::Applied { events: 0 }
        );
        db.append(&[ev(1, 5, 5)], &at(3)).unwrap();
        // A replay of the delete after the later append must not remove user 1 again.
        assert_eq!(
            db.delete_users(&[1], &at(2)).unwrap(),
            AppendOutcome::Duplicate { last_applied: 3 }
        );
        assert_eq!(read_all(&db, 1), vec![ev(1, 5, 5)]);
        // A delete of nobody still moves the position.
        db.delete_users(&[404], &at(4)).unwrap();
        assert_eq!(db.source_position("log/p3"), Some(4));

        let catalog = |seq| AppendOptions {
            source: Some(("catalog".into(), seq)),
            ..at(0)
        };
        db.upsert_items_from(&[item(1)], &catalog(1)).unwrap();
        assert_eq!(
            db.upsert_items_from(&[item(2)], &catalog(1)).unwrap(),
            AppendOutcome::Duplicate { last_applied: 1 }
        );
        assert_eq!(db.snapshot().item(9).unwrap().category, 1);
        assert_eq!(
            db.sources(),
            vec![("catalog".to_string(), 1), ("log/p3".to_string(), 4)]
        );
    }
    let db = Db::open(dir.path(), o.clone()).unwrap();
    assert_eq!(
        db.sources(),
        vec![("catalog".to_string(), 1), ("log/p3".to_string(), 4)],
        "after reopen"
    );
    assert_eq!(read_all(&db, 1), vec![ev(1, 5, 5)]);
    assert_eq!(read_all(&db, 2), vec![ev(2, 1, 1)]);
    assert!(db.remove_source("log/p3", Durability::Sync).unwrap());
    assert!(!db.remove_source("log/p3", Durability::Sync).unwrap());
    // Forgotten: a log consumed again from its start is applied again.
    assert_eq!(
        db.delete_users(&[2], &at(1)).unwrap(),
        AppendOutcome::Applied { events: 0 }
    );
    drop(db);
    let db = Db::open(dir.path(), o).unwrap();
    assert_eq!(db.source_position("log/p3"), Some(1));
    assert!(read_all(&db, 2).is_empty());
    assert!(!db.delete_user(2, Durability::Sync).unwrap());
    assert!(db.delete_user(1, Durability::Sync).unwrap());
}

fn files_containing(dir: &std::path::Path, needle: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(b) = std::fs::read(&p) {
                if b.windows(needle.len()).any(|w| w == needle) {
                    out.push(p.display().to_string());
                }
            }
        }
    }
    out
}

#[test]
fn deleted_user_is_gone_after_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let victim: u64 = 0x5eed_dead_beef_0042;
    // An item id that only the victim uses, and that zstd will not hide: uncompressed blocks.
    let marker_item: u64 = 0x0123_4567_89ab_cdef;
    {
        let db = Db::open(dir.path(), opts()).unwrap();
        let mut r = rng(1);
        let items: Vec<u64> = (1..200).collect();
        append(&db, &zipf_events(&mut r, 7, 500, &items, 0));
        append(&db, &zipf_events(&mut r, victim, 500, &items, 0));
        db.compact().unwrap();
        append(&db, &[ev(victim, 10_000_000, marker_item)]);
        db.compact().unwrap(); // victim now has a superseded copy and a live one
        append(&db, &[ev(victim, 20_000_000, marker_item)]);
        assert!(db.delete_user(victim, Durability::Sync).unwrap());
        assert!(!db.delete_user(victim, Durability::Sync).unwrap());
        assert!(
            read_all(&db, victim).is_empty(),
            "reads stop seeing a deleted user at once"
        );
        assert!(!db.snapshot().users().contains(&victim));
        db.compact().unwrap();
        assert_eq!(read_all(&db, 7).len(), 500, "other users are untouched");
    }
    // RocksDB's MANIFEST log may still name the deleted keys as old file boundaries until
    // RocksDB rewrites it, which it does at every open.
    drop(Db::open(dir.path(), opts()).unwrap());
    for needle in [victim.to_le_bytes(), victim.to_be_bytes()] {
        let found = files_containing(dir.path(), &needle);
        assert!(found.is_empty(), "deleted user's id still in {found:?}");
    }
    let db = Db::open(dir.path(), opts()).unwrap();
    assert!(read_all(&db, victim).is_empty());
    // A user can come back after deletion.
    append(&db, &[ev(victim, 1, 1)]);
    assert_eq!(read_all(&db, victim).len(), 1);
}

#[test]
fn delete_during_compaction_window_does_not_resurrect() {
    // Delete and re-create a user between two compactions; the old history must not return.
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), opts()).unwrap();
    append(&db, &[ev(1, 1, 1), ev(1, 2, 2)]);
    db.compact().unwrap();
    db.delete_user(1, Durability::Sync).unwrap();
    append(&db, &[ev(1, 3, 3)]);
    db.compact().unwrap();
    assert_eq!(read_all(&db, 1), vec![ev(1, 3, 3)]);
}

#[test]
fn stats_count_users_events_and_bytes_per_column() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), opts()).unwrap();
    let mut r = rng(3);
    let items = catalog(&mut r, 300, 8, 3, 16);
    db.upsert_items(&items, Durability::Sync).unwrap();
    let ids: Vec<u64> = items.iter().map(|i| i.id).collect();
    for u in 0..20 {
        append(&db, &zipf_events(&mut r, u, 1000, &ids, 0));
    }
    let s = db.stats();
    assert_eq!(
        (s.users, s.events, s.pending_events, s.items),
        (20, 20_000, 20_000, 300)
    );
    db.compact().unwrap();
    let s = db.stats();
    assert_eq!(
        (s.users, s.events, s.pending_events, s.segments),
        (20, 20_000, 0, 1)
    );
    let l = s.live;
    // Histories this short store their items as codes (the forward layout), no position lists.
    assert!(
        l.time > 0
            && l.item > 0
            && l.action > 0
            && l.domain > 0
            && l.dict > 0
            && l.index == 0
            && l.meta > 0,
        "{l:?}"
    );
    assert!(l.total() < s.segment_file_bytes);
    assert_eq!(s.garbage_bytes, 0);
    assert!(db.verify().is_ok());
}

#[test]
fn bad_arguments_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(
        dir.path(),
        Options {
            max_batch_events: 10,
            ..opts()
        },
    )
    .unwrap();
    let item = |semid: Option<SemId>, emb: Option<Vec<f32>>| Item {
        id: 1,
        category: 0,
        semid,
        embedding: emb,
    };
    let inval =
        |r: siren_engine::Result<()>| assert!(matches!(r, Err(Error::InvalidArgument(_))), "{r:?}");
    inval(db.upsert_items(&[item(None, Some(vec![1.0; 7]))], Durability::Sync));
    inval(db.upsert_items(&[item(None, Some(vec![f32::NAN; 8]))], Durability::Sync));
    inval(db.upsert_items(
        &[item(None, Some(vec![f32::INFINITY; 8]))],
        Durability::Sync,
    ));
    inval(db.upsert_items(
        &[item(Some(SemId::new(&[1, 2]).unwrap()), None)],
        Durability::Sync,
    ));
    inval(db.upsert_items(
        &[item(Some(SemId::new(&[1, 2, 16]).unwrap()), None)],
        Durability::Sync,
    ));
    assert!(SemId::new(&[]).is_err() && SemId::new(&[0; 7]).is_err());
    let snap = db.snapshot();
    assert!(matches!(
        snap.retrieve_hard(1, &SemId::new(&[1, 2, 3]).unwrap(), 0, None),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        snap.retrieve_soft(1, &[1.0; 3], 5, None),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        snap.retrieve_soft(1, &[f32::NAN; 8], 5, None),
        Err(Error::InvalidArgument(_))
    ));
    let big: Vec<Event> = (0..11).map(|i| ev(1, i, 1)).collect();
    assert!(matches!(
        db.append(&big, &AppendOptions::default()),
        Err(Error::InvalidArgument(_))
    ));
    assert!(
        read_all(&db, 1).is_empty(),
        "a refused batch stores nothing"
    );
    drop(db);
    let e = Db::open(
        dir.path(),
        Options {
            embedding_dim: 16,
            ..opts()
        },
    )
    .err()
    .unwrap();
    assert!(
        matches!(
            e,
            Error::OptionsMismatch {
                field: "embedding_dim",
                ..
            }
        ),
        "{e}"
    );
    let e = Db::open(
        dir.path(),
        Options {
            semid_codebook_size: 8,
            ..opts()
        },
    )
    .err()
    .unwrap();
    assert!(
        matches!(
            e,
            Error::OptionsMismatch {
                field: "semid_codebook_size",
                ..
            }
        ),
        "{e}"
    );
    let missing = dir.path().join("nope");
    assert!(matches!(
        Db::open(
            &missing,
            Options {
                create_if_missing: false,
                ..opts()
            }
        ),
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        Db::open(
            dir.path(),
            Options {
                block_events: 3,
                ..opts()
            }
        ),
        Err(Error::InvalidArgument(_))
    ));
}

#[test]
fn rocksdb_errors_keep_their_source_and_say_what_failed() {
    let dir = tempfile::tempdir().unwrap();
    let _db = Db::open(dir.path(), opts()).unwrap();
    // RocksDB's lock on its directory refuses a second open: an I/O error, not corruption.
    let Err(e) = Db::open(dir.path(), opts()) else {
        panic!("a second open of a database in use succeeded");
    };
    let Error::Store { context, .. } = &e else {
        panic!("expected a store error, got {e:?}");
    };
    assert_eq!(*context, "opening");
    let source = std::error::Error::source(&e).expect("RocksDB's error is the source");
    assert!(source.to_string().contains("lock"), "{source}");
    assert!(e.to_string().contains(&source.to_string()), "{e}");
}

#[test]
fn items_round_trip_and_upsert_replaces() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), opts()).unwrap();
    let emb = vec![0.5, -1.0, 0.25, 0.0, 0.125, 1.0, -0.5, 0.75];
    let it = Item {
        id: 42,
        category: 3,
        semid: Some(SemId::new(&[1, 2, 3]).unwrap()),
        embedding: Some(emb.clone()),
    };
    db.upsert_items(std::slice::from_ref(&it), Durability::Sync)
        .unwrap();
    let got = db.snapshot().item(42).unwrap();
    assert_eq!((got.id, got.category, got.semid), (42, 3, it.semid));
    let back = got.embedding.unwrap();
    for (a, b) in back.iter().zip(&emb) {
        assert!(
            (a - b).abs() <= 1.0 / 127.0 + 1e-6,
            "int8 quantisation error bound"
        );
    }
    let it2 = Item {
        category: 4,
        semid: None,
        embedding: None,
        ..it
    };
    db.upsert_items(std::slice::from_ref(&it2), Durability::Sync)
        .unwrap();
    drop(db);
    let db = Db::open(dir.path(), opts()).unwrap();
    assert_eq!(db.snapshot().item(42), Some(it2.clone()));
    assert_eq!(db.snapshot().item(43), None);
    // Items seen only in events (stubs after compaction) are not catalog items.
    append(&db, &[ev(1, 1, 77)]);
    db.compact().unwrap();
    assert_eq!(db.snapshot().items().collect::<Vec<_>>(), vec![it2]);
}

#[test]
fn unlogged_writes_survive_flush_and_clean_close() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Db::open(dir.path(), opts()).unwrap();
        let a = AppendOptions {
            durability: Durability::Unlogged,
            source: None,
        };
        db.append(&[ev(1, 1, 1)], &a).unwrap();
        db.flush().unwrap();
        db.append(&[ev(1, 2, 2)], &a).unwrap();
    } // clean close flushes
    let db = Db::open(dir.path(), opts()).unwrap();
    assert_eq!(read_all(&db, 1).len(), 2);
}

#[test]
fn snapshots_are_consistent_under_concurrent_writes_and_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(
        Db::open(
            dir.path(),
            Options {
                block_events: 16,
                ..opts()
            },
        )
        .unwrap(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (db, stop) = (db.clone(), stop.clone());
        std::thread::spawn(move || {
            // Batch b gives each of users 1..=3 one event at time b.
            for b in 0..600i64 {
                let batch: Vec<Event> = (1..=3).map(|u| ev(u, b, b as u64)).collect();
                db.append(
                    &batch,
                    &AppendOptions {
                        durability: Durability::Buffered,
                        source: None,
                    },
                )
                .unwrap();
                if b % 97 == 0 {
                    db.compact().unwrap();
                }
            }
            stop.store(true, Ordering::Release);
        })
    };
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (db, stop) = (db.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut last = 0;
                let mut rounds = 0;
                while !stop.load(Ordering::Acquire) || rounds < 5 {
                    let snap = db.snapshot();
                    let seqs: Vec<Vec<Event>> = (1..=3)
                        .map(|u| snap.read(u, ReadRange::all()).unwrap())
                        .collect();
                    // A batch is visible to all its users or to none.
                    assert!(seqs.iter().all(|s| s.len() == seqs[0].len()), "torn batch");
                    assert!(seqs[0].len() >= last, "a later snapshot sees less");
                    last = seqs[0].len();
                    for (i, e) in seqs[0].iter().enumerate() {
                        assert_eq!(e.ts, i as i64);
                    }
                    // The same snapshot answers the same later.
                    std::thread::yield_now();
                    assert_eq!(snap.read(2, ReadRange::all()).unwrap(), seqs[1]);
                    rounds += 1;
                }
                rounds
            })
        })
        .collect();
    writer.join().unwrap();
    for r in readers {
        assert!(r.join().unwrap() >= 5);
    }
    assert_eq!(read_all(&db, 3).len(), 600);
}

#[test]
fn background_compaction_and_segment_garbage_collection() {
    let dir = tempfile::tempdir().unwrap();
    let o = Options {
        auto_compact: Some(AutoCompact {
            pending_events: 2_000,
            interval: std::time::Duration::from_millis(50),
        }),
        segment_target_bytes: 16 << 10,
        ..opts()
    };
    let db = Db::open(dir.path(), o).unwrap();
    let mut r = rng(5);
    let items: Vec<u64> = (1..500).collect();
    for round in 0..6 {
        for u in 0..30 {
            append(
                &db,
                &zipf_events(&mut r, u, 200, &items, round * 100_000_000),
            );
        }
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while db.stats().pending_events > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "background compaction did not run"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let s = db.stats();
    assert_eq!(s.events, 30 * 1200);
    assert!(s.segments > 1, "segment_target_bytes splits output");
    // Repeated rewrites of every user must not let garbage grow without bound.
    assert!(
        s.garbage_bytes <= s.live.total(),
        "garbage {} vs live {}",
        s.garbage_bytes,
        s.live.total()
    );
    assert!(s.last_background_error.is_none());
    assert!(db.verify().is_ok());
}

#[test]
fn checkpoint_is_a_consistent_openable_copy() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), opts()).unwrap();
    let mut r = rng(5);
    let items = catalog(&mut r, 200, 8, 3, 16);
    db.upsert_items(&items, Durability::Sync).unwrap();
    let ids: Vec<u64> = items.iter().map(|i| i.id).collect();
    for u in 1..=5 {
        append(&db, &zipf_events(&mut r, u, 700, &ids, 0));
    }
    db.compact().unwrap();
    // Pending events too, some of them unlogged.
    append(&db, &zipf_events(&mut r, 2, 50, &ids, 10_000_000));
    db.append(
        &zipf_events(&mut r, 6, 40, &ids, 0),
        &AppendOptions {
            durability: Durability::Unlogged,
            source: None,
        },
    )
    .unwrap();
    let before: Vec<Vec<Event>> = (1..=6).map(|u| read_all(&db, u)).collect();
    let dest = tempfile::tempdir().unwrap();
    let cp = dest.path().join("cp");
    let stats = db.checkpoint(&cp).unwrap();
    assert_eq!(stats.segments, db.stats().segments);
    assert!(
        db.checkpoint(&cp).is_err(),
        "an existing destination is refused"
    );
    // The original goes on changing.
    append(&db, &zipf_events(&mut r, 1, 30, &ids, 20_000_000));
    db.delete_user(3, Durability::Sync).unwrap();
    db.compact().unwrap();
    assert_ne!(read_all(&db, 1), before[0]);

    let copy = Db::open(&cp, opts()).unwrap();
    for u in 1..=6u64 {
        assert_eq!(read_all(&copy, u), before[u as usize - 1], "user {u}");
    }
    assert_eq!(copy.snapshot().items().count(), 200);
    assert!(copy.verify().is_ok());
    copy.compact().unwrap();
    assert_eq!(read_all(&copy, 2), before[1]);
}

/// A history stamp is equal only where the visible events are: the same for two `as_of`s
/// that see the same events, different after an append (even of an older event), between
/// `as_of`s that see different events, after a deletion and a rebirth with as many events,
/// after an upsert that rewrites a catalog row, and across two opens of one directory.
#[test]
fn history_stamps_change_with_the_visible_events() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), opts()).unwrap();
    let stamp = |db: &Db, as_of| db.snapshot().history_stamp(1, as_of).unwrap();
    let unknown = stamp(&db, None);
    append(&db, &[ev(1, 10, 5), ev(1, 20, 6), ev(1, 30, 7)]);
    let three = stamp(&db, None);
    assert_ne!(unknown, three);
    assert_eq!(
        stamp(&db, Some(31)),
        stamp(&db, Some(1_000)),
        "same events seen"
    );
    assert_eq!(
        three,
        stamp(&db, Some(1_000)),
        "as_of past the newest sees all"
    );
    assert_ne!(
        stamp(&db, Some(30)),
        stamp(&db, Some(31)),
        "one event fewer"
    );
    assert_eq!(stamp(&db, Some(21)), stamp(&db, Some(30)));

    append(&db, &[ev(1, 15, 8)]);
    assert_ne!(stamp(&db, Some(1_000)), three, "an older event appended");
    assert_ne!(stamp(&db, Some(21)), stamp(&db, Some(16)));

    let before = stamp(&db, None);
    db.compact().unwrap();
    let compacted = stamp(&db, None);
    assert_eq!(
        read_all(&db, 1).len(),
        4,
        "compaction keeps the events (its stamp may differ)"
    );
    append(&db, &[ev(1, 40, 9)]);
    assert_ne!(stamp(&db, None), compacted, "pending on top of the entry");
    assert_ne!(before, stamp(&db, None));

    let evs = read_all(&db, 1);
    let full = stamp(&db, None);
    db.delete_user(1, Durability::Sync).unwrap();
    append(&db, &evs);
    assert_eq!(read_all(&db, 1), evs);
    assert_ne!(stamp(&db, None), full, "born again: another user");

    let reborn = stamp(&db, None);
    let mut item = Item {
        id: 5,
        category: 1,
        semid: None,
        embedding: None,
    };
    db.upsert_items(std::slice::from_ref(&item), Durability::Sync)
        .unwrap();
    let upserted = stamp(&db, None);
    assert_ne!(upserted, reborn, "a row the events refer to was rewritten");
    item.category = 2;
    db.upsert_items(&[item], Durability::Sync).unwrap();
    assert_ne!(stamp(&db, None), upserted, "and rewritten again");
    // An event naming an item the catalog does not have, then the item upserted: a new row,
    // which the event now refers to.
    append(&db, &[ev(1, 50, 777)]);
    let unknown_item = stamp(&db, None);
    let new_item = Item {
        id: 777,
        category: 1,
        semid: None,
        embedding: None,
    };
    db.upsert_items(&[new_item], Durability::Sync).unwrap();
    assert_ne!(
        stamp(&db, None),
        unknown_item,
        "a row for an item the events named"
    );

    let last = stamp(&db, None);
    db.compact().unwrap();
    drop(db);
    let db = Db::open(dir.path(), opts()).unwrap();
    assert_ne!(stamp(&db, None), last, "another open of the directory");
    assert_eq!(stamp(&db, None), stamp(&db, Some(i64::MAX)));
}
