//! Checkpoints taken while writer threads append (synced), item upserts run and compactions
//! (explicit and background) add and remove segment files. Every checkpoint must open, pass
//! `verify`, and hold every batch and upsert acknowledged before the call began, each batch whole,
//! each writer's batches a prefix of what it wrote.
//!
//! Checkpoints: `SIREN_CHECKPOINTS` (default 12).

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use siren_engine::{AppendOptions, Db, Durability, Event, Item, Options, ReadRange};

const WRITERS: u64 = 3;
const USERS_PER_WRITER: u64 = 4;
const EVENTS_PER_BATCH: u64 = 5;
/// The item whose category counts the upserts.
const COUNTER_ITEM: u64 = 1_000_000;

fn options() -> Options {
    common::compacting_options(300, 20, 32)
}

/// Batch `b` of writer `w`: events of one of the writer's users; items encode (w, b, j).
fn batch(w: u64, b: u64) -> Vec<Event> {
    let user = w * 100 + b % USERS_PER_WRITER;
    (0..EVENTS_PER_BATCH)
        .map(|j| Event {
            user,
            ts: b as i64,
            item: (w << 40) | (b << 8) | j,
            action: (j % 3) as u8,
            domain: 0,
        })
        .collect()
}

/// Batches per writer present in `db`, checked whole and as a prefix `0..n`.
fn batches_present(db: &Db, label: &str) -> [u64; WRITERS as usize] {
    let snap = db.snapshot();
    let mut per_writer: BTreeMap<u64, BTreeMap<u64, u64>> = BTreeMap::new();
    for u in snap.users() {
        for e in snap.read(u, ReadRange::all()).unwrap() {
            let (w, b) = (e.item >> 40, (e.item >> 8) & 0xffff_ffff);
            assert_eq!(e.user, w * 100 + b % USERS_PER_WRITER, "{label}: {e:?}");
            *per_writer.entry(w).or_default().entry(b).or_default() += 1;
        }
    }
    let mut out = [0; WRITERS as usize];
    for (w, batches) in per_writer {
        let n = batches.len() as u64;
        assert_eq!(
            batches.keys().next_back().map_or(0, |b| b + 1),
            n,
            "{label}: writer {w}'s batches are not a prefix"
        );
        assert!(
            batches.values().all(|&c| c == EVENTS_PER_BATCH),
            "{label}: writer {w} has a partial batch"
        );
        out[w as usize] = n;
    }
    out
}

fn counter_item(upserts: u64) -> Item {
    Item {
        id: COUNTER_ITEM,
        category: upserts as u32,
        semid: None,
        embedding: Some(vec![1.0, upserts as f32, 0.0, -1.0]),
    }
}

/// What had been acknowledged when a checkpoint call began.
struct Expected {
    batches: [u64; WRITERS as usize],
    upserts: u64,
}

#[test]
fn checkpoints_under_load_open_and_hold_every_acknowledged_write() {
    let n_checkpoints: usize = common::env_or("SIREN_CHECKPOINTS", 12);
    let tmp = tempfile::tempdir().unwrap();
    let db = Arc::new(Db::open(tmp.path().join("db"), options()).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<[AtomicU64; WRITERS as usize]> = Arc::new(Default::default());
    let upserted = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();
    for w in 0..WRITERS {
        let (db, stop, acked) = (db.clone(), stop.clone(), acked.clone());
        threads.push(std::thread::spawn(move || {
            let mut b = 0;
            while !stop.load(Ordering::Relaxed) {
                db.append(&batch(w, b), &AppendOptions::default()).unwrap();
                b += 1;
                acked[w as usize].store(b, Ordering::SeqCst);
            }
        }));
    }
    {
        let (db, stop, upserted) = (db.clone(), stop.clone(), upserted.clone());
        threads.push(std::thread::spawn(move || {
            let mut u = 0;
            while !stop.load(Ordering::Relaxed) {
                u += 1;
                db.upsert_items(&[counter_item(u)], Durability::Sync)
                    .unwrap();
                upserted.store(u, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(2));
            }
        }));
    }
    {
        let (db, stop) = (db.clone(), stop.clone());
        threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                db.compact().unwrap();
                std::thread::sleep(Duration::from_millis(15));
            }
        }));
    }

    let mut taken = Vec::new();
    for i in 0..n_checkpoints {
        std::thread::sleep(Duration::from_millis(40));
        let expected = Expected {
            batches: std::array::from_fn(|w| acked[w].load(Ordering::SeqCst)),
            upserts: upserted.load(Ordering::SeqCst),
        };
        let dest = tmp.path().join(format!("cp{i}"));
        db.checkpoint(&dest).unwrap();
        taken.push((dest, expected));
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    assert!(
        db.stats().compactions > 0,
        "no compaction ran during the test"
    );

    let mut total = 0;
    for (i, (dest, expected)) in taken.iter().enumerate() {
        let label = format!("checkpoint {i}");
        let cp = Db::open(
            dest,
            Options {
                create_if_missing: false,
                auto_compact: None,
                ..options()
            },
        )
        .unwrap_or_else(|e| panic!("{label} does not open: {e}"));
        let report = cp.verify();
        assert!(report.is_ok(), "{label}: {:?}", report.problems);
        let present = batches_present(&cp, &label);
        for (w, (have, acked)) in present.iter().zip(expected.batches).enumerate() {
            assert!(
                *have >= acked,
                "{label}: writer {w} has {have} batches, {acked} were acknowledged before it"
            );
        }
        total += present.iter().sum::<u64>();
        let snap = cp.snapshot();
        let category = snap
            .item(COUNTER_ITEM)
            .map_or(0, |it| u64::from(it.category));
        assert!(
            category >= expected.upserts,
            "{label}: upsert {category} is the last, {} were acknowledged before it",
            expected.upserts
        );
    }
    eprintln!(
        "{n_checkpoints} checkpoints under load: all open and verify, {total} batches in them"
    );
}
