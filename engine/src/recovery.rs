//! Recovery: rebuild the in-memory [`State`] of a database from its directory at open.
//!
//! Each step is a function of its own, run in this order by [`recover`]:
//! 1. open RocksDB (creating the directories of a new database) and read the WATERMARK;
//! 2. check the config (the options fixed at creation) and the compaction generation;
//! 3. read the manifest, delete segment files it does not list, open those it lists;
//! 4. load the catalog, the user locations, the pending records and the source positions;
//! 5. check RocksDB's write count against the WATERMARK and bring the WATERMARK up to date.
//!
//! Nothing before step 5 writes, except a new database's config and the deletion of leftover
//! segment files, so a crash during open leaves the same state for the next open.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::path::Path;
use std::sync::Arc;

use crate::catalog::Catalog;
use crate::error::{DecodeError, Error, Result};
use crate::records::{Config, Manifest, Watermark};
use crate::segment::{create_dirs, parse_segment_file_name, segment_file_name, Segment};
use crate::state::{EntryRef, Pending, SegState, State, UserState};
use crate::store::{Batch, Store};
use crate::types::{Durability, Options};
use crate::watermark;

/// The RocksDB directory inside a database directory.
pub(crate) const ROCKSDB_DIR: &str = "rocksdb";
/// The segment files' directory inside a database directory.
pub(crate) const SEGMENTS_DIR: &str = "segments";

/// What open found on disk.
pub(crate) struct Recovered {
    pub store: Store,
    pub state: State,
    /// Last applied sequence number of every append source.
    pub sources: HashMap<String, u64>,
    /// The watermark as it now stands in `<db>/WATERMARK`.
    pub watermark: Watermark,
}

/// Open the database at `path`, or create it if `opts.create_if_missing` allows.
pub(crate) fn recover(path: &Path, opts: &Options) -> Result<Recovered> {
    let seg_dir = path.join(SEGMENTS_DIR);
    let store = open_store(path, opts.create_if_missing)?;
    if let Some(damage) = store.wal_damage() {
        tracing::warn!(
            db = %path.display(),
            %damage,
            "RocksDB's write-ahead log had a torn or damaged record: recovered to the point \
             before it, dropping the writes from it on"
        );
    }
    let mark = watermark::read(path)?;
    check_config(&store, &config_of(opts), &seg_dir, mark.is_some())?;
    let generation = store.generation()?;
    check_generation(&store, generation, mark.as_ref())?;

    // Segment files: the manifest says which are live.
    let manifest = store.manifest()?.unwrap_or(Manifest {
        next_segment_id: 1,
        ..Manifest::default()
    });
    remove_unlisted_segment_files(&seg_dir, &manifest)?;
    let mut segments = open_segments(&seg_dir, &manifest)?;

    // Records.
    let catalog = load_catalog(&store, opts.embedding_dim as usize)?;
    let mut users = load_locations(&store, &mut segments)?;
    let pending = load_pending(&store, &mut users)?;
    let sources = load_sources(&store)?;

    // Watermark.
    check_durable_writes(&store, mark.as_ref())?;
    let watermark = record_generation(path, mark, generation)?;

    let state = State {
        users,
        pending_users: pending.users,
        pending_events: pending.events,
        catalog,
        segments: Arc::new(segments),
        next_segment_id: manifest.next_segment_id,
        compacted_seq: manifest.compacted_seq,
        next_seq: pending.max_seq.max(manifest.compacted_seq) + 1,
        generation,
    };
    Ok(Recovered {
        store,
        state,
        sources,
        watermark,
    })
}

/// The settings of the database at `path`, read without opening the rest of it.
pub(crate) fn read_config(path: &Path) -> Result<Config> {
    let rocks_dir = path.join(ROCKSDB_DIR);
    if !rocks_dir.exists() {
        return Err(Error::NotFound(path.to_path_buf()));
    }
    let store = Store::open(&rocks_dir)?;
    store
        .config()?
        .ok_or_else(|| store.corruption("config", DecodeError::corrupt("no config record")))
}

fn config_of(o: &Options) -> Config {
    Config {
        embedding_dim: o.embedding_dim,
        semid_levels: o.semid_levels,
        semid_codebook_size: o.semid_codebook_size,
    }
}

fn open_store(path: &Path, create_if_missing: bool) -> Result<Store> {
    let rocks_dir = path.join(ROCKSDB_DIR);
    if !rocks_dir.exists() {
        if !create_if_missing {
            return Err(Error::NotFound(path.to_path_buf()));
        }
        create_dirs(&rocks_dir)?;
    }
    create_dirs(&path.join(SEGMENTS_DIR))?;
    Store::open(&rocks_dir)
}

