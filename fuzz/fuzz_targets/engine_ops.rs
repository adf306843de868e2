//! The engine as a whole: an arbitrary sequence of appends, upserts, deletions, compactions,
//! flushes, reopens and reads (with `as_of`), each answer checked against the in-memory reference
//! model the engine's own tests use (`engine/tests/common/mod.rs`).
#![no_main]

#[path = "../../engine/tests/common/mod.rs"]
mod common;

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use siren_engine::{AppendOptions, Db, Durability, Event, Item, ReadRange, SemId};

const DIM: usize = 4;

#[derive(Arbitrary, Debug)]
enum Op {
    Append(Vec<(u8, i16, u8, u8)>),
    AppendUnlogged(Vec<(u8, i16, u8)>),
    Upsert { item: u8, category: u8, semid: Option<[u8; 2]>, emb: Option<[i8; DIM]> },
    Delete(u8),
    Compact,
    Flush,
    Reopen,
    Read { user: u8, as_of: Option<i16>, last: Option<u8>, since: Option<i16> },
    Hard { user: u8, semid: [u8; 2], k: u8, as_of: Option<i16> },
    Soft { user: u8, emb: [i8; DIM], k: u8, as_of: Option<i16> },
}

fn semid(c: [u8; 2]) -> SemId {
    SemId::new(&[u16::from(c[0] % 8), u16::from(c[1] % 8)]).expect("two codes")
}

fn ev(user: u8, ts: i16, item: u8, action: u8) -> Event {
    Event { user: u64::from(user % 8), ts: i64::from(ts), item: u64::from(item % 32), action, domain: 0 }
}

fuzz_target!(|ops: Vec<Op>| {
    // On tmpfs when there is one: fsync is free there and the target runs many times faster.
    let dir = match std::path::Path::new("/dev/shm").is_dir() {
        true => tempfile::tempdir_in("/dev/shm"),
        false => tempfile::tempdir(),
    }
    .expect("temp dir");
    let mut opts = common::test_options(DIM as u32, 2, 8);
    opts.block_events = 16;
    opts.max_events_per_user = 200;
    let mut model = common::Model::new(&opts);
    let mut db = Some(Db::open(dir.path(), opts.clone()).expect("open"));
    // Unlogged writes are only durable after a flush or compaction; the model tracks them apart.
    let mut unlogged_since_flush = false;
    for op in ops.into_iter().take(64) {
        let d = db.as_ref().expect("open");
        match op {
            Op::Append(evs) => {
                let evs: Vec<Event> = evs.into_iter().take(64).map(|(u, t, i, a)| ev(u, t, i, a)).collect();
                d.append(&evs, &AppendOptions::default()).expect("append");
                model.append(&evs);
            }
            Op::AppendUnlogged(evs) => {
                let evs: Vec<Event> = evs.into_iter().take(64).map(|(u, t, i)| ev(u, t, i, 0)).collect();
                let o = AppendOptions { durability: Durability::Unlogged, source: None };
                d.append(&evs, &o).expect("append");
                model.append(&evs);
                unlogged_since_flush |= !evs.is_empty();
            }
            Op::Upsert { item, category, semid: s, emb } => {
                let it = Item {
                    id: u64::from(item % 32),
                    category: u32::from(category),
                    semid: s.map(semid),
                    embedding: emb.map(|e| e.iter().map(|&v| f32::from(v)).collect()),
                };
                d.upsert_items(std::slice::from_ref(&it), Durability::Sync).expect("upsert");
                model.upsert(&[it]);
            }
            Op::Delete(u) => {
                let user = u64::from(u % 8);
                let existed = d.delete_user(user, Durability::Sync).expect("delete");
                assert_eq!(existed, model.users.contains_key(&user));
                model.delete(user);
            }
            Op::Compact => {
                d.compact().expect("compact");
                unlogged_since_flush = false;
            }
            Op::Flush => {
                d.flush().expect("flush");
                unlogged_since_flush = false;
            }
            Op::Reopen => {
                // A clean close flushes, so nothing is lost, unlogged writes included.
                let _ = unlogged_since_flush;
                drop(db.take());
                db = Some(Db::open(dir.path(), opts.clone()).expect("reopen"));
                unlogged_since_flush = false;
            }
            Op::Read { user, as_of, last, since } => {
                let user = u64::from(user % 8);
                let range = ReadRange {
                    since: since.map(i64::from),
                    as_of: as_of.map(i64::from),
                    last: last.map(usize::from),
                };
                let got = d.snapshot().read(user, range).expect("read");
                let mut want: Vec<Event> = model
                    .visible(user, range.as_of)
                    .into_iter()
                    .filter(|e| range.since.is_none_or(|s| e.ts >= s))
                    .collect();
                if let Some(n) = range.last {
                    want.drain(..want.len().saturating_sub(n));
                }
                assert_eq!(got, want, "read {range:?}");
            }
            Op::Hard { user, semid: s, k, as_of } => {
                let (user, k) = (u64::from(user % 8), usize::from(k % 20) + 1);
                let as_of = as_of.map(i64::from);
                let got: Vec<(Event, u32, u8)> = d
                    .snapshot()
                    .retrieve_hard(user, &semid(s), k, as_of)
                    .expect("hard")
                    .into_iter()
                    .map(|h| (h.event, h.position, h.depth))
                    .collect();
                assert_eq!(got, model.hard(user, &semid(s), k, as_of));
            }
            Op::Soft { user, emb, k, as_of } => {
                let (user, k) = (u64::from(user % 8), usize::from(k % 20) + 1);
                let as_of = as_of.map(i64::from);
                let q: Vec<f32> = emb.iter().map(|&v| f32::from(v)).collect();
                let got = d.snapshot().retrieve_soft(user, &q, k, as_of);
                if q.iter().all(|&v| v == 0.0) {
                    continue;
                }
                let got: Vec<(Event, u32)> = got
                    .expect("soft")
                    .into_iter()
                    .map(|h| (h.event, h.position))
                    .collect();
                let want: Vec<(Event, u32)> =
                    model.soft(user, &q, k, as_of).into_iter().map(|(e, p, _)| (e, p)).collect();
                assert_eq!(got, want);
            }
        }
    }
});
