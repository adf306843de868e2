//! Writes `tests/data/v1/`: a database made by format version 1 (this commit's code), and the
//! answers it gives, for the compatibility test of later versions (`tests/compat.rs`).
//!
//! cargo test -p siren-engine --test write_v1_fixture -- --ignored
//!
//! Run at the last commit that wrote version 1; later code writes version 2, so this file is
//! kept only as the record of how the fixture was made.

mod common;

use std::fmt::Write as _;
use std::path::Path;

use common::{catalog, rng, test_options, zipf_events};
use siren_engine::{AppendOptions, Db, Durability, Event, Item, ReadRange, SemId};

/// Every read and retrieval the compatibility test repeats, as text.
pub fn answers(db: &Db) -> String {
    let snap = db.snapshot();
    let mut out = String::new();
    let targets = [
        SemId::new(&[1, 2]).unwrap(),
        SemId::new(&[3, 0]).unwrap(),
        SemId::new(&[7, 7]).unwrap(),
    ];
    let embs = [
        vec![1.0; 8],
        vec![-1.0, 1.0, 0.5, 0.0, 0.0, 2.0, 1.0, -0.5],
    ];
    for u in snap.users() {
        let all = snap.read(u, ReadRange::all()).unwrap();
        writeln!(out, "user {u} read {all:?}").unwrap();
        let mid = all[all.len() / 2].ts;
        let last = snap.read(u, ReadRange { last: Some(7), ..ReadRange::as_of(mid) }).unwrap();
        writeln!(out, "user {u} last7 {last:?}").unwrap();
        for as_of in [None, Some(mid)] {
            let hard = snap.retrieve_hard_batch(u, &targets, 20, as_of).unwrap();
            writeln!(out, "user {u} hard {as_of:?} {hard:?}").unwrap();
            let soft = snap.retrieve_soft_batch(u, &embs, 20, as_of).unwrap();
            writeln!(out, "user {u} soft {as_of:?} {soft:?}").unwrap();
        }
    }
    out
}

#[test]
#[ignore = "writes the version-1 fixture; see the module documentation"]
fn write_v1_fixture() {
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/v1");
    let _ = std::fs::remove_dir_all(&out);
    let dir = out.join("db");
    let opts = test_options(8, 2, 8);
    let db = Db::open(&dir, opts).unwrap();
    let mut r = rng(41);
    let items = catalog(&mut r, 300, 8, 2, 8);
    db.upsert_items(&items, Durability::Sync).unwrap();
    let ids: Vec<u64> = items.iter().map(|i| i.id).collect();
    let sync = AppendOptions::default();
    // A long user (the inverted layout once rewritten), short ones, items never upserted
    // (stubs), a user deleted after compaction.
    db.append(&zipf_events(&mut r, 1, 5_000, &ids, 0), &sync).unwrap();
    for u in 2..8 {
        let mut evs = zipf_events(&mut r, u, 300 + 40 * u as usize, &ids, 1_000);
        evs[3].item = 1_000_000 + u;
        db.append(&evs, &sync).unwrap();
    }
    db.compact().unwrap();
    db.delete_user(7, Durability::Sync).unwrap();
    // Pending events on top of compacted ones, some older than the entry's last time.
    for u in 4..7 {
        let mut evs = zipf_events(&mut r, u, 60, &ids, 40_000_000);
        evs[0].ts = 5_000;
        db.append(&evs, &sync).unwrap();
    }
    // One item changes its SemID after its users' entries were written.
    let moved = Item {
        semid: Some(SemId::new(&[7, 7]).unwrap()),
        ..items[0].clone()
    };
    db.upsert_items(&[moved], Durability::Sync).unwrap();
    assert!(db.verify().is_ok());
    let text = answers(&db);
    drop(db);
    std::fs::write(out.join("answers.txt"), text).unwrap();
    for f in std::fs::read_dir(dir.join("rocksdb")).unwrap().flatten() {
        let name = f.file_name().to_string_lossy().into_owned();
        if name.starts_with("LOG") {
            std::fs::remove_file(f.path()).unwrap();
        }
    }
    let _: Vec<Event> = Vec::new();
}
