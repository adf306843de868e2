//! Faults on the I/O path: a full disk (a small tmpfs) and failing fsyncs (an LD_PRELOAD shim).
//! The engine must return errors, never panic, keep every acknowledged write, and work again once
//! the fault is gone (RocksDB refuses writes after a failed sync until the database is reopened,
//! as a database should after fsync fails: the page cache can no longer be trusted).
//!
//! Each test skips, saying why, where the machine cannot inject its fault (no root to mount a
//! tmpfs, no C compiler for the shim).

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use siren_engine::{AppendOptions, Db, Event, Options, ReadRange};

fn options() -> Options {
    Options {
        embedding_dim: 4,
        semid_levels: 2,
        semid_codebook_size: 8,
        block_events: 64,
        auto_compact: None,
        ..Options::default()
    }
}

fn batch(b: u64, n: u64) -> Vec<Event> {
    (0..n)
        .map(|j| Event {
            user: b % 5,
            ts: (b * 100_000 + j) as i64,
            item: b * 100_000 + j,
            action: 1,
            domain: 0,
        })
        .collect()
}

/// Every event of every batch in `acked` is there, once.
fn check_acked(db: &Db, acked: &[u64], n: u64) {
    let snap = db.snapshot();
    let mut items = std::collections::HashSet::new();
    for u in 0..5 {
        for e in snap.read(u, ReadRange::all()).unwrap() {
            assert!(items.insert(e.item), "event {e:?} twice");
        }
    }
    for &b in acked {
        for e in batch(b, n) {
            assert!(items.contains(&e.item), "acknowledged event {e:?} lost");
        }
    }
}

/// One line of a child test's report, after the `@@` marker (libtest prints its own text on
/// the same lines); stdout is line-buffered, so a line is out before anything that follows it.
fn say(s: &str) {
    println!("@@{s}");
}

/// This test binary running only the ignored test `name` (a child process), with `envs`.
fn child_test(name: &str, envs: &[(&str, &std::ffi::OsStr)]) -> Command {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        name,
        "--ignored",
        "--exact",
        "--nocapture",
        "--test-threads=1",
    ]);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd
}

/// The lines a child said (see [`say`]).
fn said_lines(out: impl BufRead) -> Vec<String> {
    out.lines()
        .map(Result::unwrap)
        .filter_map(|l| l.split_once("@@").map(|(_, s)| s.to_string()))
        .collect()
}

/// The batches a child acknowledged (`ack <batch> ...` lines).
fn acked_batches(lines: &[String]) -> Vec<u64> {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix("ack "))
        .map(|l| l.split(' ').next().unwrap().parse().unwrap())
        .collect()
}

struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Result<Tmpfs, String> {
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        Ok(Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// The filling half of [`a_full_disk_gives_errors_and_loses_nothing`], in a child process so that
/// an abort inside RocksDB (Debian's librocksdb keeps its assertions, and a full disk has made it
/// abort: docs/RELIABILITY.md) is a crash the parent survives and checks, not the end of the
/// test binary. Prints each outcome after `@@` as it happens.
#[test]
#[ignore = "child process of a_full_disk_gives_errors_and_loses_nothing"]
fn full_disk_child() {
    let Ok(dir) = std::env::var("SIREN_FULL_DISK_DB") else {
        eprintln!("runs only as the child of a_full_disk_gives_errors_and_loses_nothing");
        return;
    };
    let ballast = PathBuf::from(std::env::var("SIREN_FULL_DISK_BALLAST").unwrap());
    let db = Db::open(&dir, options()).unwrap();
    let mut errors = 0;
    // Fill the disk: ballast first, then appends until they fail.
    std::fs::write(&ballast, vec![7u8; 8 << 20]).unwrap();
    for b in 0..10_000u64 {
        match db.append(&batch(b, FULL_DISK_BATCH), &AppendOptions::default()) {
            Ok(_) => say(&format!("ack {b}")),
            Err(e) => {
                errors += 1;
                let kind = if e.is_corruption() {
                    "corruption"
                } else {
                    "err"
                };
                say(&format!("{kind} {b}: {e}"));
                if std::env::var_os("SIREN_FULL_DISK_ABORT").is_some() {
                    // What RocksDB's assertion does, at the first failed write.
                    std::process::abort();
                }
                if errors > 3 {
                    break;
                }
            }
        }
        if b % 20 == 19 {
            // Compactions run into the full disk too; they must fail cleanly.
            match db.compact() {
                Ok(_) => say(&format!("compact ok {b}")),
                Err(e) => say(&format!("compact err {b}: {e}")),
            }
        }
    }
    say("filled");
    // Make room. Writes work again, if need be after a reopen.
    std::fs::remove_file(&ballast).unwrap();
    let retry = batch(FULL_DISK_RETRY, 10);
    match db.append(&retry, &AppendOptions::default()) {
        Ok(_) => say("after ok"),
        Err(e) => say(&format!("after err: {e}")),
    }
    drop(db);
    say("done");
}

/// Events per batch of the full-disk test, and the batch written once the disk has room again.
const FULL_DISK_BATCH: u64 = 2_000;
const FULL_DISK_RETRY: u64 = 1_000_000;

/// A child fills a 24 MiB tmpfs with appends and compactions ([`full_disk_child`]); then the
/// database must reopen with every acknowledged batch exactly once, no corruption, and take
/// writes again. If RocksDB aborts the child on the full disk (an open defect of Debian's
/// librocksdb, docs/RELIABILITY.md), the test says so and checks the same things after the
/// crash: an abort may cost availability, never an acknowledged write.
#[test]
fn a_full_disk_gives_errors_and_loses_nothing() {
    full_disk(false);
}

/// [`a_full_disk_gives_errors_and_loses_nothing`] with the child aborting at its first failed
/// write, as RocksDB's assertion has: the crash path checked on every run, not only when the
/// defect strikes.
#[test]
fn an_abort_on_a_full_disk_loses_nothing() {
    full_disk(true);
}

fn full_disk(abort: bool) {
    let outer = tempfile::tempdir().unwrap();
    let _fs = match Tmpfs::mount(outer.path(), "24m") {
        Ok(fs) => fs,
        Err(why) => {
            eprintln!(
                "skipped: cannot mount a tmpfs to fill ({why}); run as root to test a full disk"
            );
            return;
        }
    };
    let path = outer.path().join("db");
    let ballast = outer.path().join("ballast");
    let mut cmd = child_test(
        "full_disk_child",
        &[
            ("SIREN_FULL_DISK_DB", path.as_os_str()),
            ("SIREN_FULL_DISK_BALLAST", ballast.as_os_str()),
        ],
    );
    if abort {
        cmd.env("SIREN_FULL_DISK_ABORT", "1");
    }
    let child = cmd.output().unwrap();
    let lines = said_lines(child.stdout.as_slice());
    let acked = acked_batches(&lines);
    let said = |what: &str| lines.iter().any(|l| l.starts_with(what));
    assert!(
        !said("corruption"),
        "a full disk is not corruption: {lines:#?}"
    );
    assert!(!acked.is_empty(), "nothing was acknowledged: {lines:#?}");
    let stderr = String::from_utf8_lossy(&child.stderr);
    assert!(
        !stderr.contains("panicked"),
        "the engine panicked on a full disk:\n{stderr}"
    );
    // RocksDB's assertion can abort the child inside its first failed write, before the
    // engine returns the error: then the death, not an error line, says the disk filled, and
    // it must be that assertion, not some other crash.
    let died = !child.status.success();
    assert!(said("err") || died, "the disk never filled: {lines:#?}");
    assert!(
        !died || abort || stderr.contains("Assertion"),
        "the child died, not of RocksDB's assertion ({}):\n{stderr}",
        child.status
    );
    // Asked to abort, the child must have; otherwise it may finish or die in RocksDB.
    assert!(
        !(abort && said("done")),
        "the child did not abort: {lines:#?}"
    );
    let outcome = if said("done") {
        let after = lines.iter().find(|l| l.starts_with("after"));
        format!("finished ({})", after.map_or("no retry", String::as_str))
    } else {
        let why: Vec<&str> = stderr.lines().filter(|l| l.contains("ssertion")).collect();
        format!("died ({}; {})", child.status, why.join(" | "))
    };
    let _ = std::fs::remove_file(&ballast);
    // Reopen: everything acknowledged is there once, and writes work again.
    let db = Db::open(&path, options()).unwrap();
    check_acked(&db, &acked, FULL_DISK_BATCH);
    db.append(&batch(FULL_DISK_RETRY + 1, 10), &AppendOptions::default())
        .unwrap();
    db.compact().unwrap();
    check_acked(&db, &acked, FULL_DISK_BATCH);
    assert!(db.verify().is_ok());
    drop(db);
    let db = Db::open(&path, options()).unwrap();
    check_acked(&db, &acked, FULL_DISK_BATCH);
    eprintln!(
        "full disk: {} batches acknowledged before it filled, all kept after a reopen; the child {outcome}",
        acked.len()
    );
}

const SHIM: &str = r#"
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdlib.h>
#include <unistd.h>
static int failing(void) {
    const char *f = getenv("SIREN_FAULT_FILE");
    return f && access(f, F_OK) == 0;
}
#define WRAP(name) \
    int name(int fd) { \
        static int (*real)(int); \
        if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, #name); \
        if (failing()) { errno = EIO; return -1; } \
        return real(fd); \
    }
WRAP(fsync)
WRAP(fdatasync)
"#;

#[test]
#[ignore = "child process of failing_fsyncs_give_errors_and_lose_nothing"]
fn fsync_fault_child() {
    let Ok(dir) = std::env::var("SIREN_FAULT_DB") else {
        eprintln!("runs only as the child of failing_fsyncs_give_errors_and_lose_nothing");
        return;
    };
    let fault = PathBuf::from(std::env::var("SIREN_FAULT_FILE").unwrap());
    let mut db = Db::open(&dir, options()).unwrap();
    let mut b = 0u64;
    // Phase 1: healthy. Phase 2: fsync fails. Phase 3: fault gone, same handle. Phase 4: reopen.
    for phase in 1..=4 {
        if phase == 2 {
            std::fs::write(&fault, b"1").unwrap();
        }
        if phase == 3 {
            std::fs::remove_file(&fault).unwrap();
        }
        if phase == 4 {
            drop(db);
            db = Db::open(&dir, options()).unwrap();
        }
        for _ in 0..20 {
            match db.append(&batch(b, 50), &AppendOptions::default()) {
                Ok(_) => say(&format!("ack {b} phase {phase}")),
                Err(e) => say(&format!("err {b} phase {phase}: {e}")),
            }
            b += 1;
        }
        // Phase 1 leaves its batches pending, so that phase 2's compaction has work to fail at.
        if phase > 1 {
            match db.compact() {
                Ok(c) => say(&format!(
                    "compact ok phase {phase}: {} users",
                    c.users_written
                )),
                Err(e) => say(&format!("compact err phase {phase}: {e}")),
            }
        }
    }
    say("done");
}

#[test]
fn failing_fsyncs_give_errors_and_lose_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let shim = match common::build_preload(SHIM, tmp.path(), "fsync_shim") {
        Ok(so) => so,
        Err(why) => {
            eprintln!("skipped: cannot build the fsync shim: {why}");
            return;
        }
    };
    let db_dir = tmp.path().join("db");
    let fault = tmp.path().join("fault");
    let mut child = child_test(
        "fsync_fault_child",
        &[
            ("SIREN_FAULT_DB", db_dir.as_os_str()),
            ("SIREN_FAULT_FILE", fault.as_os_str()),
            ("LD_PRELOAD", shim.as_os_str()),
        ],
    )
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    let lines = said_lines(BufReader::new(child.stdout.take().unwrap()));
    child.wait().unwrap();
    assert!(
        lines.iter().any(|l| l == "done"),
        "the child did not finish:\n{}",
        lines.join("\n")
    );
    let acked = acked_batches(&lines);
    let in_phase = |p: u32, what: &str| {
        lines
            .iter()
            .filter(|l| l.starts_with(what) && l.contains(&format!("phase {p}")))
            .count()
    };
    assert_eq!(in_phase(1, "ack"), 20, "{lines:#?}");
    assert_eq!(
        in_phase(2, "ack"),
        0,
        "no write may be acknowledged while fsync fails"
    );
    assert_eq!(in_phase(2, "compact ok"), 0);
    assert_eq!(in_phase(4, "ack"), 20, "after a reopen, writes work again");
    assert_eq!(in_phase(4, "compact ok"), 1);
    let db = Db::open(&db_dir, options()).unwrap();
    check_acked(&db, &acked, 50);
    assert!(db.verify().is_ok());
    eprintln!(
        "failing fsync: {} acknowledged, {} refused while failing, {} refused after it cleared (before the reopen)",
        acked.len(),
        in_phase(2, "err"),
        in_phase(3, "err")
    );
}
