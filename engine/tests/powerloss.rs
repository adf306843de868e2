//! Power loss, simulated the way SQLite's crash tests and RocksDB's fault-injection file system
//! do it, but on the real process: a writer child runs under an LD_PRELOAD interposer
//! (`powerloss/iolog.c`) that records every write, sync, rename, unlink and directory creation
//! it (and RocksDB inside it) makes under the database's directory, and cuts the power at a
//! random operation (SIGKILL from inside the interposer, before that operation runs). The
//! parent rebuilds the directory as the disk may hold it after the cut (`powerloss/model.rs`:
//! synced data; any subset of unsynced writes, possibly torn; unsynced directory entries lost,
//! or a prefix of them kept) and checks a copy of it:
//!
//! - the database opens and `verify` passes;
//! - every write acknowledged with `Durability::Sync` is there;
//! - `Buffered` writes lose at most a suffix: the writes present are exactly writes `0..n` of
//!   the single writer's sequence, each append whole, with its source position;
//! - nothing that was on disk when the child started is lost.
//!
//! The next child recovers that rebuilt state (so power is also cut during recovery) while the
//! parent checks the copy; every 40 cycles a child starts from an empty directory (so power is
//! also cut while a database is created). The first cycle runs uncut and checks that the recording matches
//! the real directory byte for byte (the interposer missed nothing).
//!
//! Cycles: `SIREN_POWERLOSS_CYCLES` (default 25; CI runs 200 in release mode).

mod child;
mod common;
#[path = "powerloss/model.rs"]
mod model;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use model::{CrashShape, Disk};
use rand::Rng;
use siren_engine::{AppendOptions, Db, Durability, Event, Item, Options, ReadRange, SemId};

const INTERPOSER: &str = include_str!("powerloss/iolog.c");
/// Writes per child before it stops (without closing the database: the power goes).
const WRITES_PER_CHILD: u64 = 120;
/// The catalog item whose category is the index of the last upsert.
const COUNTER_ITEM: u64 = 1 << 50;
const SOURCE: &str = "powerloss";
/// Cycles between starts from an empty directory.
const FRESH_EVERY: usize = 40;

fn options() -> Options {
    common::compacting_options(4_000, 100, 16)
}

/// Write `w` of the single writer: every tenth an upsert of the counter item, else an append.
fn is_upsert(w: u64) -> bool {
    w % 10 == 9
}

/// Events per user in an append: enough that the unsynced tail of the WAL between two syncs
/// spans several of RocksDB's 32 KiB log blocks.
const EVENTS_PER_USER: u64 = 30;

fn batch(w: u64) -> Vec<Event> {
    [w % 5, 10 + w % 3]
        .into_iter()
        .flat_map(|user| {
            (0..EVENTS_PER_USER).map(move |j| Event {
                user,
                ts: (w * EVENTS_PER_USER + j) as i64,
                item: w * 64 + j,
                action: (j % 2) as u8,
                domain: 0,
            })
        })
        .collect()
}

/// What a database holds of the writer's sequence: `n` such that writes `0..n` are all there
/// and nothing after, checked whole. Panics, naming `label`, if the writes present are not such
/// a prefix.
fn writes_present(db: &Db, label: &str) -> u64 {
    let snap = db.snapshot();
    let mut per_user: BTreeMap<u64, Vec<Event>> = BTreeMap::new();
    for u in snap.users() {
        per_user.insert(u, snap.read(u, ReadRange::all()).unwrap());
    }
    let appends: std::collections::BTreeSet<u64> =
        per_user.values().flatten().map(|e| e.item / 64).collect();
    let last_upsert = snap.item(COUNTER_ITEM).map(|it| u64::from(it.category));
    let n = appends
        .last()
        .copied()
        .max(last_upsert)
        .map_or(0, |w| w + 1);
    let mut expect: BTreeMap<u64, Vec<Event>> = BTreeMap::new();
    for w in (0..n).filter(|&w| !is_upsert(w)) {
        for e in batch(w) {
            expect.entry(e.user).or_default().push(e);
        }
    }
    assert_eq!(
        per_user, expect,
        "{label}: the appends present are not exactly writes 0..{n}, whole"
    );
    let want_upsert = (0..n).rev().find(|&w| is_upsert(w));
    assert_eq!(
        last_upsert, want_upsert,
        "{label}: writes 0..{n} are there but the last upsert is {last_upsert:?}"
    );
    let want_source = (0..n).rev().find(|&w| !is_upsert(w));
    assert_eq!(
        db.source_position(SOURCE),
        want_source,
        "{label}: the source position does not match the appends present"
    );
    n
}

