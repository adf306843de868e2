//! `siren inspect` and `siren verify`.

use std::path::Path;
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

pub fn inspect(path: &Path) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let db = open_existing(path)?;
    print_stats(&db.stats());
    Ok(ExitCode::SUCCESS)
}

pub fn verify(path: &Path) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let db = match open_existing(path) {
        Ok(db) => db,
        Err(e) => {
            println!("damaged: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let report = db.verify();
    println!(
        "checked {} segment files, {} user entries, {} RocksDB records",
        report.segments, report.entries, report.records
    );
    for p in &report.problems {
        println!("damaged: {p}");
    }
    Ok(if report.is_ok() {
        println!("ok");
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
