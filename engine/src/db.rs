//! [`Db`]: opening and recovery, the write path, deletion, snapshots, statistics and checks.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use arc_swap::ArcSwap;
use parking_lot::{Condvar, Mutex};

use crate::cache::DecodedCache;
use crate::catalog::{quantize, Catalog};
use crate::entry::Ev;
use crate::error::{DecodeError, Error, Result};
use crate::prefix::PrefixLayout;
use crate::records::{self, Config, ItemRecord, Manifest};
use crate::segment::{parse_segment_file_name, segment_file_name, Segment};
use crate::snapshot::{ReadConfig, Snapshot};
use crate::state::{merge_pending, EntryRef, PendingEv, SegState, State, UserState};
use crate::store::{Batch, Cf, Store};
use crate::types::{AppendOptions, AppendOutcome, Durability, Event, Item, Options};

const CONFIG_KEY: &[u8] = b"config";
const MANIFEST_KEY: &[u8] = b"manifest";
pub(crate) const GENERATION_KEY: &[u8] = b"generation";
/// `<db>/WATERMARK`: what RocksDB is known to hold ([`records::Watermark`]), outside RocksDB.
pub(crate) const WATERMARK_FILE: &str = "WATERMARK";
const MAX_SOURCE_NAME: usize = 1024;

pub(crate) struct Inner {
    pub path: PathBuf,
    pub seg_dir: PathBuf,
    pub store: Store,
    pub state: ArcSwap<State>,
    /// Serialises writers (appends, upserts, deletes, compaction commits). Holds the last
    /// applied sequence number of every append source.
    pub writer: Mutex<HashMap<String, u64>>,
    /// One compaction at a time.
    pub compaction: Mutex<()>,
    pub opts: Options,
    pub read: ReadConfig,
    /// Decoded blocks and bitmaps shared by every snapshot.
    pub cache: Arc<DecodedCache>,
    bg: Mutex<BgSignal>,
    bg_cv: Condvar,
    pub last_bg_error: Mutex<Option<String>>,
    /// A user was deleted since the last compaction started.
    pub users_deleted: std::sync::atomic::AtomicBool,
    /// Compactions that changed something, since open.
    pub compactions: AtomicU64,
    /// The last watermark written to `<db>/WATERMARK`.
    pub watermark: Mutex<records::Watermark>,
}

#[derive(Default)]
struct BgSignal {
    stop: bool,
    kick: bool,
}

/// An open Siren database. Cheap to share across threads (`&Db` is `Sync`); writes are
/// serialised, reads never block and each sees a consistent [`Snapshot`].
pub struct Db {
    inner: Arc<Inner>,
    bg: Option<JoinHandle<()>>,
}

/// Bytes of live segment entries, by part.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ColumnBytes {
    pub time: u64,
    pub item: u64,
    pub action: u64,
    pub domain: u64,
    /// Per-user item dictionaries.
    pub dict: u64,
    /// SemID prefix directories and bitmaps.
    pub index: u64,
    /// Entry headers and block indexes.
    pub meta: u64,
}

impl ColumnBytes {
    pub fn total(&self) -> u64 {
        self.time + self.item + self.action + self.domain + self.dict + self.index + self.meta
    }
}

/// RocksDB's on-disk bytes (SST files) per column family.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RocksBytes {
    pub pending: u64,
    pub users: u64,
    pub items: u64,
    pub meta: u64,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    pub users: u64,
    /// Events stored (compacted and pending), before read-time retention.
    pub events: u64,
    pub pending_events: u64,
    /// Catalog rows, including stubs for items only seen in events.
    pub items: u64,
    pub segments: u64,
    pub segment_file_bytes: u64,
    pub live: ColumnBytes,
    /// Segment bytes no live user references (freed by later compactions).
    pub garbage_bytes: u64,
    pub rocksdb: RocksBytes,
    pub last_background_error: Option<String>,
    /// Compactions that changed something since the database was opened.
    pub compactions: u64,
}

/// Counts that cost O(1) to read, for frequent polling (metrics); [`Db::stats`] walks every
/// user.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub users: u64,
    pub pending_events: u64,
    pub items: u64,
    pub segments: u64,
    pub compactions: u64,
    /// Bytes held by the decoded cache ([`crate::Options::cache_bytes`]).
    pub cache_bytes: u64,
}

/// What [`Db::checkpoint`] copied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CheckpointStats {
    pub segments: u64,
    pub segment_bytes: u64,
}

/// What [`Db::verify`] found.
#[derive(Debug, Default)]
pub struct VerifyReport {
    pub segments: usize,
    pub entries: usize,
    pub records: usize,
    pub problems: Vec<Error>,
}