#[test]
#[ignore = "child process of power_loss_keeps_synced_writes_and_loses_a_suffix_at_most"]
fn powerloss_child_writer() {
    let Ok(dir) = std::env::var("SIREN_POWERLOSS_DB") else {
        eprintln!("powerloss_child_writer only runs as the child of the power-loss test");
        return;
    };
    let sync_every: u64 = std::env::var("SIREN_POWERLOSS_SYNC_EVERY")
        .unwrap()
        .parse()
        .unwrap();
    let db = match Db::open(&dir, options()) {
        Ok(db) => db,
        Err(e) => {
            // The parent decides whether this state may be refused (see `check`).
            println!("\nrefused: {e}");
            std::process::exit(0);
        }
    };
    let start = writes_present(&db, "child");
    let writes: u64 = common::env_or("SIREN_POWERLOSS_WRITES", WRITES_PER_CHILD);
    let out = std::io::stdout();
    writeln!(out.lock(), "\nstart {start}").unwrap();
    for w in start..start + writes {
        let durability = if w % sync_every == 0 {
            Durability::Sync
        } else {
            Durability::Buffered
        };
        if is_upsert(w) {
            let it = Item {
                id: COUNTER_ITEM,
                category: w as u32,
                semid: Some(SemId::new(&[(w % 8) as u16, 1]).unwrap()),
                embedding: Some(vec![1.0, w as f32, 0.0, -1.0]),
            };
            db.upsert_items(&[it], durability).unwrap();
        } else {
            let opts = AppendOptions {
                durability,
                source: Some((SOURCE.to_string(), w)),
            };
            db.append(&batch(w), &opts).unwrap();
        }
        let kind = if durability == Durability::Sync {
            "sync"
        } else {
            "buffered"
        };
        writeln!(out.lock(), "ack {w} {kind}").unwrap();
        if w % 60 == 59 {
            db.compact().unwrap();
        }
        if w % 97 == 50 {
            db.flush().unwrap();
        }
    }
    writeln!(out.lock(), "end").unwrap();
    out.lock().flush().unwrap();
    // The power goes before any clean close.
    cut_power_now();
}

/// Cut the power after the child's last operation: through the interposer, which kills the
/// process holding its lock, so that no recorded operation is in flight on another thread (an
/// exit would let a background compaction's rename reach the directory but not the log).
fn cut_power_now() -> ! {
    // SAFETY: looks up a symbol by a NUL-terminated name.
    let f = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"iolog_cut_now".as_ptr()) };
    assert!(!f.is_null(), "the child runs under the iolog interposer");
    // SAFETY: `iolog_cut_now` is `void iolog_cut_now(void)` in iolog.c.
    let cut: extern "C" fn() = unsafe { std::mem::transmute(f) };
    cut();
    unreachable!("iolog_cut_now kills the process")
}

/// A rebuilt state to check, with what it must hold.
struct ToCheck {
    dir: PathBuf,
    cycle: usize,
    /// Writes that were on disk when the child started.
    start: u64,
    /// The child's acknowledgements: (write, synced).
    acks: Vec<(u64, bool)>,
    /// The state came from a [`CrashShape::Adversarial`] cut.
    adversarial: bool,
}

