//! Flip bits, truncate files and zero runs of bytes in every kind of file of a database, closed
//! cleanly or left open by a process that ended without closing it (its last writes then only in
//! RocksDB's write-ahead log). Each attempt must answer exactly as the undamaged database did, or
//! fail with a typed error; nothing panics. For Siren's own segment files, `verify` (or open) must
//! report every flip. Damage to the write-ahead log may also bring the database back as it was a
//! few writes earlier (RocksDB cannot tell a damaged record from one a crash cut short, and
//! replays up to it): then it must be exactly such an earlier state, and it is counted apart,
//! reported (`Stats::wal_damage`) or not.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use common::{catalog, copy_dir, rng, test_options, zipf_events};
use rand::Rng;
use siren_engine::{AppendOptions, Db, Durability, Error, Options, ReadRange, SemId};

#[derive(Debug, PartialEq)]
struct Answers {
    reads: BTreeMap<u64, Vec<siren_engine::Event>>,
    hard: Vec<Vec<siren_engine::HardHit>>,
    soft: Vec<Vec<siren_engine::SoftHit>>,
}

fn opts() -> Options {
    test_options(8, 2, 8)
}

fn answers(db: &Db) -> Result<Answers, Error> {
    let snap = db.snapshot();
    let mut reads = BTreeMap::new();
    let mut hard = Vec::new();
    let mut soft = Vec::new();
    let targets = [SemId::new(&[1, 2]).unwrap(), SemId::new(&[3, 0]).unwrap()];
    let embs = [vec![1.0; 8], vec![-1.0, 1.0, 0.5, 0.0, 0.0, 2.0, 1.0, -0.5]];
    for u in snap.users() {
        reads.insert(u, snap.read(u, ReadRange::all())?);
        hard.extend(snap.retrieve_hard_batch(u, &targets, 20, None)?);
        soft.extend(snap.retrieve_soft_batch(u, &embs, 20, Some(50_000_000))?);
    }
    Ok(Answers { reads, hard, soft })
}

/// How a database is left for the campaign.
#[derive(Clone, Copy, PartialEq)]
enum Left {
    Closed,
    /// Never closed, as by a crash: its last writes only in RocksDB's write-ahead log.
    Open,
}

