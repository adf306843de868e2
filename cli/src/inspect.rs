//! `siren inspect` and `siren verify`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use siren_engine::{Db, Options, Stats};

/// Open an existing database with the options it was created with.
pub fn open_existing(path: &Path) -> siren_engine::Result<Db> {
    let stored = Db::created_with(path)?;
    Db::open(
        path,
        Options {
            create_if_missing: false,
            auto_compact: None,
            ..stored.apply(Options::default())
        },
    )
}

pub fn print_stats(s: &Stats) {
    let per = |b: u64| {
        if s.events == 0 {
            0.0
        } else {
            b as f64 / s.events as f64
        }
    };
    println!("users            {}", s.users);
    println!(
        "events           {} ({} waiting for compaction)",
        s.events, s.pending_events
    );
    println!("catalog items    {}", s.items);
    println!(
        "segment files    {} ({} bytes, {} unreferenced)",
        s.segments, s.segment_file_bytes, s.garbage_bytes
    );
    println!("bytes per event in segments:");
    let l = &s.live;
    for (name, b) in [
        ("time", l.time),
        ("item", l.item),
        ("action", l.action),
        ("domain", l.domain),
        ("item dictionary", l.dict),
        ("SemID prefix index", l.index),
        ("headers", l.meta),
        ("total", l.total()),
    ] {
        println!("  {name:<20} {:>8.3}  ({b} bytes)", per(b));
    }
    let r = &s.rocksdb;
    println!(
        "RocksDB tables   pending {} B, users {} B, items {} B, meta {} B",
        r.pending, r.users, r.items, r.meta
    );
}

/// What a path given to `inspect` or `verify` holds: a database directory, a dataset
/// directory (`db/`, `codebook.bin`) or a demo folder (`data/`, `model/`).
struct Layout {
    db: PathBuf,
    /// A dataset directory (`dataset.json`, `impressions.csv`).
    dataset: Option<PathBuf>,
    codebook: Option<PathBuf>,
    model: Option<PathBuf>,
}

fn resolve(path: &Path) -> Result<Layout, Box<dyn std::error::Error>> {
    let is_db = |p: &Path| p.join("rocksdb").is_dir();
    let file = |p: PathBuf| p.exists().then_some(p);
    if is_db(path) {
        return Ok(Layout {
            db: path.to_path_buf(),
            dataset: None,
            codebook: None,
            model: None,
        });
    }
    for data in [path.to_path_buf(), path.join("data")] {
        if is_db(&data.join("db")) {
            return Ok(Layout {
                db: data.join("db"),
                dataset: data.join("dataset.json").exists().then(|| data.clone()),
                codebook: file(data.join("codebook.bin")),
                model: file(path.join("model").join("config.json")).map(|_| path.join("model")),
            });
        }
    }
    Err(format!(
        "no Siren database at {} (nor in its db/ or data/db/)",
        path.display()
    )
    .into())
}

pub fn inspect(path: &Path) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let layout = resolve(path)?;
    let db = open_existing(&layout.db)?;
    println!("database         {}", layout.db.display());
    print_stats(&db.stats());
    Ok(ExitCode::SUCCESS)
}

pub fn verify(path: &Path) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let layout = resolve(path)?;
    let mut damaged = Vec::new();
    if let Some(d) = &layout.dataset {
        let dir = siren_model::dataset::DatasetDir::new(d);
        match dir.read_tables() {
            Ok(_) => println!("dataset {} ok", d.display()),
            Err(e) => damaged.push(e.to_string()),
        }
    }
    if let Some(c) = &layout.codebook {
        match siren_model::semid::Codebook::load(c) {
            Ok(_) => println!("codebook {} ok", c.display()),
            Err(e) => damaged.push(e.to_string()),
        }
    }
    if let Some(m) = &layout.model {
        match siren_model::train::load_checkpoint(m) {
            Ok(_) => println!("model {} ok", m.display()),
            Err(e) => damaged.push(e.to_string()),
        }
    }
    match open_existing(&layout.db) {
        Ok(db) => {
            let report = db.verify();
            println!(
                "checked {} segment files, {} user entries, {} RocksDB records",
                report.segments, report.entries, report.records
            );
            damaged.extend(report.problems.iter().map(ToString::to_string));
        }
        Err(e) => damaged.push(e.to_string()),
    }
    for p in &damaged {
        println!("damaged: {p}");
    }
    Ok(if damaged.is_empty() {
        println!("ok");
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
