//! `siren demo`: build an embedded database of synthetic lifelong users in a local folder and
//! run Siren's retrieval on it. Needs no data of its own.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::Args;
use siren_engine::{AppendOptions, Db, Durability, Options, ReadRange};
use siren_model::synth::{self, SynthConfig};

#[derive(Args)]
pub struct DemoArgs {
    /// Folder for the demo database (replaced if it holds an earlier demo).
    #[arg(long, default_value = "siren-demo")]
    dir: PathBuf,
    /// Users with ordinary histories.
    #[arg(long, default_value_t = 200)]
    users: u64,
    /// Events per ordinary user.
    #[arg(long, default_value_t = 5_000)]
    events: usize,
    /// Events of the one lifelong user the retrievals run on.
    #[arg(long, default_value_t = 100_000)]
    lifelong_events: usize,
    /// Catalog items.
    #[arg(long, default_value_t = 100_000)]
    items: usize,
    /// Embedding dimension.
    #[arg(long, default_value_t = 64)]
    dim: usize,
}

const LIFELONG_USER: u64 = 1;

fn prepare_dir(dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    if dir.exists() {
        let is_demo = dir.join("rocksdb").is_dir() && dir.join("segments").is_dir();
        if !is_demo {
            return Err(format!(
                "{} exists and is not a Siren database; choose another --dir",
                dir.display()
            )
            .into());
        }
        std::fs::remove_dir_all(dir)?;
    }
    Ok(())
}

pub fn run(a: &DemoArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    prepare_dir(&a.dir)?;
    let t0 = Instant::now();
    let cfg = SynthConfig {
        items: a.items,
        dim: a.dim,
        ..SynthConfig::default()
    };
    let db = Db::open(
        &a.dir,
        Options {
            embedding_dim: a.dim as u32,
            auto_compact: None,
            ..Options::default()
        },
    )?;
    println!("siren demo: database in {}", a.dir.display());

    let catalog = synth::catalog(&cfg);
    for chunk in catalog.items.chunks(10_000) {
        db.upsert_items(chunk, Durability::Buffered)?;
    }
    println!(
        "  catalog: {} items, {}-d embeddings, SemIDs of {} levels",
        a.items, a.dim, cfg.semid_levels
    );

    let opts = AppendOptions {
        durability: Durability::Buffered,
        source: None,
    };
    let start_ms = 1_600_000_000_000;
    let mut appended = 0usize;
    let lifelong = synth::history(
        &catalog,
        cfg.seed,
        LIFELONG_USER,
        a.lifelong_events,
        start_ms,
    );
    for c in lifelong.chunks(20_000) {
        db.append(c, &opts)?;
    }
    appended += lifelong.len();
    for u in 0..a.users {
        let h = synth::history(&catalog, cfg.seed, 1000 + u, a.events, start_ms);
        db.append(&h, &opts)?;
        appended += h.len();
        if (u + 1) % 50 == 0 || u + 1 == a.users {
            print!("\r  appended {appended} events for {} users", u + 2);
            use std::io::Write;
            std::io::stdout().flush()?;
        }
    }
    let ingest = t0.elapsed();
    println!(" ({:.0} events/s)", appended as f64 / ingest.as_secs_f64());
    db.flush()?;
    let c = db.compact()?;
    println!(
        "  compacted {} users into {} segment file(s), {} bytes",
        c.users_written, c.segments_written, c.bytes_written
    );
    println!();
    crate::inspect::print_stats(&db.stats());

    let snap = db.snapshot();
    let recent = snap.read(
        LIFELONG_USER,
        ReadRange {
            last: Some(5),
            ..ReadRange::default()
        },
    )?;
    println!(
        "\nuser {LIFELONG_USER}: {} events; the last five:",
        snap.user_len(LIFELONG_USER, None)?
    );
    for e in &recent {
        println!(
            "  t={} item={} action={} domain={}",
            e.ts, e.item, e.action, e.domain
        );
    }
    // A candidate from the user's recent interests (its most frequent item of the last 1,000
    // events), and retrieval now and as of the middle of the history.
    let last = snap.read(
        LIFELONG_USER,
        ReadRange {
            last: Some(1000),
            ..ReadRange::default()
        },
    )?;
    let mut freq = std::collections::HashMap::new();
    for e in &last {
        *freq.entry(e.item).or_insert(0usize) += 1;
    }
    let (&top, _) = freq
        .iter()
        .max_by_key(|(id, n)| (**n, std::cmp::Reverse(**id)))
        .expect("the user has events");
    let target = snap
        .item(top)
        .expect("items of the history are in the catalog");
    let semid = target.semid.expect("synthetic items have SemIDs");
    let emb = target
        .embedding
        .clone()
        .expect("synthetic items have embeddings");
    let as_of = lifelong[lifelong.len() / 2].ts;
    for (label, bound) in [
        ("now", None),
        ("as of the middle of the history", Some(as_of)),
    ] {
        let t = Instant::now();
        let hard = snap.retrieve_hard(LIFELONG_USER, &semid, 50, bound)?;
        let th = t.elapsed();
        let t = Instant::now();
        let soft = snap.retrieve_soft(LIFELONG_USER, &emb, 50, bound)?;
        let ts = t.elapsed();
        println!(
            "\ncandidate item {} (SemID {:?}), top 50 behaviours {label}:",
            target.id,
            semid.codes()
        );
        println!(
            "  hard (SemID prefix): {} hits in {:.0} us, depths {:?}",
            hard.len(),
            th.as_secs_f64() * 1e6,
            depth_histogram(hard.iter().map(|h| h.depth))
        );
        println!(
            "  soft (cosine):       {} hits in {:.0} us, similarity {:.3} .. {:.3}",
            soft.len(),
            ts.as_secs_f64() * 1e6,
            soft.first().map_or(0.0, |h| h.similarity),
            soft.last().map_or(0.0, |h| h.similarity)
        );
    }
    println!(
        "\ndone in {:.1} s. Inspect with: siren inspect {} ; check with: siren verify {}",
        t0.elapsed().as_secs_f64(),
        a.dir.display(),
        a.dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Count of hits per depth, deepest first.
fn depth_histogram(depths: impl Iterator<Item = u8>) -> Vec<(u8, usize)> {
    let mut counts = std::collections::BTreeMap::new();
    for d in depths {
        *counts.entry(d).or_insert(0usize) += 1;
    }
    counts.into_iter().rev().collect()
}