/// Build the database and return its answers after each of its last writes (the last is the
/// whole database).
fn build(dir: &Path, left: Left) -> Vec<Answers> {
    let db = Db::open(dir, opts()).unwrap();
    let mut r = rng(17);
    let items = catalog(&mut r, 200, 8, 2, 8);
    db.upsert_items(&items, Durability::Sync).unwrap();
    let ids: Vec<u64> = items.iter().map(|i| i.id).collect();
    // Short histories (the forward layout) and one long one (the inverted layout: position
    // lists and their count table).
    for u in 0..8 {
        db.append(
            &zipf_events(&mut r, u, 400, &ids, 0),
            &AppendOptions::default(),
        )
        .unwrap();
    }
    db.append(
        &zipf_events(&mut r, 20, 5_000, &ids, 0),
        &AppendOptions::default(),
    )
    .unwrap();
    db.compact().unwrap();
    let mut states = vec![answers(&db).unwrap()];
    for u in 5..12 {
        db.append(
            &zipf_events(&mut r, u, 50, &ids, 60_000_000),
            &AppendOptions::default(),
        )
        .unwrap();
        states.push(answers(&db).unwrap());
    }
    let mut changed = catalog(&mut r, 20, 8, 2, 8);
    for (i, it) in changed.iter_mut().enumerate() {
        it.id = ids[i * 7];
    }
    db.upsert_items(&changed, Durability::Sync).unwrap();
    states.push(answers(&db).unwrap());
    db.append(
        &[],
        &AppendOptions {
            durability: Durability::Sync,
            source: Some(("src".into(), 3)),
        },
    )
    .unwrap();
    assert!(db.verify().is_ok());
    match left {
        Left::Closed => drop(db),
        // The handle is leaked, never closed: nothing flushes the memtables, and the files are
        // as a crash leaves them. Copies are opened at other paths, so its lock is no obstacle.
        Left::Open => std::mem::forget(db),
    }
    states
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// What happened to one damaged copy.
#[derive(Debug, PartialEq)]
enum Outcome {
    Correct,
    Detected,
    /// It opened as it was after an earlier write, and said so (`Stats::wal_damage`).
    EarlierReported,
    /// It opened as it was after an earlier write, without a word.
    EarlierSilent,
}

/// A typed error for damage; damage to segment file `segment` must be reported naming it.
fn detected(e: &Error, segment: Option<&str>) -> Outcome {
    if let Some(name) = segment {
        assert!(
            e.to_string().contains(name),
            "damage to {name} reported without naming it: {e}"
        );
    }
    Outcome::Detected
}

/// Open the damaged copy (with the decoded cache, or without it, so that both read paths meet
/// the damage), answer, verify. `segment`: the damaged file, when it is a segment.
fn attempt(dir: &Path, states: &[Answers], cache: bool, segment: Option<&str>) -> Outcome {
    let db = match Db::open(
        dir,
        Options {
            create_if_missing: false,
            cache_bytes: if cache { 64 << 20 } else { 0 },
            ..opts()
        },
    ) {
        Ok(db) => db,
        Err(Error::InvalidArgument(m)) => panic!("open reported damage as a caller error: {m}"),
        Err(e) => return detected(&e, segment),
    };
    let expect = states.last().expect("a state");
    match answers(&db) {
        Ok(a) if &a == expect => match db.verify().problems.first() {
            None => Outcome::Correct,
            Some(e) => detected(e, segment),
        },
        Ok(a) => {
            if !states.contains(&a) {
                let sizes = |x: &Answers| {
                    x.reads
                        .iter()
                        .map(|(u, v)| (*u, v.len()))
                        .collect::<Vec<_>>()
                };
                panic!(
                    "a damaged file gave a wrong answer: events per user {:?}, expected {:?}",
                    sizes(&a),
                    sizes(expect)
                );
            }
            match db.stats().wal_damage {
                Some(_) => Outcome::EarlierReported,
                None => Outcome::EarlierSilent,
            }
        }
        Err(Error::InvalidArgument(m)) => panic!("read reported damage as a caller error: {m}"),
        Err(e) => detected(&e, segment),
    }
}

/// Damage every file of the database at `pristine` in turn; returns, per kind of file, how
/// many damages gave each outcome.
fn campaign(work: &Path, pristine: &Path, states: &[Answers]) -> BTreeMap<String, [usize; 4]> {
    let mut r = rng(23);
    let mut summary: BTreeMap<String, [usize; 4]> = BTreeMap::new();
    for file in files(pristine) {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("LOG") || name == "LOCK" {
            continue; // RocksDB's human-readable log and its lock file hold no data
        }
        let len = fs::metadata(&file).unwrap().len() as usize;
        if len == 0 {
            continue;
        }
        let is_segment = name.ends_with(".seg");
        let is_wal = name.ends_with(".log");
        let scale = common::env_or("SIREN_CORRUPTION_TRIES", 25usize)
            .div_ceil(25)
            .max(1);
        let tries = if is_segment || is_wal { 120 } else { 25 } * scale;
        for t in 0..tries {
            let copy = work.join(format!("try-{name}-{t}"));
            copy_dir(pristine, &copy);
            let target = copy.join(file.strip_prefix(pristine).unwrap());
            let original = fs::read(&target).unwrap();
            let mut bytes = original.clone();
            // Ends of files hold footers and headers: aim there too. Flip a bit, truncate, or
            // zero a run of bytes.
            let pos = match t {
                0 => 0,
                1 => len - 1,
                2 => len.saturating_sub(20),
                _ => r.random_range(0..len),
            };
            let damage = match t % 4 {
                3 if t > 2 => {
                    bytes.truncate(pos);
                    "truncated"
                }
                2 if t > 2 => {
                    let n = r.random_range(1..64).min(len - pos);
                    bytes[pos..pos + n].fill(0);
                    "zeroed"
                }
                _ => {
                    bytes[pos] ^= 1 << r.random_range(0..8);
                    "bit flipped"
                }
            };
            if bytes == original {
                // Zeroing bytes that were zero: no damage to look for.
                fs::remove_dir_all(&copy).unwrap();
                continue;
            }
            fs::write(&target, &bytes).unwrap();
            let outcome = catch_unwind(AssertUnwindSafe(|| {
                attempt(
                    &copy,
                    states,
                    t % 2 == 0,
                    is_segment.then_some(name.as_str()),
                )
            }))
            .unwrap_or_else(|_| panic!("panic with {name} byte {pos} damaged"));
            if is_segment {
                assert_eq!(
                    outcome,
                    Outcome::Detected,
                    "damage at {pos} of segment {name} went unnoticed"
                );
            } else if !is_wal {
                assert!(
                    matches!(outcome, Outcome::Correct | Outcome::Detected),
                    "damage at {pos} of {name} brought back an earlier state: {outcome:?}"
                );
            } else if damage != "truncated" {
                // Only a log cut short looks like a crash; other damage to it is reported.
                assert_ne!(
                    outcome,
                    Outcome::EarlierSilent,
                    "{name} {damage} at {pos} of {len} bytes brought back an earlier state without a word"
                );
            }
            let kind = if is_segment {
                "segment".to_string()
            } else if name == "WATERMARK" {
                "siren WATERMARK".to_string()
            } else if name.ends_with(".sst") {
                "rocksdb table (.sst)".to_string()
            } else if is_wal {
                // How the log was damaged matters: RocksDB reads a truncated log as one a crash
                // cut short.
                format!("rocksdb write-ahead log (.log), {damage}")
            } else {
                format!(
                    "rocksdb {}",
                    name.trim_end_matches(|c: char| c.is_ascii_digit() || c == '-')
                )
            };
            let e = summary.entry(kind).or_default();
            e[outcome as usize] += 1;
            fs::remove_dir_all(&copy).unwrap();
        }
    }
    for (kind, [correct, detected, reported, silent]) in &summary {
        eprintln!(
            "{kind}: {} damages, {detected} detected, {correct} harmless, {reported} earlier \
             state reported, {silent} earlier state unreported",
            correct + detected + reported + silent
        );
    }
    summary
}

#[test]
fn flipped_bytes_are_detected_or_harmless() {
    let work = tempfile::tempdir().unwrap();
    let pristine = work.path().join("pristine");
    let states = build(&pristine, Left::Closed);
    let summary = campaign(work.path(), &pristine, &states[states.len() - 1..]);
    assert!(
        summary.get("segment").is_some_and(|s| s[1] > 0),
        "no segment file was tested"
    );
    assert!(
        summary.contains_key("rocksdb table (.sst)"),
        "no RocksDB table was tested"
    );
}

#[test]
fn damage_to_a_database_left_open_is_detected_harmless_or_an_earlier_state() {
    let work = tempfile::tempdir().unwrap();
    let pristine = work.path().join("pristine");
    let states = build(&pristine, Left::Open);
    let summary = campaign(work.path(), &pristine, &states);
    let wal: usize = summary
        .iter()
        .filter(|(kind, _)| kind.starts_with("rocksdb write-ahead log"))
        .map(|(_, n)| n.iter().sum::<usize>())
        .sum();
    assert!(
        wal > 0,
        "the database left open has a write-ahead log with records"
    );
}

#[test]
fn missing_and_truncated_segment_files_are_reported() {
    let work = tempfile::tempdir().unwrap();
    let pristine = work.path().join("db");
    build(&pristine, Left::Closed);
    let seg = files(&pristine.join("segments")).pop().unwrap();
    let bytes = fs::read(&seg).unwrap();
    fs::write(&seg, &bytes[..bytes.len() / 2]).unwrap();
    let e = Db::open(&pristine, opts())
        .err()
        .expect("truncated segment must not open");
    assert!(e.is_corruption(), "{e}");
    assert!(
        e.to_string()
            .contains(&seg.file_name().unwrap().to_string_lossy().to_string()),
        "error names the file: {e}"
    );
    fs::remove_file(&seg).unwrap();
    let e = Db::open(&pristine, opts())
        .err()
        .expect("missing segment must not open");
    assert!(e.is_corruption(), "{e}");
}

/// A record of the write-ahead log whose checksum fails at its end (a power cut tore an unsynced
/// write) opens the database as it was before that record, and says so. RocksDB's strict replay
/// alone refused to open such a database at all; the power-loss harness found it.
#[test]
fn a_torn_last_record_of_the_write_ahead_log_opens_as_before_it_and_says_so() {
    let work = tempfile::tempdir().unwrap();
    let (copy, wal) = five_appends_left_open(work.path());
    let mut bytes = fs::read(&wal).unwrap();
    let n = bytes.len();
    bytes[n - 3] ^= 0xff;
    fs::write(&wal, &bytes).unwrap();
    let db = Db::open(&copy, opts()).unwrap();
    let damage = db
        .stats()
        .wal_damage
        .expect("the dropped record is reported");
    assert!(damage.contains("Corruption"), "{damage}");
    let want: Vec<_> = (0..4).flat_map(ten_events).collect();
    assert_eq!(db.snapshot().read(1, ReadRange::all()).unwrap(), want);
}

/// A run of zeros over a record header in the middle of the write-ahead log: RocksDB's replay
/// reads a zero-type header as the preallocated end of a log and drops what follows without an
/// error. Siren checks the logs for such a gap before the replay and says so (the corruption
/// campaign found the silent case with 40 tries per file).
#[test]
fn zeros_over_a_header_in_the_middle_of_the_write_ahead_log_are_reported() {
    let work = tempfile::tempdir().unwrap();
    let (copy, wal) = five_appends_left_open(work.path());
    let mut bytes = fs::read(&wal).unwrap();
    // Record headers (checksum 4, length 2, type 1), each followed by its payload; the
    // records here are small, so none crosses the first 32 KiB block.
    let mut headers = Vec::new();
    let mut pos = 0;
    while pos + 7 <= bytes.len() && bytes[pos + 6] != 0 {
        headers.push(pos);
        pos += 7 + usize::from(u16::from_le_bytes([bytes[pos + 4], bytes[pos + 5]]));
    }
    assert!(headers.len() >= 5, "{headers:?}");
    let at = headers[headers.len() - 3];
    bytes[at..at + 7].fill(0);
    fs::write(&wal, &bytes).unwrap();
    let db = Db::open(&copy, opts()).unwrap();
    let damage = db
        .stats()
        .wal_damage
        .expect("the dropped records are reported");
    assert!(damage.contains("run of zeros"), "{damage}");
    // An earlier state: some of the batches, not all.
    let got = db.snapshot().read(1, ReadRange::all()).unwrap();
    let kept = got.len() / 10;
    assert!(kept < 5, "nothing was dropped");
    assert_eq!(
        got,
        (0..kept as u64).flat_map(ten_events).collect::<Vec<_>>()
    );
}

/// Events `10 b .. 10 b + 10` of user 1.
fn ten_events(b: u64) -> Vec<siren_engine::Event> {
    (0..10)
        .map(|j| siren_engine::Event {
            user: 1,
            ts: (b * 10 + j) as i64,
            item: b * 10 + j,
            action: 0,
            domain: 0,
        })
        .collect()
}

/// A database under `work` with five appends of [`ten_events`] never closed (as by a power
/// cut: they are only in the write-ahead log), copied; the copy's directory and its log.
fn five_appends_left_open(work: &Path) -> (PathBuf, PathBuf) {
    let dir = work.join("db");
    let db = Db::open(&dir, opts()).unwrap();
    for b in 0..5 {
        db.append(&ten_events(b), &AppendOptions::default())
            .unwrap();
    }
    std::mem::forget(db);
    let copy = work.join("copy");
    copy_dir(&dir, &copy);
    let wal = files(&copy.join("rocksdb"))
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "log") && fs::metadata(p).unwrap().len() > 0)
        .expect("a write-ahead log with records");
    (copy, wal)
}
