//! `siren import jsonl`: events and items as JSON lines into a database (created if missing),
//! in the same shapes as the HTTP API's `EventIn` and `ItemIn`. Items without a SemID get one
//! from `--codebook` when given. A bad line stops the import with its file and line number;
//! batches before it stay stored, so a rerun from that line (or an idempotent `--source`) resumes.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use siren_engine::{AppendOptions, Db, Durability, Event, Item, Options};
use siren_http::api::types::{semid, EventIn, ItemIn};
use siren_model::semid::Codebook;
use siren_serve::semids::assign_missing;
use siren_serve::DbShape;

#[derive(Args)]
pub struct JsonlArgs {
    /// Database directory (created if missing).
    #[arg(long)]
    db: PathBuf,
    /// Items, one JSON object per line: {"id", "category", "semid"?, "embedding"?}.
    #[arg(long)]
    items: Option<PathBuf>,
    /// Events, one JSON object per line: {"user", "ts", "item", "action"?, "domain"?}.
    #[arg(long)]
    events: Option<PathBuf>,
    /// Codebook that gives SemIDs to items that come without one.
    #[arg(long)]
    codebook: Option<PathBuf>,
    /// For a new database: embedding dimension, SemID levels and codes per level.
    #[arg(long, default_value_t = 64)]
    dim: u32,
    #[arg(long, default_value_t = 3)]
    levels: u8,
    #[arg(long, default_value_t = 256)]
    codebook_size: u32,
    /// Lines per write batch.
    #[arg(long, default_value_t = 100_000)]
    batch: usize,
}

type CliResult = Result<ExitCode, Box<dyn std::error::Error>>;

/// Visit each non-empty line of `path` parsed as `T`, in batches.
fn batches<T: serde::de::DeserializeOwned>(
    path: &Path,
    size: usize,
    mut f: impl FnMut(Vec<T>) -> Result<(), Box<dyn std::error::Error>>,
) -> Result<usize, Box<dyn std::error::Error>> {
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut batch = Vec::with_capacity(size.min(1 << 20));
    let mut n = 0;
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| format!("{}:{}: {e}", path.display(), i + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let v: T = serde_json::from_str(&line)
            .map_err(|e| format!("{}:{}: {e}", path.display(), i + 1))?;
        batch.push(v);
        n += 1;
        if batch.len() >= size.max(1) {
            f(std::mem::take(&mut batch))?;
        }
    }
    if !batch.is_empty() {
        f(batch)?;
    }
    Ok(n)
}

pub fn run(a: &JsonlArgs) -> CliResult {
    if a.items.is_none() && a.events.is_none() {
        return Err("give --items, --events or both".into());
    }
    let mut opts = Options {
        embedding_dim: a.dim,
        semid_levels: a.levels,
        semid_codebook_size: a.codebook_size,
        auto_compact: None,
        ..Options::default()
    };
    if a.db.join("rocksdb").exists() {
        opts = Db::created_with(&a.db)?.apply(opts);
    }
    let db = Db::open(&a.db, opts)?;
    let codebook = a.codebook.as_deref().map(Codebook::load).transpose()?;
    if let Some(cb) = &codebook {
        DbShape::of(&db).check_codebook(cb)?;
    }
    if let Some(p) = &a.items {
        let mut assigned = 0;
        let n = batches::<ItemIn>(p, a.batch, |batch| {
            let mut items = batch
                .into_iter()
                .map(|it| {
                    Ok(Item {
                        id: it.id,
                        category: it.category,
                        semid: it
                            .semid
                            .as_deref()
                            .map(semid)
                            .transpose()
                            .map_err(|e| e.message)?,
                        embedding: it.embedding,
                    })
                })
                .collect::<Result<Vec<_>, String>>()?;
            if let Some(cb) = &codebook {
                assigned += assign_missing(cb, &mut items);
            }
            db.upsert_items(&items, Durability::Buffered)?;
            Ok(())
        })?;
        println!("items: {n} stored ({assigned} SemIDs assigned from the codebook)");
    }
    if let Some(p) = &a.events {
        let opts = AppendOptions {
            durability: Durability::Buffered,
            source: None,
        };
        let n = batches::<EventIn>(p, a.batch, |batch| {
            let events: Vec<Event> = batch.into_iter().map(Event::from).collect();
            db.append(&events, &opts)?;
            Ok(())
        })?;
        println!("events: {n} stored");
    }
    db.flush()?;
    let c = db.compact()?;
    println!(
        "compacted {} users into {} segment file(s); the database is in {}",
        c.users_written,
        c.segments_written,
        a.db.display()
    );
    Ok(ExitCode::SUCCESS)
}
