//! Races made deterministic with the engine's failpoints: a callback runs at a failpoint inside a
//! compaction, in this process. (The crash campaign arms the same failpoints to kill a child.)
//! Failpoints are process-wide, so these tests live in a binary of their own and run one at a
//! time.

mod common;

use std::sync::{Arc, Mutex, Weak};

use siren_engine::{AppendOptions, Db, Event, ReadRange};

fn events(user: u64, items: std::ops::Range<u64>) -> Vec<Event> {
    items
        .map(|i| Event {
            user,
            ts: i as i64,
            item: i,
            action: 0,
            domain: 0,
        })
        .collect()
}

/// An append between a compaction's stub step and its snapshot brought items without catalog
/// rows into the snapshot, and the compaction failed (`item ... has no catalog row`, reported as
/// corruption; a debug build panicked in the dictionary encoder). Found by the checkpoint test.
#[test]
fn an_append_racing_the_stub_step_waits_for_the_next_compaction() {
    let tmp = tempfile::tempdir().unwrap();
    let db = Arc::new(Db::open(tmp.path(), common::test_options(4, 2, 8)).unwrap());
    db.append(&events(1, 0..20), &AppendOptions::default())
        .unwrap();
    let handle: Arc<Mutex<Option<Weak<Db>>>> = Arc::new(Mutex::new(Some(Arc::downgrade(&db))));
    let once = handle.clone();
    fail::cfg_callback("compaction::after_stubs", move || {
        if let Some(db) = once.lock().unwrap().take().and_then(|w| w.upgrade()) {
            db.append(&events(2, 1_000..1_030), &AppendOptions::default())
                .unwrap();
        }
    })
    .unwrap();
    let first = db.compact();
    fail::remove("compaction::after_stubs");
    let first = first.unwrap();
    assert!(handle.lock().unwrap().is_none(), "the failpoint never ran");
    assert_eq!(
        first.users_written, 1,
        "only the user the stubs were made for"
    );
    assert_eq!(db.stats().pending_events, 30);
    let second = db.compact().unwrap();
    assert_eq!(second.users_written, 1);
    assert_eq!(second.stub_items, 30);
    let snap = db.snapshot();
    assert_eq!(snap.read(1, ReadRange::all()).unwrap(), events(1, 0..20));
    assert_eq!(
        snap.read(2, ReadRange::all()).unwrap(),
        events(2, 1_000..1_030)
    );
    assert!(db.verify().is_ok());
}