/// What a check found.
enum Checked {
    /// It opened and holds writes `0..n`.
    Stored(u64),
    /// RocksDB refused to open it, for a reason the shape of the cut allows.
    Refused(String),
}

/// Whether RocksDB may refuse a state after a cut of this shape. After an adversarial cut, the
/// last edit of its MANIFEST may be torn inside the file's size, and RocksDB 7.8 refuses such
/// a MANIFEST (it tolerates only a MANIFEST cut short at its end, which is what file systems
/// that order data before size updates leave): loudly, with nothing lost from its files.
fn may_refuse(adversarial: bool, error: &str) -> bool {
    adversarial && error.contains("MANIFEST") && error.contains("Corruption")
}

/// Check a rebuilt state.
fn check(c: &ToCheck) -> Checked {
    let label = format!("cycle {}", c.cycle);
    let opened = Db::open(
        c.dir.join("db"),
        Options {
            auto_compact: None,
            create_if_missing: c.start == 0,
            ..options()
        },
    );
    let db = match opened {
        Ok(db) => db,
        Err(e) if may_refuse(c.adversarial, &e.to_string()) => {
            std::fs::remove_dir_all(&c.dir).unwrap();
            return Checked::Refused(e.to_string());
        }
        Err(e) => panic!("{label}: the database does not open after the power cut: {e}"),
    };
    let report = db.verify();
    assert!(report.is_ok(), "{label}: {:?}", report.problems);
    let n = writes_present(&db, &label);
    let synced = c.acks.iter().rev().find(|a| a.1).map_or(0, |a| a.0 + 1);
    let lo = synced.max(c.start);
    // One write may have been in flight, unacknowledged, at the cut.
    let hi = c.acks.last().map_or(c.start, |a| a.0 + 1) + 1;
    assert!(
        (lo..=hi).contains(&n),
        "{label}: writes 0..{n} present; 0..{} were synced or on disk before, at most 0..{hi} \
         were issued",
        lo
    );
    for u in db.snapshot().users() {
        let snap = db.snapshot();
        snap.retrieve_hard(u, &SemId::new(&[1, 1]).unwrap(), 5, None)
            .unwrap();
        snap.retrieve_soft(u, &[1.0, 0.0, 0.0, 1.0], 5, None)
            .unwrap();
    }
    if db.stats().wal_damage.is_some() {
        eprintln!("{label}: opened past a torn record of the write-ahead log");
    }
    drop(db);
    std::fs::remove_dir_all(&c.dir).unwrap();
    Checked::Stored(n)
}

/// A directory for the run: on tmpfs when there is one (fsync is free there; the harness, not
/// the file system, decides what survives).
fn workspace() -> tempfile::TempDir {
    match Path::new("/dev/shm").is_dir() {
        true => tempfile::tempdir_in("/dev/shm"),
        false => tempfile::tempdir(),
    }
    .unwrap()
}

/// The run's directory, kept after a failure when `SIREN_POWERLOSS_KEEP` is set.
struct Workspace(tempfile::TempDir);

impl Workspace {
    fn new() -> Workspace {
        let ws = workspace();
        if std::env::var_os("SIREN_POWERLOSS_KEEP").is_some() {
            eprintln!("keeping {}", ws.path().display());
        }
        Workspace(ws)
    }

    fn path(&self) -> &Path {
        self.0.path()
    }

    /// The disk's content when a child starts.
    fn base(&self) -> PathBuf {
        self.path().join("base")
    }

    /// The directory the child runs in, a copy of `base`.
    fn live(&self) -> PathBuf {
        self.path().join("live")
    }

    fn log(&self) -> PathBuf {
        self.path().join("iolog")
    }
}

fn interposer(ws: &Workspace) -> PathBuf {
    common::build_preload(INTERPOSER, ws.path(), "iolog")
        .unwrap_or_else(|e| panic!("the power-loss harness needs its interposer: {e}"))
}