impl VerifyReport {
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// The settings fixed when a database was created (see [`Db::created_with`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CreatedWith {
    pub embedding_dim: u32,
    pub semid_levels: u8,
    pub semid_codebook_size: u32,
}

impl CreatedWith {
    /// `opts` with these settings.
    pub fn apply(&self, opts: Options) -> Options {
        Options {
            embedding_dim: self.embedding_dim,
            semid_levels: self.semid_levels,
            semid_codebook_size: self.semid_codebook_size,
            ..opts
        }
    }
}

fn config_of(o: &Options) -> Config {
    Config {
        embedding_dim: o.embedding_dim,
        semid_levels: o.semid_levels,
        semid_codebook_size: o.semid_codebook_size,
    }
}

impl Db {
    /// Open (or create) the database at `path`.
    pub fn open(path: impl AsRef<Path>, opts: Options) -> Result<Db> {
        opts.validate()?;
        let layout = PrefixLayout::new(opts.semid_levels, opts.semid_codebook_size);
        if !layout.fits() {
            return Err(Error::invalid(format!(
                "{} SemID levels of {} codes do not fit the 56-bit prefix key",
                opts.semid_levels, opts.semid_codebook_size
            )));
        }
        let path = path.as_ref().to_path_buf();
        let rocks_dir = path.join("rocksdb");
        let seg_dir = path.join("segments");
        if !rocks_dir.exists() {
            if !opts.create_if_missing {
                return Err(Error::NotFound(path));
            }
            fs::create_dir_all(&rocks_dir).map_err(|e| Error::io(&rocks_dir, e))?;
        }
        fs::create_dir_all(&seg_dir).map_err(|e| Error::io(&seg_dir, e))?;
        let store = Store::open(&rocks_dir)?;
        let corrupt = |block: &str, e: DecodeError| e.at(&rocks_dir, block);
        let mark_path = path.join(WATERMARK_FILE);
        let watermark = match fs::read(&mark_path) {
            Ok(b) => Some(records::decode_watermark(&b).map_err(|e| e.at(&mark_path, "file"))?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::io(&mark_path, e)),
        };

        // Config: fixed at creation.
        let want = config_of(&opts);
        match store.get(Cf::Meta, CONFIG_KEY)? {
            Some(b) => {
                let have = records::decode_config(&b).map_err(|e| corrupt("config", e))?;
                let check = |field, a: u32, b: u32| {
                    if a != b {
                        Err(Error::OptionsMismatch {
                            field,
                            stored: a.to_string(),
                            requested: b.to_string(),
                        })
                    } else {
                        Ok(())
                    }
                };
                check("embedding_dim", have.embedding_dim, want.embedding_dim)?;
                check(
                    "semid_levels",
                    have.semid_levels.into(),
                    want.semid_levels.into(),
                )?;
                check(
                    "semid_codebook_size",
                    have.semid_codebook_size,
                    want.semid_codebook_size,
                )?;
            }
            None => {
                // A new database, unless files say otherwise: then RocksDB has lost its records
                // (a damaged or rolled-back MANIFEST), and opening it as new would delete every
                // segment file.
                let has_segments = fs::read_dir(&seg_dir)
                    .map_err(|e| Error::io(&seg_dir, e))?
                    .flatten()
                    .any(|d| parse_segment_file_name(&d.file_name().to_string_lossy()).is_some());
                if watermark.is_some() || has_segments {
                    return Err(corrupt(
                        "config",
                        DecodeError::corrupt(
                            "RocksDB has no config record, but the database has segment files or \
                             a WATERMARK: its records were lost",
                        ),
                    ));
                }
                let mut b = Batch::default();
                b.put(Cf::Meta, CONFIG_KEY, records::encode_config(&want));
                b.put(Cf::Meta, GENERATION_KEY, records::encode_generation(0));
                store.write(b, Durability::Sync)?;
            }
        }
        let generation = match store.get(Cf::Meta, GENERATION_KEY)? {
            Some(b) => records::decode_generation(&b).map_err(|e| corrupt("generation", e))?,
            None => 0,
        };
        if let Some(w) = watermark.filter(|w| generation < w.generation) {
            return Err(corrupt(
                "generation",
                DecodeError::corrupt(format!(
                    "RocksDB's records are at compaction generation {generation}, the WATERMARK \
                     at {}: RocksDB lost committed records",
                    w.generation
                )),
            ));
        }

        // Manifest and segment files. Files the manifest does not list are leftovers of a
        // compaction that crashed before its commit (or after it, before deleting them).
        let manifest = match store.get(Cf::Meta, MANIFEST_KEY)? {
            Some(b) => records::decode_manifest(&b).map_err(|e| corrupt("manifest", e))?,
            None => Manifest {
                next_segment_id: 1,
                ..Manifest::default()
            },
        };
        let listed: BTreeMap<u64, bool> = manifest
            .segments
            .iter()
            .map(|s| (s.id, s.needs_erase))
            .collect();
        for dent in fs::read_dir(&seg_dir).map_err(|e| Error::io(&seg_dir, e))? {
            let dent = dent.map_err(|e| Error::io(&seg_dir, e))?;
            let name = dent.file_name().to_string_lossy().into_owned();
            let keep = parse_segment_file_name(&name).is_some_and(|id| listed.contains_key(&id));
            if !keep {
                fs::remove_file(dent.path()).map_err(|e| Error::io(dent.path(), e))?;
            }
        }
        let mut segments = BTreeMap::new();
        for s in &manifest.segments {
            let p = seg_dir.join(segment_file_name(s.id));
            if !p.exists() {
                return Err(
                    DecodeError::corrupt("segment file listed in the manifest is missing")
                        .at(&p, "file"),
                );
            }
            let seg = Arc::new(Segment::open(&p, s.id)?);
            if seg.file_len() != s.file_len {
                return Err(DecodeError::corrupt(format!(
                    "file is {} bytes, the manifest says {}",
                    seg.file_len(),
                    s.file_len
                ))
                .at(&p, "file"));
            }
            segments.insert(
                s.id,
                SegState {
                    segment: seg,
                    needs_erase: s.needs_erase,
                    live_users: 0,
                    live_bytes: 0,
                },
            );
        }

        // Catalog: rows must be dense 0..n.
        let mut recs: Vec<(u64, ItemRecord)> = Vec::new();
        store.scan(Cf::Items, |k, v| {
            let id = records::parse_u64_key(k, "item").map_err(|e| corrupt("items", e))?;
            let rec = records::decode_item(v).map_err(|e| corrupt(&format!("item {id}"), e))?;
            recs.push((id, rec));
            Ok(())
        })?;
        recs.sort_by_key(|(_, r)| r.internal);
        let mut catalog = Catalog::new(opts.embedding_dim as usize);
        for (id, rec) in &recs {
            catalog
                .put(*id, rec)
                .map_err(|d| corrupt(&format!("item {id}"), DecodeError::Corrupt(d)))?;
        }

        // Users with compacted entries.
        let mut users: imbl::HashMap<u64, Arc<UserState>> = imbl::HashMap::new();
        store.scan(Cf::Users, |k, v| {
            let user = records::parse_u64_key(k, "user").map_err(|e| corrupt("users", e))?;
            let block = format!("location of user {user}");
            let loc = records::decode_location(v).map_err(|e| corrupt(&block, e))?;
            let Some(ss) = segments.get_mut(&loc.segment) else {
                return Err(corrupt(
                    &block,
                    DecodeError::corrupt(format!("segment {} is not live", loc.segment)),
                ));
            };
            let Some(record) = ss.segment.find(user) else {
                return Err(corrupt(
                    &block,
                    DecodeError::corrupt(format!(
                        "segment {} has no entry for the user",
                        loc.segment
                    )),
                ));
            };
            let r = ss.segment.record(record);
            if (r.offset, r.len, r.n_events) != (loc.offset, loc.len, loc.n_events) {
                return Err(corrupt(
                    &block,
                    DecodeError::corrupt("location disagrees with the segment directory"),
                ));
            }
            ss.live_users += 1;
            ss.live_bytes += u64::from(r.len);
            users.insert(
                user,
                Arc::new(UserState {
                    entry: Some(EntryRef {
                        segment: ss.segment.clone(),
                        record,
                    }),
                    pending: Arc::new([]),
                    born: 0,
                }),
            );
            Ok(())
        })?;

        // Pending events, in (user, sequence) order: arrival order per user.
        let mut max_seq = manifest.compacted_seq;
        let mut pending_users = imbl::OrdSet::new();
        let mut pending_events = 0u64;
        let mut cur: Option<(u64, Vec<PendingEv>)> = None;
        let flush_user = |users: &mut imbl::HashMap<u64, Arc<UserState>>,
                          (user, evs): (u64, Vec<PendingEv>)| {
            let mut us = users
                .get(&user)
                .map(|u| (**u).clone())
                .unwrap_or(UserState {
                    entry: None,
                    pending: Arc::new([]),
                    born: 0,
                });
            us.pending = evs.into();
            users.insert(user, Arc::new(us));
        };
        store.scan(Cf::Pending, |k, v| {
            let (user, seq) = records::parse_pending_key(k).map_err(|e| corrupt("pending", e))?;
            let evs = records::decode_pending(v)
                .map_err(|e| corrupt(&format!("pending record user={user} seq={seq}"), e))?;
            max_seq = max_seq.max(seq);
            pending_events += evs.len() as u64;
            pending_users.insert(user);
            match &mut cur {
                Some((u, acc)) if *u == user => {
                    *acc = merge_pending(acc, &evs, seq).to_vec();
                }
                _ => {
                    if let Some(done) = cur.take() {
                        flush_user(&mut users, done);
                    }
                    cur = Some((user, merge_pending(&[], &evs, seq).to_vec()));
                }
            }
            Ok(())
        })?;
        if let Some(done) = cur.take() {
            flush_user(&mut users, done);
        }

        let mut sources = HashMap::new();
        store.scan(Cf::Sources, |k, v| {
            let name = String::from_utf8_lossy(k).into_owned();
            let last =
                records::decode_source(v).map_err(|e| corrupt(&format!("source {name}"), e))?;
            sources.insert(name, last);
            Ok(())
        })?;

        let mut mark = watermark.unwrap_or_default();
        if store.writes() < mark.durable_writes {
            return Err(corrupt(
                "writes",
                DecodeError::corrupt(format!(
                    "RocksDB holds {} write batches, but {} had been flushed: RocksDB lost \
                     flushed records",
                    store.writes(),
                    mark.durable_writes
                )),
            ));
        }
        if watermark.is_none() || mark.generation != generation {
            // A crash between a compaction's commit and the file's update, or a database made
            // before the file existed.
            mark.generation = generation;
            write_watermark(&path, &mark)?;
        }
        let state = State {
            users,
            pending_users,
            pending_events,
            catalog,
            segments: Arc::new(segments),
            next_segment_id: manifest.next_segment_id,
            compacted_seq: manifest.compacted_seq,
            next_seq: max_seq + 1,
            generation,
        };
        let read = ReadConfig::of(&opts);
        let inner = Arc::new(Inner {
            path,
            seg_dir,
            store,
            state: ArcSwap::from_pointee(state),
            writer: Mutex::new(sources),
            compaction: Mutex::new(()),
            cache: Arc::new(DecodedCache::new(opts.cache_bytes)),
            opts,
            read,
            bg: Mutex::new(BgSignal::default()),
            bg_cv: Condvar::new(),
            last_bg_error: Mutex::new(None),
            users_deleted: std::sync::atomic::AtomicBool::new(false),
            compactions: AtomicU64::new(0),
            watermark: Mutex::new(mark),
        });
        let bg = inner.opts.auto_compact.clone().map(|ac| {
            let inner = inner.clone();
            std::thread::Builder::new()
                .name("siren-compactor".into())
                .spawn(move || background_compactor(inner, ac.interval))
                .expect("spawning the compaction thread")
        });
        Ok(Db { inner, bg })
    }

