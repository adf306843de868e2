//! `kill -9` a writer process at random moments (appends, compactions, catalog upserts, recovery
//! itself) and check after each kill that every acknowledged event is present exactly once, in
//! order, and nothing else.
//!
//! The parent test re-runs this test binary as the child (`crash_child_writer`), which opens the
//! crashed database as it was left (so its recovery replays the WAL, removes leftover segment
//! files and rewrites the watermark, and is itself killed now and then), prints `start N` (the
//! batches it found), then appends deterministic batches and prints `ack N` after each append
//! returns. Meanwhile the parent checks a copy of the crashed directory. One round in three arms
//! a failpoint (a compaction step, a watermark write, recovery's leftover removal) that aborts
//! the child there. A child that ends before its kill, other than at its armed failpoint, fails
//! the test with its stderr.
//!
//! Kills: `SIREN_CRASH_KILLS` (default 20).

mod child;
mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rand::Rng;
use siren_engine::{AppendOptions, Db, Durability, Event, Item, Options, ReadRange, SemId};

const EVENTS_PER_USER: u64 = 3;

fn options() -> Options {
    // Background compaction too, so kills also land inside it.
    common::compacting_options(400, 30, 32)
}

/// The users batch `b` writes to.
fn batch_users(b: u64) -> [u64; 2] {
    [b % 7, 100 + (b * 3 + 1) % 11]
}

/// Batch `b`: EVENTS_PER_USER events for each of its users. Times go backwards now and then, so
/// the sequence order is not the arrival order.
fn batch(b: u64) -> Vec<Event> {
    let mut out = Vec::new();
    for u in batch_users(b) {
        for j in 0..EVENTS_PER_USER {
            out.push(Event {
                user: u,
                ts: (b * 10) as i64 - ((b % 4) * 15) as i64,
                item: b * 10 + j,
                action: (j % 3) as u8,
                domain: (b % 2) as u16,
            });
        }
    }
    out
}

fn catalog() -> Vec<Item> {
    (0..50u64)
        .map(|i| Item {
            id: i * 10,
            category: (i % 3) as u32,
            semid: Some(SemId::new(&[(i % 8) as u16, (i / 8 % 8) as u16]).unwrap()),
            embedding: Some(vec![i as f32, 1.0, -(i as f32), 0.5]),
        })
        .collect()
}

type PerUser = std::collections::BTreeMap<u64, Vec<Event>>;

/// Every user's events, the batches present, and `n` where batches `0..n` are what the database
/// holds if it is whole (the highest batch present, plus one).
fn stored_batches(db: &Db) -> (PerUser, std::collections::BTreeSet<u64>, u64) {
    let snap = db.snapshot();
    let mut per_user = PerUser::new();
    for u in snap.users() {
        per_user.insert(u, snap.read(u, ReadRange::all()).unwrap());
    }
    let present: std::collections::BTreeSet<u64> =
        per_user.values().flatten().map(|e| e.item / 10).collect();
    let n = present.iter().next_back().map_or(0, |m| m + 1);
    (per_user, present, n)
}

/// Check the database holds exactly batches `0..n` for some `n` in `lo..=hi`; return `n`.
fn verify(dir: &Path, lo: u64, hi: u64, round: usize) -> u64 {
    let db = Db::open(
        dir,
        Options {
            auto_compact: None,
            ..options()
        },
    )
    .unwrap_or_else(|e| panic!("round {round}: the crashed database does not open: {e}"));
    let snap = db.snapshot();
    let (per_user, present, n) = stored_batches(&db);
    assert!(
        (lo..=hi).contains(&n),
        "round {round}: batches 0..{n} present, acknowledged 0..{lo}, at most one more in flight"
    );
    assert_eq!(
        present.len() as u64,
        n,
        "round {round}: a batch below {n} is missing"
    );
    // Exactly the events of batches 0..n, each once, in (time, arrival) order.
    let mut expect: std::collections::BTreeMap<u64, Vec<Event>> = Default::default();
    for b in 0..n {
        for e in batch(b) {
            expect.entry(e.user).or_default().push(e);
        }
    }
    for v in expect.values_mut() {
        v.sort_by_key(|e| (e.ts, e.item));
    }
    assert_eq!(per_user, expect, "round {round}: sequences differ");
    // Every query still answers.
    for &u in per_user.keys() {
        snap.retrieve_hard(u, &SemId::new(&[1, 2]).unwrap(), 10, None)
            .unwrap();
        snap.retrieve_soft(u, &[1.0, 0.0, 0.0, 1.0], 10, Some(500))
            .unwrap();
    }
    let report = db.verify();
    assert!(report.is_ok(), "round {round}: {:?}", report.problems);
    n
}