/// The stored config must match the options; a new database stores them.
fn check_config(store: &Store, want: &Config, seg_dir: &Path, has_watermark: bool) -> Result<()> {
    let Some(have) = store.config()? else {
        return create_config(store, want, seg_dir, has_watermark);
    };
    check_option("embedding_dim", have.embedding_dim, want.embedding_dim)?;
    check_option(
        "semid_levels",
        have.semid_levels.into(),
        want.semid_levels.into(),
    )?;
    check_option(
        "semid_codebook_size",
        have.semid_codebook_size,
        want.semid_codebook_size,
    )
}

fn check_option(field: &'static str, stored: u32, requested: u32) -> Result<()> {
    if stored == requested {
        return Ok(());
    }
    Err(Error::OptionsMismatch {
        field,
        stored: stored.to_string(),
        requested: requested.to_string(),
    })
}

/// A store without a config is a new database, unless files say otherwise: then RocksDB has lost
/// its records (a damaged or rolled-back MANIFEST), and opening it as new would delete every
/// segment file.
fn create_config(store: &Store, want: &Config, seg_dir: &Path, has_watermark: bool) -> Result<()> {
    let has_segments = fs::read_dir(seg_dir)
        .map_err(|e| Error::io(seg_dir, e))?
        .flatten()
        .any(|d| parse_segment_file_name(&d.file_name().to_string_lossy()).is_some());
    if has_watermark || has_segments {
        return Err(store.corruption(
            "config",
            DecodeError::corrupt(
                "RocksDB has no config record, but the database has segment files or a \
                 WATERMARK: its records were lost",
            ),
        ));
    }
    let mut b = Batch::default();
    b.put_config(want);
    b.put_generation(0);
    store.write(b, Durability::Sync)
}

/// RocksDB must hold at least the generation the WATERMARK last recorded.
fn check_generation(store: &Store, generation: u64, mark: Option<&Watermark>) -> Result<()> {
    match mark {
        Some(w) if generation < w.generation => Err(store.corruption(
            "generation",
            DecodeError::corrupt(format!(
                "RocksDB's records are at compaction generation {generation}, the WATERMARK at \
                 {}: RocksDB lost committed records",
                w.generation
            )),
        )),
        _ => Ok(()),
    }
}

/// Delete files in `segments/` the manifest does not list: leftovers of a compaction that crashed
/// before its commit (or after it, before deleting dead files).
fn remove_unlisted_segment_files(seg_dir: &Path, manifest: &Manifest) -> Result<()> {
    let listed: BTreeSet<u64> = manifest.segments.iter().map(|s| s.id).collect();
    for dent in fs::read_dir(seg_dir).map_err(|e| Error::io(seg_dir, e))? {
        let dent = dent.map_err(|e| Error::io(seg_dir, e))?;
        let name = dent.file_name().to_string_lossy().into_owned();
        let keep = parse_segment_file_name(&name).is_some_and(|id| listed.contains(&id));
        if !keep {
            fs::remove_file(dent.path()).map_err(|e| Error::io(dent.path(), e))?;
            failpoint!("recovery::between_deletions");
        }
    }
    Ok(())
}

/// Open every segment file the manifest lists; a missing file or one of the wrong length is
/// corruption.
fn open_segments(seg_dir: &Path, manifest: &Manifest) -> Result<BTreeMap<u64, SegState>> {
    let mut segments = BTreeMap::new();
    for s in &manifest.segments {
        let p = seg_dir.join(segment_file_name(s.id));
        if !p.exists() {
            return Err(
                DecodeError::corrupt("segment file listed in the manifest is missing")
                    .at(&p, "file"),
            );
        }
        let segment = Arc::new(Segment::open(&p, s.id)?);
        if segment.file_len() != s.file_len {
            return Err(DecodeError::corrupt(format!(
                "file is {} bytes, the manifest says {}",
                segment.file_len(),
                s.file_len
            ))
            .at(&p, "file"));
        }
        segments.insert(
            s.id,
            SegState {
                segment,
                needs_erase: s.needs_erase,
                live_users: 0,
                live_bytes: 0,
            },
        );
    }
    Ok(segments)
}

/// The item catalog. Its rows must be dense `0..n`.
fn load_catalog(store: &Store, dim: usize) -> Result<Catalog> {
    let mut recs = Vec::new();
    store.for_each_item(|id, rec| {
        recs.push((id, rec));
        Ok(())
    })?;
    recs.sort_by_key(|(_, r)| r.internal);
    let mut catalog = Catalog::new(dim);
    for (id, rec) in &recs {
        catalog
            .put(*id, rec)
            .map_err(|d| store.corruption(&format!("item {id}"), DecodeError::Corrupt(d)))?;
    }
    Ok(catalog)
}

