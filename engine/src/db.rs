//! [`Db`]: the handle of an open database: the write path (append, upsert, delete), flush,
//! checkpoints, snapshots, statistics, checks and the background compactor. Opening is
//! `recovery`'s; compaction is `compaction`'s.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use arc_swap::ArcSwap;
use parking_lot::Mutex;

use crate::cache::DecodedCache;
use crate::catalog::quantize;
use crate::compaction::{self, CompactionStats};
use crate::entry::Ev;
use crate::error::{Error, Result};
use crate::inner::{next_instance, CompactorSignal, Inner};
use crate::records::{ItemRecord, Watermark};
use crate::recovery::{self, ROCKSDB_DIR, SEGMENTS_DIR};
use crate::segment::{create_dirs, segment_file_name, sync_dir};
use crate::snapshot::{ReadConfig, Snapshot};
use crate::state::{Pending, State, UserState};
use crate::store::{Batch, Cf};
use crate::types::{AppendOptions, AppendOutcome, Durability, Event, Item, Options};
use crate::watermark;

/// Longest append source name, in bytes.
pub const MAX_SOURCE_NAME: usize = 1024;

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
    /// Item codes: of short histories (the forward layout), and version 1's item columns.
    pub item: u64,
    pub action: u64,
    pub domain: u64,
    /// Per-user item dictionaries.
    pub dict: u64,
    /// SemID index: the position lists of long histories (the inverted layout, where they are
    /// the item column too), and version 1's prefix bitmaps.
    pub index: u64,
    /// Entry headers, page checksums and block indexes.
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
    /// Set when open found a torn or damaged record in RocksDB's write-ahead log (after a power
    /// cut, an unsynced write half on disk; or damage on the medium) and recovered to the point
    /// before it: writes from that record on were dropped. RocksDB's message.
    pub wal_damage: Option<String>,
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

impl Db {
    /// Open (or create) the database at `path`.
    pub fn open(path: impl AsRef<Path>, opts: Options) -> Result<Db> {
        opts.validate()?;
        let read = ReadConfig::new(&opts)?;
        let path = path.as_ref().to_path_buf();
        let recovered = recovery::recover(&path, &opts)?;
        let inner = Arc::new(Inner {
            instance: next_instance(),
            seg_dir: path.join(SEGMENTS_DIR),
            path,
            store: recovered.store,
            state: ArcSwap::from_pointee(recovered.state),
            writer: Mutex::new(recovered.sources),
            compaction: Mutex::new(()),
            cache: Arc::new(DecodedCache::new(opts.cache_bytes)),
            opts,
            read,
            compactor: CompactorSignal::default(),
            last_bg_error: Mutex::new(None),
            users_deleted: AtomicBool::new(false),
            compactions: AtomicU64::new(0),
            watermark: Mutex::new(recovered.watermark),
        });
        let bg = match inner.opts.auto_compact.as_ref().map(|ac| ac.interval) {
            Some(interval) => Some(spawn_compactor(&inner, interval)?),
            None => None,
        };
        Ok(Db { inner, bg })
    }