/// Start a writer child on a copy of the workspace's base, recorded, the power cut before
/// operation `cut` (0: never).
fn start_child(
    ws: &Workspace,
    interposer: &Path,
    cut: u64,
    sync_every: u64,
    writes: u64,
) -> child::Child {
    let (live, log) = (ws.live(), ws.log());
    let _ = std::fs::remove_dir_all(&live);
    common::copy_dir(&ws.base(), &live);
    let _ = std::fs::remove_file(&log);
    let env = [
        ("SIREN_POWERLOSS_DB", live.join("db").display().to_string()),
        ("SIREN_POWERLOSS_SYNC_EVERY", sync_every.to_string()),
        ("SIREN_POWERLOSS_WRITES", writes.to_string()),
        ("LD_PRELOAD", interposer.display().to_string()),
        ("SIREN_IOLOG", log.display().to_string()),
        ("SIREN_IOLOG_ROOT", live.display().to_string()),
        ("SIREN_IOLOG_CUT", cut.to_string()),
    ];
    child::spawn("powerloss_child_writer", &env, &ws.path().join("stderr"))
}

/// The disk the last child left: its base with the recorded operations applied; and how many
/// operations there were.
fn recorded(ws: &Workspace) -> (Disk, u64) {
    let ops = model::parse(&std::fs::read(ws.log()).unwrap_or_default());
    let mut disk = Disk::load(&ws.base(), &ws.live());
    for op in &ops {
        disk.apply(op);
    }
    (disk, ops.len() as u64)
}

impl Drop for Workspace {
    fn drop(&mut self) {
        if std::env::var_os("SIREN_POWERLOSS_KEEP").is_some() {
            let dir = std::mem::replace(&mut self.0, tempfile::tempdir().unwrap());
            let _ = dir.keep();
        }
    }
}

