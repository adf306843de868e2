//! Flip bits, truncate files and zero runs of bytes in every kind of file of a closed database. Each attempt must either answer
//! exactly as the undamaged database did or fail with a typed error; nothing panics. For
//! Siren's own segment files, `verify` (or open) must report every flip.

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

fn build(dir: &Path) -> Answers {
    let db = Db::open(dir, opts()).unwrap();
    let mut r = rng(17);
    let items = catalog(&mut r, 200, 8, 2, 8);
    db.upsert_items(&items, Durability::Sync).unwrap();
    let ids: Vec<u64> = items.iter().map(|i| i.id).collect();
    for u in 0..8 {
        db.append(
            &zipf_events(&mut r, u, 400, &ids, 0),
            &AppendOptions::default(),
        )
        .unwrap();
    }
    db.compact().unwrap();
    for u in 5..12 {
        db.append(
            &zipf_events(&mut r, u, 50, &ids, 60_000_000),
            &AppendOptions::default(),
        )
        .unwrap();
    }
    db.append(
        &[],
        &AppendOptions {
            durability: Durability::Sync,
            source: Some(("src".into(), 3)),
        },
    )
    .unwrap();
    let a = answers(&db).unwrap();
    assert!(db.verify().is_ok());
    a
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
}

fn attempt(dir: &Path, expect: &Answers) -> Outcome {
    let db = match Db::open(
        dir,
        Options {
            create_if_missing: false,
            ..opts()
        },
    ) {
        Ok(db) => db,
        Err(Error::InvalidArgument(m)) => panic!("open reported damage as a caller error: {m}"),
        Err(_) => return Outcome::Detected,
    };
    match answers(&db) {
        Ok(a) => {
            if &a != expect {
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
            if db.verify().is_ok() {
                Outcome::Correct
            } else {
                Outcome::Detected
            }
        }
        Err(Error::InvalidArgument(m)) => panic!("read reported damage as a caller error: {m}"),
        Err(_) => Outcome::Detected,
    }
}

#[test]
fn flipped_bytes_are_detected_or_harmless() {
    let work = tempfile::tempdir().unwrap();
    let pristine = work.path().join("pristine");
    let expect = build(&pristine);
    let mut r = rng(23);
    let mut summary: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for file in files(&pristine) {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("LOG") || name == "LOCK" {
            continue; // RocksDB's human-readable log and its lock file hold no data
        }
        let len = fs::metadata(&file).unwrap().len() as usize;
        if len == 0 {
            continue;
        }
        let is_segment = name.ends_with(".seg");
        let scale: usize = std::env::var("SIREN_CORRUPTION_TRIES")
            .ok()
            .and_then(|v| v.parse().ok())
            .map_or(1, |t: usize| t.div_ceil(25).max(1));
        let tries = if is_segment { 120 } else { 25 } * scale;
        for t in 0..tries {
            let copy = work.path().join(format!("try-{name}-{t}"));
            copy_dir(&pristine, &copy);
            let target = copy.join(file.strip_prefix(&pristine).unwrap());
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
            match t % 4 {
                3 if t > 2 => bytes.truncate(pos),
                2 if t > 2 => {
                    let n = r.random_range(1..64).min(len - pos);
                    bytes[pos..pos + n].fill(0);
                }
                _ => bytes[pos] ^= 1 << r.random_range(0..8),
            }
            if bytes == original {
                // Zeroing bytes that were zero: no damage to look for.
                fs::remove_dir_all(&copy).unwrap();
                continue;
            }
            fs::write(&target, &bytes).unwrap();
            let outcome = catch_unwind(AssertUnwindSafe(|| attempt(&copy, &expect)))
                .unwrap_or_else(|_| panic!("panic with {name} byte {pos} flipped"));
            if is_segment {
                assert_eq!(
                    outcome,
                    Outcome::Detected,
                    "damage at {pos} of segment {name} went unnoticed"
                );
            }
            let kind = if is_segment {
                "segment".to_string()
            } else if name == "WATERMARK" {
                "siren WATERMARK".to_string()
            } else if name.ends_with(".sst") {
                "rocksdb table (.sst)".to_string()
            } else {
                format!(
                    "rocksdb {}",
                    name.trim_end_matches(|c: char| c.is_ascii_digit() || c == '-')
                )
            };
            let e = summary.entry(kind).or_default();
            e.0 += 1;
            e.1 += usize::from(outcome == Outcome::Detected);
            fs::remove_dir_all(&copy).unwrap();
        }
    }
    for (kind, (tries, detected)) in &summary {
        eprintln!("{kind}: {tries} flips, {detected} detected, the rest harmless");
    }
    assert!(
        summary.get("segment").is_some_and(|s| s.0 > 0),
        "no segment file was tested"
    );
    assert!(
        summary.contains_key("rocksdb table (.sst)"),
        "no RocksDB table was tested"
    );
}

#[test]
fn missing_and_truncated_segment_files_are_reported() {
    let work = tempfile::tempdir().unwrap();
    let pristine = work.path().join("db");
    build(&pristine);
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