    /// The settings an existing database was created with, so that tools can open it without
    /// knowing them. The database must not be open elsewhere.
    pub fn created_with(path: impl AsRef<Path>) -> Result<CreatedWith> {
        let c = recovery::read_config(path.as_ref())?;
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
            self.inner.instance,
            self.inner.state.load_full(),
            self.inner.read,
            Arc::clone(&self.inner.cache),
        )
    }

    /// Append events (any number of users). On return the batch is stored with the requested
    /// durability, atomically: after a crash either the whole batch is there or none of it.
    pub fn append(&self, events: &[Event], opts: &AppendOptions) -> Result<AppendOutcome> {
        self.check_append(events, opts)?;
        let by_user = group_by_user(events);
        let inner = &self.inner;
        let mut sources = inner.writer.lock();
        if let Some(dup) = already_applied(&sources, opts) {
            return Ok(dup);
        }
        let st = inner.state.load_full();
        let seq = st.next_seq;
        let mut batch = Batch::default();
        for (user, evs) in &by_user {
            batch.put_pending(*user, seq, evs);
        }
        record_source(&mut batch, opts);
        inner.store.write(batch, opts.durability)?;

        let next = with_appended(&st, &by_user, seq);
        let pending_now = next.pending_events;
        inner.state.store(Arc::new(next));
        note_source(&mut sources, opts);
        drop(sources);
        if let Some(ac) = &inner.opts.auto_compact {
            if pending_now >= ac.pending_events {
                inner.compactor.kick();
            }
        }
        Ok(AppendOutcome::Applied {
            events: events.len(),
        })
    }

    fn check_append(&self, events: &[Event], opts: &AppendOptions) -> Result<()> {
        let max = self.inner.opts.max_batch_events;
        if events.len() > max {
            return Err(Error::invalid(format!(
                "batch of {} events exceeds max_batch_events = {max}",
                events.len(),
            )));
        }
        check_source_name(opts)
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
        batch.delete_source(source);
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
            batch.put_item(it.id, &rec);
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
        let mut next = (*st).clone();
        let mut batch = Batch::default();
        let deleted = without_users(&mut next, users, &mut batch);
        let applied = AppendOutcome::Applied { events: 0 };
        if deleted == 0 && opts.source.is_none() {
            return Ok((applied, 0));
        }
        if deleted > 0 {
            batch.put_manifest(&next.manifest());
        }
        record_source(&mut batch, opts);
        inner.store.write(batch, opts.durability)?;
        inner.state.store(Arc::new(next));
        note_source(&mut sources, opts);
        if deleted > 0 {
            inner.users_deleted.store(true, Ordering::Release);
        }
        Ok((applied, deleted))
    }

    /// Make every write so far durable, including `Unlogged` ones.
    pub fn flush(&self) -> Result<()> {
        self.inner.flush()
    }

    /// Fold pending events into new segment files, rewrite segments that hold deleted users or
    /// too much garbage, and rebuild prefix indexes whose SemIDs changed.
    pub fn compact(&self) -> Result<CompactionStats> {
        compaction::compact(&self.inner)
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
        let seg_dest = dest.join(SEGMENTS_DIR);
        create_dirs(&seg_dest)?;
        // The copy's watermark may only claim writes that are surely in RocksDB's checkpoint:
        // those committed before it starts. Read under the writer lock, after which no batch is
        // half-counted; writes that land during the checkpoint may be in the copy too, which a
        // lower watermark allows.
        let durable_writes = {
            let _w = inner.writer.lock();
            inner.store.writes()
        };
        inner.store.checkpoint(&dest.join(ROCKSDB_DIR))?;
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
        sync_dir(&seg_dest)?;
        watermark::write(
            dest,
            &Watermark {
                generation: st.generation,
                durable_writes,
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
                // Statistics only: a damaged entry counts as empty here; `verify` reports it.
                let s = e.segment.sizes(e.record).unwrap_or_default();
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
            wal_damage: store.wal_damage().map(str::to_string),
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

    /// What open found wrong in RocksDB's write-ahead log, if anything (see
    /// [`Stats::wal_damage`]); O(1), unlike [`Db::stats`].
    pub fn wal_damage(&self) -> Option<&str> {
        self.inner.store.wal_damage()
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
        let (records, problems) = self.inner.store.verify();
        report.records = records;
        report.problems.extend(problems);
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

/// Removes `users` from `next` and puts the deletion of their records into `batch`; returns how
/// many of them existed.
fn without_users(next: &mut State, users: &[u64], batch: &mut Batch) -> usize {
    let mut segments = (*next.segments).clone();
    let mut deleted = 0;
    for &user in users {
        let Some(us) = next.users.get(&user).cloned() else {
            continue;
        };
        deleted += 1;
        // Every segment that holds a copy of this user, live or superseded, must be rewritten.
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
        batch.delete_user(user);
    }
    if deleted > 0 {
        next.segments = Arc::new(segments);
    }
    deleted
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
        batch.put_source(name, *seq);
    }
}

/// After the batch is written: the in-memory copy of the source position.
fn note_source(sources: &mut HashMap<String, u64>, opts: &AppendOptions) {
    if let Some((name, seq)) = &opts.source {
        sources.insert(name.clone(), *seq);
    }
}

/// Group a batch by user, keeping each user's events in batch order.
fn group_by_user(events: &[Event]) -> BTreeMap<u64, Vec<Ev>> {
    let mut by_user: BTreeMap<u64, Vec<Ev>> = BTreeMap::new();
    for e in events {
        by_user.entry(e.user).or_default().push(Ev {
            ts: e.ts,
            item: e.item,
            action: e.action,
            domain: e.domain,
        });
    }
    by_user
}

/// `st` with the events of append `seq` pending.
fn with_appended(st: &State, by_user: &BTreeMap<u64, Vec<Ev>>, seq: u64) -> State {
    let mut next = st.clone();
    for (user, evs) in by_user {
        let us = match st.users.get(user) {
            Some(u) => UserState {
                entry: u.entry.clone(),
                pending: u.pending.with_appended(evs, seq),
                born: u.born,
            },
            None => UserState {
                entry: None,
                pending: Pending::default().with_appended(evs, seq),
                born: seq,
            },
        };
        next.users.insert(*user, Arc::new(us));
        next.pending_users.insert(*user);
    }
    next.pending_events += by_user.values().map(|evs| evs.len() as u64).sum::<u64>();
    next.next_seq = seq + 1;
    next
}

fn spawn_compactor(inner: &Arc<Inner>, interval: Duration) -> Result<JoinHandle<()>> {
    let inner_bg = Arc::clone(inner);
    std::thread::Builder::new()
        .name("siren-compactor".into())
        .spawn(move || background_compactor(&inner_bg, interval))
        // The thread could not be created (a process or memory limit); the database path is the
        // nearest thing this I/O error concerns.
        .map_err(|e| Error::io(&inner.path, e))
}

/// Compacts when an append pushes the pending count past the threshold (a kick), and on every
/// interval when anything is pending.
fn background_compactor(inner: &Inner, interval: Duration) {
    while inner.compactor.wait(interval) {
        if inner.state.load().pending_events == 0 {
            continue;
        }
        match compaction::compact(inner) {
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
            self.inner.compactor.stop();
            let _ = h.join();
        }
        // Leave no write-ahead log behind a clean close: its records are in SST files, which
        // RocksDB checks block by block.
        let _ = self.inner.flush();
    }
}