#[test]
#[ignore = "child process of kill_minus_nine_loses_no_acknowledged_event; does nothing on its own"]
fn crash_child_writer() {
    let Ok(dir) = std::env::var("SIREN_CRASH_DIR") else {
        eprintln!("crash_child_writer only runs as the child of kill_minus_nine_loses_no_acknowledged_event");
        return;
    };
    child::arm_failpoint_from_env();
    let db = Db::open(&dir, options()).unwrap();
    let (_, _, mut b) = stored_batches(&db);
    db.upsert_items(&catalog(), Durability::Sync).unwrap();
    let out = std::io::stdout();
    // libtest printed "test crash_child_writer ... " without a newline: end that line first.
    writeln!(out.lock(), "\nstart {b}").unwrap();
    loop {
        let durability = if b.is_multiple_of(3) {
            Durability::Sync
        } else {
            Durability::Buffered
        };
        db.append(
            &batch(b),
            &AppendOptions {
                durability,
                source: None,
            },
        )
        .unwrap();
        {
            let mut o = out.lock();
            writeln!(o, "ack {b}").unwrap();
            o.flush().unwrap();
        }
        if b % 25 == 24 {
            db.compact().unwrap();
        }
        b += 1;
    }
}

/// A crashed directory's copy waiting to be checked, with the bounds on what it must hold.
struct ToCheck {
    copy: PathBuf,
    round: usize,
    acked_end: u64,
}

#[test]
fn kill_minus_nine_loses_no_acknowledged_event() {
    let kills: usize = common::env_or("SIREN_CRASH_KILLS", 20);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("db");
    let mut rng = common::rng(0xc0ffee);
    // Batches the database held before the last child started.
    let mut stored = 0u64;
    let mut to_check: Option<ToCheck> = None;
    let mut acked_total = 0usize;
    let mut failpoint_deaths: std::collections::BTreeMap<&str, usize> = Default::default();
    for round in 0..kills {
        let mut env = vec![("SIREN_CRASH_DIR", dir.display().to_string())];
        let armed = (round % 3 == 2).then(|| {
            let name = child::FAILPOINTS[rng.random_range(0..child::FAILPOINTS.len())];
            env.push(("SIREN_FAILPOINT", name.to_string()));
            env.push(("SIREN_FAILPOINT_HIT", rng.random_range(1..=3).to_string()));
            name
        });
        let mut proc = child::spawn(
            "crash_child_writer",
            &env,
            &tmp.path().join(format!("stderr-{round}")),
        );
        // Check the previous round's crashed copy while this child recovers the original.
        let checker = to_check.take().map(|c| {
            std::thread::spawn(move || {
                let n = verify(&c.copy, c.acked_end, c.acked_end + 1, c.round);
                std::fs::remove_dir_all(&c.copy).unwrap();
                n
            })
        });
        // Mostly kill while it writes; sometimes while it is still opening (during recovery).
        let delay = if round % 5 == 4 {
            rng.random_range(0..40)
        } else {
            rng.random_range(60..400)
        };
        proc.sleep(Duration::from_millis(delay));
        let ended = proc.kill();
        if let Some(c) = checker {
            stored = c.join().expect("the check of the previous round failed");
        }
        if ended.exited_early {
            let at_failpoint =
                armed.is_some_and(|name| ended.stderr.contains(&child::failpoint_message(name)));
            assert!(
                at_failpoint,
                "round {round}: the child died before its kill: {}",
                ended.report()
            );
            *failpoint_deaths
                .entry(armed.unwrap_or_default())
                .or_default() += 1;
        }
        let start = ended
            .lines
            .iter()
            .find_map(|l| l.strip_prefix("start ").and_then(|n| n.parse::<u64>().ok()));
        if let Some(s) = start {
            assert_eq!(
                s, stored,
                "round {round}: the child recovered another state than the parent's copy"
            );
        }
        let acks: Vec<u64> = ended
            .lines
            .iter()
            .filter_map(|l| l.strip_prefix("ack ").and_then(|n| n.parse().ok()))
            .collect();
        for (i, a) in acks.iter().enumerate() {
            assert_eq!(*a, stored + i as u64, "round {round}: acks arrive in order");
        }
        acked_total += acks.len();
        let copy = tmp.path().join(format!("copy-{round}"));
        common::copy_dir(&dir, &copy);
        to_check = Some(ToCheck {
            copy,
            round,
            acked_end: stored + acks.len() as u64,
        });
    }
    if let Some(c) = to_check {
        stored = verify(&c.copy, c.acked_end, c.acked_end + 1, c.round);
    }
    assert!(
        acked_total > kills,
        "the writer made too little progress to test anything ({acked_total} acks)"
    );
    eprintln!(
        "{kills} kills ({} at failpoints: {failpoint_deaths:?}), {acked_total} acknowledged \
         batches, {stored} batches stored",
        failpoint_deaths.values().sum::<usize>()
    );
}
