//! Format version 1 keeps opening: `tests/data/v1/db` was written by the last version-1 code
//! (commit 8e0f26e, `engine/tests/write_v1_fixture.rs` there) together with its answers to reads
//! and hard and soft retrieval. This build must give exactly those answers, from the version-1
//! files, after a compaction has rewritten every entry as version 2, and after a reopen.

mod common;

use std::fmt::Write as _;
use std::path::Path;

use common::{copy_dir, test_options};
use siren_engine::{Db, Options, ReadRange, SemId};

/// Every read and retrieval of the fixture's answers, as text (the same calls, in the same order,
/// as the program that wrote them).
fn answers(db: &Db) -> String {
    let snap = db.snapshot();
    let mut out = String::new();
    let targets = [
        SemId::new(&[1, 2]).unwrap(),
        SemId::new(&[3, 0]).unwrap(),
        SemId::new(&[7, 7]).unwrap(),
    ];
    let embs = [vec![1.0; 8], vec![-1.0, 1.0, 0.5, 0.0, 0.0, 2.0, 1.0, -0.5]];
    for u in snap.users() {
        let all = snap.read(u, ReadRange::all()).unwrap();
        writeln!(out, "user {u} read {all:?}").unwrap();
        let mid = all[all.len() / 2].ts;
        let last = snap
            .read(
                u,
                ReadRange {
                    last: Some(7),
                    ..ReadRange::as_of(mid)
                },
            )
            .unwrap();
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

/// Format versions of the segment files, from their headers (bytes 8..12).
fn segment_versions(db: &Path) -> Vec<u32> {
    let mut v: Vec<u32> = std::fs::read_dir(db.join("segments"))
        .unwrap()
        .flatten()
        .map(|f| {
            let b = std::fs::read(f.path()).unwrap();
            u32::from_le_bytes(b[8..12].try_into().unwrap())
        })
        .collect();
    v.sort_unstable();
    v
}

fn check(cache_bytes: usize) {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/v1");
    let want = std::fs::read_to_string(fixture.join("answers.txt")).unwrap();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("db");
    copy_dir(&fixture.join("db"), &dir);
    assert_eq!(segment_versions(&dir), vec![1]);
    let opts = Options {
        cache_bytes,
        ..test_options(8, 2, 8)
    };
    let db = Db::open(&dir, opts.clone()).unwrap();
    assert!(db.verify().is_ok(), "{:?}", db.verify().problems);
    assert!(answers(&db) == want, "version-1 files answer differently");
    // The first compaction rewrites every version-1 entry as version 2.
    let stats = db.compact().unwrap();
    assert!(stats.users_written >= 6, "{stats:?}");
    assert_eq!(segment_versions(&dir), vec![2]);
    assert!(db.verify().is_ok());
    assert!(
        answers(&db) == want,
        "rewritten as version 2, answers differ"
    );
    drop(db);
    let db = Db::open(&dir, opts).unwrap();
    assert!(answers(&db) == want, "after reopening, answers differ");
    assert_eq!(db.stats().pending_events, 0);
}

#[test]
fn version_1_database_opens_answers_the_same_and_is_rewritten() {
    check(64 << 20);
}

#[test]
fn version_1_database_without_the_decoded_cache() {
    check(0);
}