/// Users with compacted entries. Each location must match its segment's directory; the
/// segments' live counts are summed on the way.
fn load_locations(
    store: &Store,
    segments: &mut BTreeMap<u64, SegState>,
) -> Result<imbl::HashMap<u64, Arc<UserState>>> {
    let mut users = imbl::HashMap::new();
    store.for_each_location(|user, loc| {
        let bad = |detail: String| {
            store.corruption(
                &format!("location of user {user}"),
                DecodeError::corrupt(detail),
            )
        };
        let Some(ss) = segments.get_mut(&loc.segment) else {
            return Err(bad(format!("segment {} is not live", loc.segment)));
        };
        let Some(record) = ss.segment.find(user) else {
            return Err(bad(format!(
                "segment {} has no entry for the user",
                loc.segment
            )));
        };
        let r = ss.segment.record(record);
        if (r.offset, r.len, r.n_events) != (loc.offset, loc.len, loc.n_events) {
            return Err(bad(
                "location disagrees with the segment directory".to_string()
            ));
        }
        ss.live_users += 1;
        ss.live_bytes += u64::from(r.len);
        let entry = EntryRef {
            segment: ss.segment.clone(),
            record,
        };
        users.insert(
            user,
            Arc::new(UserState {
                entry: Some(entry),
                pending: Pending::default(),
                born: 0,
            }),
        );
        Ok(())
    })?;
    Ok(users)
}

/// What the pending records add up to.
struct PendingTotals {
    users: imbl::OrdSet<u64>,
    events: u64,
    /// The highest append sequence number among them (0 if none).
    max_seq: u64,
}

/// Pending events, read in (user, sequence) order, so each user's come in arrival order.
fn load_pending(
    store: &Store,
    users: &mut imbl::HashMap<u64, Arc<UserState>>,
) -> Result<PendingTotals> {
    let mut totals = PendingTotals {
        users: imbl::OrdSet::new(),
        events: 0,
        max_seq: 0,
    };
    let mut current: Option<(u64, Pending)> = None;
    store.for_each_pending(|user, seq, evs| {
        totals.max_seq = totals.max_seq.max(seq);
        totals.events += evs.len() as u64;
        totals.users.insert(user);
        match &mut current {
            // Each record's events join the user's persistent vector: no copy of what came
            // before.
            Some((u, acc)) if *u == user => acc.append(&evs, seq),
            _ => {
                let next = (user, Pending::default().with_appended(&evs, seq));
                if let Some(done) = current.replace(next) {
                    set_pending(users, done);
                }
            }
        }
        Ok(())
    })?;
    if let Some(done) = current {
        set_pending(users, done);
    }
    Ok(totals)
}

fn set_pending(users: &mut imbl::HashMap<u64, Arc<UserState>>, (user, evs): (u64, Pending)) {
    let mut us = users
        .get(&user)
        .map(|u| (**u).clone())
        .unwrap_or(UserState {
            entry: None,
            pending: Pending::default(),
            born: 0,
        });
    us.pending = evs;
    users.insert(user, Arc::new(us));
}

fn load_sources(store: &Store) -> Result<HashMap<String, u64>> {
    let mut sources = HashMap::new();
    store.for_each_source(|name, last| {
        sources.insert(name, last);
        Ok(())
    })?;
    Ok(sources)
}

/// RocksDB must hold at least the writes the WATERMARK says were flushed.
fn check_durable_writes(store: &Store, mark: Option<&Watermark>) -> Result<()> {
    let durable = mark.map_or(0, |w| w.durable_writes);
    if store.writes() >= durable {
        return Ok(());
    }
    Err(store.corruption(
        "writes",
        DecodeError::corrupt(format!(
            "RocksDB holds {} write batches, but {durable} had been flushed: RocksDB lost \
             flushed records",
            store.writes(),
        )),
    ))
}

/// Bring the WATERMARK's generation up to RocksDB's: after a crash between a compaction's commit
/// and the file's update, or in a database made before the file existed.
fn record_generation(path: &Path, mark: Option<Watermark>, generation: u64) -> Result<Watermark> {
    match mark {
        Some(w) if w.generation == generation => Ok(w),
        _ => {
            let w = Watermark {
                generation,
                ..mark.unwrap_or_default()
            };
            watermark::write(path, &w)?;
            Ok(w)
        }
    }
}