#[test]
fn power_loss_keeps_synced_writes_and_loses_a_suffix_at_most() {
    let cycles: usize = common::env_or("SIREN_POWERLOSS_CYCLES", 25);
    let ws = Workspace::new();
    let interposer = interposer(&ws);
    let base = ws.base();
    std::fs::create_dir_all(&base).unwrap();
    let mut rng = common::rng(0x90_3e7);
    let mut stored = 0u64;
    let mut max_ops = 0u64;
    let mut to_check: Option<ToCheck> = None;
    let (mut acked, mut synced_acks, mut cut_in_recovery) = (0usize, 0usize, 0usize);
    let mut refusals: Vec<String> = Vec::new();
    for cycle in 0..cycles {
        if cycle > 0 && cycle % FRESH_EVERY == 0 {
            // A new database now and then: its creation must be durable too.
            if let Some(c) = to_check.take() {
                check(&c);
            }
            fresh(&base);
            stored = 0;
        }
        if cycle % 25 == 0 {
            eprintln!("cycle {cycle}: {acked} writes acknowledged so far");
        }
        // The first cycle runs to its end, to learn how many operations a child makes.
        let cut = if cycle == 0 {
            0
        } else {
            rng.random_range(1..=max_ops + max_ops / 10)
        };
        let sync_every = [1u64, 3, 40, 1_000][rng.random_range(0..4)];
        let proc = start_child(&ws, &interposer, cut, sync_every, WRITES_PER_CHILD);
        // Check the previous cycle's state while this child recovers it.
        let checker = to_check
            .take()
            .map(|c| std::thread::spawn(move || check(&c)));
        let ended = proc.wait();
        let checked = checker.map(|c| c.join().expect("the check of the previous cycle failed"));
        let killed = std::os::unix::process::ExitStatusExt::signal(&ended.status) == Some(9);
        assert!(
            killed || ended.status.success(),
            "cycle {cycle}: the child failed: {}",
            ended.report()
        );
        // Cut after its last operation: the log is all the directory holds.
        let finished = ended.lines.iter().any(|l| l == "end");
        let child_refused = ended.lines.iter().find(|l| l.starts_with("refused: "));
        match checked {
            Some(Checked::Refused(why)) => {
                assert!(
                    child_refused.is_some() || start_line(&ended.lines).is_none(),
                    "cycle {cycle}: the check was refused ({why}) but the child opened the state"
                );
                refusals.push(why);
                // Nothing to go on from: start a new database.
                fresh(&base);
                stored = 0;
                continue;
            }
            Some(Checked::Stored(n)) => stored = n,
            None => {}
        }
        assert!(
            child_refused.is_none(),
            "cycle {cycle}: the child was refused a state the check opened: {child_refused:?}"
        );
        if let Some(s) = start_line(&ended.lines) {
            assert_eq!(
                s, stored,
                "cycle {cycle}: the child found another state than the check"
            );
        } else {
            cut_in_recovery += 1;
        }
        let acks: Vec<(u64, bool)> = ended
            .lines
            .iter()
            .filter_map(|l| l.strip_prefix("ack "))
            .map(|l| {
                let (w, kind) = l.split_once(' ').expect("ack W KIND");
                (w.parse().expect("a write number"), kind == "sync")
            })
            .collect();
        for (i, a) in acks.iter().enumerate() {
            assert_eq!(a.0, stored + i as u64, "cycle {cycle}: acks in order");
        }
        acked += acks.len();
        synced_acks += acks.iter().filter(|a| a.1).count();

        let (disk, ops) = recorded(&ws);
        max_ops = max_ops.max(ops);
        if finished {
            disk.check_against(&ws.live());
        }
        std::fs::remove_dir_all(&base).unwrap();
        let shape = CrashShape::random(&mut rng);
        disk.crash(&mut rng, shape, &base);
        let dir = ws.path().join(format!("check-{cycle}"));
        common::copy_dir(&base, &dir);
        to_check = Some(ToCheck {
            dir,
            cycle,
            start: stored,
            acks,
            adversarial: matches!(shape, CrashShape::Adversarial { .. }),
        });
    }
    if let Some(c) = to_check {
        if let Checked::Refused(why) = check(&c) {
            refusals.push(why);
        }
    }
    eprintln!(
        "{cycles} power cuts ({cut_in_recovery} before the child finished recovering): {acked} \
         writes acknowledged ({synced_acks} synced); at most {max_ops} recorded operations per \
         child; {} states refused by RocksDB (allowed after adversarial cuts only): {refusals:?}",
        refusals.len()
    );
}

/// The `start N` line of a child: the writes it found at open.
fn start_line(lines: &[String]) -> Option<u64> {
    lines
        .iter()
        .find_map(|l| l.strip_prefix("start ").and_then(|n| n.parse().ok()))
}

/// Empty the directory a new database will be created in.
fn fresh(base: &Path) {
    std::fs::remove_dir_all(base).unwrap();
    std::fs::create_dir_all(base).unwrap();
}

/// A power cut right after a new database's first synced write keeps that write: the
/// directories the database created are fsynced into their parents. (Before, nothing synced the
/// new database directory's entry in its parent, and such a cut lost the whole database.)
#[test]
fn a_new_database_keeps_its_first_synced_write() {
    let ws = Workspace::new();
    let interposer = interposer(&ws);
    std::fs::create_dir_all(ws.base()).unwrap();
    let ended = start_child(&ws, &interposer, 0, 1, 1).wait();
    assert!(ended.lines.iter().any(|l| l == "end"), "{}", ended.report());
    assert!(
        ended.lines.iter().any(|l| l == "ack 0 sync"),
        "{}",
        ended.report()
    );
    let (disk, _) = recorded(&ws);
    let out = ws.path().join("after");
    disk.crash(&mut common::rng(1), CrashShape::SyncedOnly, &out);
    let c = ToCheck {
        dir: out,
        cycle: 0,
        start: 0,
        acks: vec![(0, true)],
        adversarial: false,
    };
    assert!(matches!(check(&c), Checked::Stored(1)));
}