    /// The settings an existing database was created with, so that tools can open it without
    /// knowing them. The database must not be open elsewhere.
    pub fn created_with(path: impl AsRef<Path>) -> Result<CreatedWith> {
        let rocks_dir = path.as_ref().join("rocksdb");
        if !rocks_dir.exists() {
            return Err(Error::NotFound(path.as_ref().to_path_buf()));
        }
        let store = Store::open(&rocks_dir)?;
        let Some(b) = store.get(Cf::Meta, CONFIG_KEY)? else {
            return Err(DecodeError::corrupt("no config record").at(&rocks_dir, "config"));
        };
        let c = records::decode_config(&b).map_err(|e| e.at(&rocks_dir, "config"))?;
        Ok(CreatedWith {
            embedding_dim: c.embedding_dim,
            semid_levels: c.semid_levels,
            semid_codebook_size: c.semid_codebook_size,
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    pub fn options(&self) -> &Options {
        &self.inner.opts
    }

    /// A consistent read view of the whole database at this moment.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot::new(
            self.inner.state.load_full(),
            self.inner.read,
            Arc::clone(&self.inner.cache),
        )
    }

    /// Append events (any number of users). On return the batch is stored with the requested
    /// durability, atomically: after a crash either the whole batch is there or none of it.
    pub fn append(&self, events: &[Event], opts: &AppendOptions) -> Result<AppendOutcome> {
        if events.len() > self.inner.opts.max_batch_events {
            return Err(Error::invalid(format!(
                "batch of {} events exceeds max_batch_events = {}",
                events.len(),
                self.inner.opts.max_batch_events
            )));
        }
        check_source_name(opts)?;
        let mut by_user: BTreeMap<u64, Vec<Ev>> = BTreeMap::new();
        for e in events {
            by_user.entry(e.user).or_default().push(Ev {
                ts: e.ts,
                item: e.item,
                action: e.action,
                domain: e.domain,
            });
        }
        let inner = &self.inner;
        let mut sources = inner.writer.lock();
        if let Some(dup) = already_applied(&sources, opts) {
            return Ok(dup);
        }
        let st = inner.state.load_full();
        let seq = st.next_seq;
        let mut batch = Batch::default();
        for (user, evs) in &by_user {
            batch.put(
                Cf::Pending,
                records::pending_key(*user, seq),
                records::encode_pending(evs),
            );
        }
        record_source(&mut batch, opts);
        inner.store.write(batch, opts.durability)?;

        let mut next = (*st).clone();
        for (user, evs) in &by_user {
            let us = match st.users.get(user) {
                Some(u) => UserState {
                    entry: u.entry.clone(),
                    pending: merge_pending(&u.pending, evs, seq),
                    born: u.born,
                },
                None => UserState {
                    entry: None,
                    pending: merge_pending(&[], evs, seq),
                    born: seq,
                },
            };
            next.users.insert(*user, Arc::new(us));
            next.pending_users.insert(*user);
        }
        next.pending_events += events.len() as u64;
        next.next_seq = seq + 1;
        let pending_now = next.pending_events;
        inner.state.store(Arc::new(next));
        note_source(&mut sources, opts);
        drop(sources);
        if let Some(ac) = &inner.opts.auto_compact {
            if pending_now >= ac.pending_events {
                inner.kick_background();
            }
        }
        Ok(AppendOutcome::Applied {
            events: events.len(),
        })
    }

    /// Last applied sequence number of an append source.
    pub fn source_position(&self, source: &str) -> Option<u64> {
        self.inner.writer.lock().get(source).copied()
    }

    /// Every source and its last applied sequence number, sorted by name.
    pub fn sources(&self) -> Vec<(String, u64)> {
        let mut all: Vec<(String, u64)> = self
            .inner
            .writer
            .lock()
            .iter()
            .map(|(name, seq)| (name.clone(), *seq))
            .collect();
        all.sort_unstable();
        all
    }

    /// Forget a source's position, so that its next write is applied whatever its sequence
    /// number (for a log that is consumed again from its start, or from a copy of another
    /// database). Returns whether the source was known. Changes no events.
    pub fn remove_source(&self, source: &str, durability: Durability) -> Result<bool> {
        let mut sources = self.inner.writer.lock();
        if !sources.contains_key(source) {
            return Ok(false);
        }
        let mut batch = Batch::default();
        batch.delete(Cf::Sources, source.as_bytes().to_vec());
        self.inner.store.write(batch, durability)?;
        sources.remove(source);
        Ok(true)
    }

    /// Insert or replace catalog items. Within one call a later item with the same id wins.
    pub fn upsert_items(&self, items: &[Item], durability: Durability) -> Result<()> {
        let opts = AppendOptions {
            durability,
            source: None,
        };
        self.upsert_items_from(items, &opts).map(drop)
    }

    /// [`Db::upsert_items`] with a `(source, seq)` for exactly-once application, as for appends:
    /// a batch whose number is at or below the source's last applied one changes nothing and
    /// returns `Duplicate`. The source's new number is stored in the same atomic batch.
    /// `Applied { events }` is 0: an upsert appends no events.
    pub fn upsert_items_from(&self, items: &[Item], opts: &AppendOptions) -> Result<AppendOutcome> {
        check_source_name(opts)?;
        let inner = &self.inner;
        for it in items {
            inner.read.check_item(it)?;
        }
        let mut sources = inner.writer.lock();
        if let Some(dup) = already_applied(&sources, opts) {
            return Ok(dup);
        }
        let st = inner.state.load_full();
        let mut catalog = st.catalog.clone();
        let bumped = catalog.semid_gen() + 1;
        let mut batch = Batch::default();
        for it in items {
            let existing = catalog.lookup(it.id);
            let semid_gen = match existing {
                Some(row) if catalog.semid(row) != it.semid => bumped,
                Some(row) => catalog.semid_changed_gen(row),
                None => 0,
            };
            let rec = ItemRecord {
                internal: existing.unwrap_or(catalog.next_internal()),
                category: it.category,
                semid: it.semid,
                semid_gen,
                embedding: it.embedding.as_deref().map(quantize),
                stub: false,
            };
            catalog.put(it.id, &rec).map_err(Error::invalid)?;
            batch.put(Cf::Items, it.id.to_be_bytes(), records::encode_item(&rec));
        }
        record_source(&mut batch, opts);
        inner.store.write(batch, opts.durability)?;
        let mut next = (*st).clone();
        next.catalog = catalog;
        inner.state.store(Arc::new(next));
        note_source(&mut sources, opts);
        Ok(AppendOutcome::Applied { events: 0 })
    }

    /// Delete a user. Reads stop seeing it at once; its bytes leave the segment files at the next
    /// compaction and RocksDB's files when that compaction compacts RocksDB's ranges.
    /// Returns whether the user existed.
    pub fn delete_user(&self, user: u64, durability: Durability) -> Result<bool> {
        let opts = AppendOptions {
            durability,
            source: None,
        };
        Ok(self.delete_users_counted(&[user], &opts)?.1 > 0)
    }

    /// Delete users, atomically, as [`Db::delete_user`] does one; users that do not exist are
    /// skipped. With a `(source, seq)`, a batch already applied changes nothing and returns
    /// `Duplicate`, and the source's new number is stored in the same atomic batch, so that a
    /// log of appends and deletes is applied exactly once and in order. `Applied { events }` is
    /// 0: a delete appends no events.
    pub fn delete_users(&self, users: &[u64], opts: &AppendOptions) -> Result<AppendOutcome> {
        Ok(self.delete_users_counted(users, opts)?.0)
    }

    /// [`Db::delete_users`], and how many of the users existed.
    fn delete_users_counted(
        &self,
        users: &[u64],
        opts: &AppendOptions,
    ) -> Result<(AppendOutcome, usize)> {
        check_source_name(opts)?;
        let inner = &self.inner;
        let mut sources = inner.writer.lock();
        if let Some(dup) = already_applied(&sources, opts) {
            return Ok((dup, 0));
        }
        let st = inner.state.load_full();
        let mut segments = (*st.segments).clone();
        let mut next = (*st).clone();
        let mut batch = Batch::default();
        let mut deleted = 0;
        for &user in users {
            let Some(us) = next.users.get(&user).cloned() else {
                continue;
            };
            deleted += 1;
            // Every segment that holds a copy of this user, live or superseded, must be
            // rewritten.
            for ss in segments.values_mut() {
                if ss.segment.find(user).is_some() {
                    ss.needs_erase = true;
                }
            }
            if let Some(e) = &us.entry {
                let ss = segments
                    .get_mut(&e.segment.id)
                    .expect("live entry in a live segment");
                ss.live_users -= 1;
                ss.live_bytes -= u64::from(e.segment.record(e.record).len);
            }
            next.users.remove(&user);
            next.pending_users.remove(&user);
            next.pending_events -= us.pending.len() as u64;
            batch.delete_range(
                Cf::Pending,
                records::pending_key(user, 0).to_vec(),
                records::pending_key(user, u64::MAX).to_vec(),
            );
            batch.delete(Cf::Pending, records::pending_key(user, u64::MAX).to_vec());
            batch.delete(Cf::Users, records::user_key(user).to_vec());
        }
        let applied = AppendOutcome::Applied { events: 0 };
        if deleted == 0 && opts.source.is_none() {
            return Ok((applied, 0));
        }
        if deleted > 0 {
            next.segments = Arc::new(segments);
            batch.put(
                Cf::Meta,
                MANIFEST_KEY,
                records::encode_manifest(&next.manifest()),
            );
        }
        record_source(&mut batch, opts);
        inner.store.write(batch, opts.durability)?;
        inner.state.store(Arc::new(next));
        note_source(&mut sources, opts);
        if deleted > 0 {
            inner
                .users_deleted
                .store(true, std::sync::atomic::Ordering::Release);
        }
        Ok((applied, deleted))
    }

    /// Make every write so far durable, including `Unlogged` ones.
    pub fn flush(&self) -> Result<()> {
        self.inner.flush()
    }

    /// Fold pending events into new segment files, rewrite segments that hold deleted users or
    /// too much garbage, and rebuild prefix indexes whose SemIDs changed.
    pub fn compact(&self) -> Result<crate::compaction::CompactionStats> {
        self.inner.compact()
    }

    /// A consistent copy of the database in the new directory `dest`, which [`Db::open`] opens
    /// like the original. It holds every write acknowledged before the call (`Unlogged` ones
    /// included). Segment files are immutable, so they are hard-linked when `dest` is on the
    /// same file system (costing no space until the original rewrites them) and copied
    /// otherwise; RocksDB's files likewise. Writers and readers go on meanwhile; compaction
    /// waits until the copy is complete.
    pub fn checkpoint(&self, dest: impl AsRef<Path>) -> Result<CheckpointStats> {
        let dest = dest.as_ref();
        if dest.exists() {
            return Err(Error::invalid(format!(
                "checkpoint destination {} already exists",
                dest.display()
            )));
        }
        let inner = &self.inner;
        // No compaction may add or remove segment files until they are all linked, so the
        // manifest in the RocksDB checkpoint names exactly the files copied below.
        let _one = inner.compaction.lock();
        let st = inner.state.load_full();
        let segments = st.segments.clone();
        let seg_dest = dest.join("segments");
        fs::create_dir_all(&seg_dest).map_err(|e| Error::io(&seg_dest, e))?;
        inner.store.checkpoint(&dest.join("rocksdb"))?;
        let mut stats = CheckpointStats::default();
        for ss in segments.values() {
            let name = segment_file_name(ss.segment.id);
            let (from, to) = (inner.seg_dir.join(&name), seg_dest.join(&name));
            if fs::hard_link(&from, &to).is_err() {
                fs::copy(&from, &to).map_err(|e| Error::io(&to, e))?;
                fs::File::open(&to)
                    .and_then(|f| f.sync_all())
                    .map_err(|e| Error::io(&to, e))?;
            }
            stats.segments += 1;
            stats.segment_bytes += ss.segment.file_len();
        }
        crate::segment::sync_dir(&seg_dest)?;
        write_watermark(
            dest,
            &records::Watermark {
                generation: st.generation,
                durable_writes: inner.store.writes(),
            },
        )?;
        Ok(stats)
    }

    pub fn stats(&self) -> Stats {
        let st = self.inner.state.load_full();
        let mut live = ColumnBytes::default();
        let mut events = st.pending_events;
        for us in st.users.values() {
            if let Some(e) = &us.entry {
                let r = e.segment.record(e.record);
                events += u64::from(r.n_events);
                let s = r.sizes;
                live.time += u64::from(s.time);
                live.item += u64::from(s.item);
                live.action += u64::from(s.action);
                live.domain += u64::from(s.domain);
                live.dict += u64::from(s.dict);
                live.index += u64::from(s.index);
                live.meta += u64::from(s.meta);
            }
        }
        let segment_file_bytes: u64 = st.segments.values().map(|s| s.segment.file_len()).sum();
        let entry_bytes: u64 = st.segments.values().map(|s| s.entry_bytes()).sum();
        let store = &self.inner.store;
        Stats {
            users: st.users.len() as u64,
            events,
            pending_events: st.pending_events,
            items: u64::from(st.catalog.len()),
            segments: st.segments.len() as u64,
            segment_file_bytes,
            live,
            garbage_bytes: entry_bytes.saturating_sub(live.total()),
            rocksdb: RocksBytes {
                pending: store.sst_bytes(Cf::Pending),
                users: store.sst_bytes(Cf::Users),
                items: store.sst_bytes(Cf::Items),
                meta: store.sst_bytes(Cf::Meta),
            },
            last_background_error: self.inner.last_bg_error.lock().clone(),
            compactions: self.inner.compactions.load(Ordering::Relaxed),
        }
    }

    pub fn counters(&self) -> Counters {
        let st = self.inner.state.load();
        Counters {
            users: st.users.len() as u64,
            pending_events: st.pending_events,
            items: u64::from(st.catalog.len()),
            segments: st.segments.len() as u64,
            compactions: self.inner.compactions.load(Ordering::Relaxed),
            cache_bytes: self.inner.cache.bytes() as u64,
        }
    }

    /// Check every checksum of every segment file and every record Siren keeps in RocksDB.
    pub fn verify(&self) -> VerifyReport {
        let st = self.inner.state.load_full();
        let mut report = VerifyReport::default();
        for ss in st.segments.values() {
            report.segments += 1;
            report.entries += ss.segment.len();
            report.problems.extend(ss.segment.verify());
        }
        let rocks = self.inner.store.path().to_path_buf();
        let store = &self.inner.store;
        for cf in crate::store::Cf::ALL {
            let mut problems = Vec::new();
            let res = store.scan(cf, |k, v| {
                report.records += 1;
                let res = match cf {
                    Cf::Meta if k == CONFIG_KEY => records::decode_config(v).map(drop),
                    Cf::Meta if k == MANIFEST_KEY => records::decode_manifest(v).map(drop),
                    Cf::Meta if k == GENERATION_KEY => records::decode_generation(v).map(drop),
                    Cf::Meta if k == crate::store::WRITES_KEY => {
                        records::decode_writes(v).map(drop)
                    }
                    Cf::Meta => Err(DecodeError::corrupt("unknown meta key")),
                    Cf::Pending => records::parse_pending_key(k)
                        .and_then(|_| records::decode_pending(v).map(drop)),
                    Cf::Users => records::parse_u64_key(k, "user")
                        .and_then(|_| records::decode_location(v).map(drop)),
                    Cf::Items => records::parse_u64_key(k, "item")
                        .and_then(|_| records::decode_item(v).map(drop)),
                    Cf::Sources => records::decode_source(v).map(drop),
                };
                if let Err(e) = res {
                    problems.push(e.at(&rocks, format!("{} record {:02x?}", cf.name(), k)));
                }
                Ok(())
            });
            report.problems.extend(problems);
            if let Err(e) = res {
                report.problems.push(e);
            }
        }
        report
    }

    /// Total segment and RocksDB bytes on disk under the database directory.
    pub fn disk_bytes(&self) -> u64 {
        fn walk(p: &Path) -> u64 {
            let Ok(rd) = fs::read_dir(p) else { return 0 };
            rd.flatten()
                .map(|d| match d.metadata() {
                    Ok(m) if m.is_dir() => walk(&d.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        }
        walk(&self.inner.path)
    }
}

/// Replace `<db>/WATERMARK` atomically and durably.
pub(crate) fn write_watermark(db: &Path, w: &records::Watermark) -> Result<()> {
    let tmp = db.join(format!("{WATERMARK_FILE}.tmp"));
    let dest = db.join(WATERMARK_FILE);
    let io = |p: &Path, e| Error::io(p, e);
    let f = fs::File::create(&tmp).map_err(|e| io(&tmp, e))?;
    std::io::Write::write_all(&mut &f, &records::encode_watermark(w)).map_err(|e| io(&tmp, e))?;
    f.sync_all().map_err(|e| io(&tmp, e))?;
    fs::rename(&tmp, &dest).map_err(|e| io(&dest, e))?;
    crate::segment::sync_dir(db)
}

fn check_source_name(opts: &AppendOptions) -> Result<()> {
    match &opts.source {
        Some((name, _)) if name.is_empty() || name.len() > MAX_SOURCE_NAME => Err(Error::invalid(
            format!("source name must be 1 to {MAX_SOURCE_NAME} bytes"),
        )),
        _ => Ok(()),
    }
}

/// Under the writer lock: `Duplicate` if the write's `(source, seq)` is at or below the source's
/// last applied number.
fn already_applied(sources: &HashMap<String, u64>, opts: &AppendOptions) -> Option<AppendOutcome> {
    let (name, seq) = opts.source.as_ref()?;
    let last = *sources.get(name)?;
    (*seq <= last).then_some(AppendOutcome::Duplicate { last_applied: last })
}

/// Puts the write's source position into its batch, so both are applied atomically.
fn record_source(batch: &mut Batch, opts: &AppendOptions) {
    if let Some((name, seq)) = &opts.source {
        batch.put(Cf::Sources, name.as_bytes(), records::encode_source(*seq));
    }
}

/// After the batch is written: the in-memory copy of the source position.
fn note_source(sources: &mut HashMap<String, u64>, opts: &AppendOptions) {
    if let Some((name, seq)) = &opts.source {
        sources.insert(name.clone(), *seq);
    }
}

impl Inner {
    /// Flush RocksDB, then raise the watermark to every write so far. The writer lock keeps
    /// writes out between reading the count and the flush.
    pub fn flush(&self) -> Result<()> {
        let _w = self.writer.lock();
        let writes = self.store.writes();
        self.store.flush()?;
        let mut mark = self.watermark.lock();
        if mark.durable_writes < writes {
            mark.durable_writes = writes;
            write_watermark(&self.path, &mark)?;
        }
        Ok(())
    }

    /// After a compaction commit that changed the segment files.
    pub fn raise_generation(&self, generation: u64) -> Result<()> {
        let mut mark = self.watermark.lock();
        mark.generation = mark.generation.max(generation);
        write_watermark(&self.path, &mark)
    }

    fn compact(&self) -> Result<crate::compaction::CompactionStats> {
        let stats = crate::compaction::compact(self)?;
        if stats.users_written > 0 || stats.segments_removed > 0 {
            self.compactions.fetch_add(1, Ordering::Relaxed);
        }
        Ok(stats)
    }

    fn kick_background(&self) {
        self.bg.lock().kick = true;
        self.bg_cv.notify_one();
    }
}

/// Compacts when an append pushes the pending count past the threshold (a kick), and on every
/// interval when anything is pending.
fn background_compactor(inner: Arc<Inner>, interval: Duration) {
    loop {
        let mut sig = inner.bg.lock();
        if !sig.stop && !sig.kick {
            inner.bg_cv.wait_for(&mut sig, interval);
        }
        if sig.stop {
            return;
        }
        sig.kick = false;
        drop(sig);
        let pending = inner.state.load().pending_events;
        if pending == 0 {
            continue;
        }
        match inner.compact() {
            Ok(_) => *inner.last_bg_error.lock() = None,
            Err(e) => {
                tracing::error!(error = %e, "background compaction failed");
                *inner.last_bg_error.lock() = Some(e.to_string());
            }
        }
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        if let Some(h) = self.bg.take() {
            self.inner.bg.lock().stop = true;
            self.inner.bg_cv.notify_one();
            let _ = h.join();
        }
        // Leave no write-ahead log behind a clean close: its records are in SST files, which
        // RocksDB checks block by block.
        let _ = self.inner.flush();
    }
}
