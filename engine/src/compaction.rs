//! Compaction: fold pending events into new segment files and free old ones.
//!
//! 1. Under the writer lock, give every item seen only in pending events a stub catalog row, so
//!    that every dictionary entry has an internal number, and take the snapshot to compact.
//! 2. Without locks, from a snapshot: rewrite each chosen user's whole retained sequence (entry +
//!    pending) into new segment files, fsync them and rename them into place.
//! 3. Under the writer lock, one synced RocksDB batch: the users' new locations, deletion of the
//!    pending records that were folded in, and the new manifest. Then publish the new state.
//! 4. Delete segment files no live user references.
//! 5. Run RocksDB's compaction over the ranges whose records were deleted.
//!
//! A crash before step 3 leaves files the manifest does not list; open deletes them. A crash
//! after it leaves dead files; open deletes those too. See docs/ARCHITECTURE.md. Each step is a
//! function of its own, called in order by [`compact`].

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::entry::{build_entry, EntryParams, Ev};
use crate::error::{DecodeError, Error, Result};
use crate::inner::Inner;
use crate::records::ItemRecord;
use crate::segment::{segment_file_name, sync_dir, DirRecord, Segment, SegmentWriter};
use crate::state::{EntryRef, SegState, State, UserState};
use crate::store::{Batch, Cf};
use crate::types::Durability;
use crate::view::{UserView, ViewConfig};

/// What one compaction did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompactionStats {
    pub users_written: u64,
    pub events_written: u64,
    pub segments_written: u64,
    pub segments_removed: u64,
    pub bytes_written: u64,
    /// Catalog rows created for items seen only in events.
    pub stub_items: u64,
}

/// Run one compaction (one at a time: a second caller waits for the first).
pub(crate) fn compact(inner: &Inner) -> Result<CompactionStats> {
    let _one = inner.compaction.lock();
    let stats = run(inner)?;
    if stats.users_written > 0 || stats.segments_removed > 0 {
        inner.compactions.fetch_add(1, Ordering::Relaxed);
    }
    Ok(stats)
}

/// Steps 1 to 5, under the compaction lock.
fn run(inner: &Inner) -> Result<CompactionStats> {
    // Users deleted before this point must leave RocksDB's files by the end of this compaction.
    let deleted_before = inner.users_deleted.swap(false, Ordering::AcqRel);
    // The snapshot to compact is the one the stubs were made for: an append after it may bring
    // items without catalog rows, and its events stay pending until the next compaction.
    let (stub_items, s0) = create_stubs(inner)?;
    let mut stats = CompactionStats {
        stub_items,
        ..Default::default()
    };
    failpoint!("compaction::after_stubs");
    let users = choose_users(inner, &s0)?;
    let any_dead = s0.segments.values().any(|s| s.live_users == 0);
    if users.is_empty() && !any_dead {
        if deleted_before {
            compact_deleted_records(inner, true)?;
        }
        return Ok(stats);
    }
    let new_segments = write_segments(inner, &s0, &users, &mut stats)?;
    // Pending events up to the snapshot's last append are folded in; later ones stay pending.
    let upto = s0.next_seq - 1;
    let committed = commit(inner, new_segments, s0.next_segment_id, upto)?;
    // Now that RocksDB holds the new generation, the file follows, before any file is deleted:
    // a RocksDB that later comes back older than this file has lost committed records.
    if let Some(generation) = committed.generation {
        inner.raise_generation(generation)?;
    }
    stats.segments_removed = committed.dead.len() as u64;
    let erased = remove_dead_files(inner, &committed.dead)?;
    compact_deleted_records(inner, erased || deleted_before)?;
    Ok(stats)
}

/// Step 1: give every item seen only in pending events a stub catalog row. Returns how many
/// were made and the state they were made for, taken under the same writer lock: every item of
/// its pending events has a row.
fn create_stubs(inner: &Inner) -> Result<(u64, Arc<State>)> {
    let _w = inner.writer.lock();
    let st = inner.state.load_full();
    let missing = items_without_rows(&st);
    if missing.is_empty() {
        return Ok((0, st));
    }
    let mut catalog = st.catalog.clone();
    let mut batch = Batch::default();
    for &id in &missing {
        let rec = ItemRecord {
            internal: catalog.next_internal(),
            category: 0,
            semid: None,
            semid_gen: 0,
            embedding: None,
            stub: true,
        };
        catalog.put(id, &rec).map_err(Error::invalid)?;
        batch.put_item(id, &rec);
    }
    inner.store.write(batch, Durability::Sync)?;
    let mut next = (*st).clone();
    next.catalog = catalog;
    let next = Arc::new(next);
    inner.state.store(Arc::clone(&next));
    Ok((missing.len() as u64, next))
}

/// Items of pending events that have no catalog row, in id order.
fn items_without_rows(st: &State) -> BTreeSet<u64> {
    let mut missing = BTreeSet::new();
    // Each distinct item is looked up in the catalog once (a plain set is cheaper per event
    // than the catalog's persistent map); this runs under the writer lock.
    let mut seen = HashSet::new();
    for u in st.pending_users.iter() {
        let Some(us) = st.users.get(u) else { continue };
        for p in us.pending.iter() {
            if seen.insert(p.ev.item) && st.catalog.lookup(p.ev.item).is_none() {
                missing.insert(p.ev.item);
            }
        }
    }
    missing
}

/// Step 2a: the users to write: those with pending events, every live user of a segment to
/// rewrite (it holds a deleted user or too much garbage), and users whose prefix index is stale.
fn choose_users(inner: &Inner, s0: &State) -> Result<BTreeSet<u64>> {
    let mut users: BTreeSet<u64> = s0.pending_users.iter().copied().collect();
    let min_live = inner.opts.segment_min_live_ratio;
    let rewrite: BTreeSet<u64> = s0
        .segments
        .values()
        .filter(|s| s.needs_erase || (s.live_bytes as f64) < min_live * s.entry_bytes() as f64)
        .map(|s| s.segment.id)
        .collect();
    for (&u, us) in s0.users.iter() {
        let Some(e) = &us.entry else { continue };
        // Entries of format version 1 are rewritten as version 2 (docs/FORMAT.md, "Versions").
        if rewrite.contains(&e.segment.id) || e.segment.version() == 1 {
            users.insert(u);
        } else if e.segment.entry(e.record)?.semid_gen() < s0.catalog.semid_gen() {
            let mut v = UserView::of(us, u, view_config(inner, s0), None)?;
            if !v.index_is_fresh()? {
                users.insert(u);
            }
        }
    }
    Ok(users)
}

/// A user's entry written to a new segment file.
struct WrittenEntry {
    user: u64,
    record: DirRecord,
    /// The user's `born` in the snapshot the entry was written from.
    born: u64,
}

/// A new segment file and the entries written to it.
struct NewSegment {
    segment: Arc<Segment>,
    entries: Vec<WrittenEntry>,
}

/// Step 2b: without locks, from the snapshot `s0`: write each chosen user's whole retained
/// sequence into new segment files (fsynced and renamed into place).
fn write_segments(
    inner: &Inner,
    s0: &State,
    users: &BTreeSet<u64>,
    stats: &mut CompactionStats,
) -> Result<Vec<NewSegment>> {
    let params = EntryParams {
        block_events: inner.opts.block_events,
        zstd_level: inner.opts.zstd_level,
        layout: inner.read.layout,
        semid_gen: s0.catalog.semid_gen(),
    };
    let mut files = NewFiles {
        dir: &inner.seg_dir,
        target_bytes: inner.opts.segment_target_bytes,
        next_id: s0.next_segment_id,
        open: None,
        finished: Vec::new(),
    };
    for &u in users {
        let Some(us) = s0.users.get(&u) else { continue };
        let evs = UserView::of(us, u, view_config(inner, s0), None)?.read(None, None)?;
        if evs.is_empty() {
            continue;
        }
        let bytes = build_user_entry(inner, s0, u, &evs, &params)?;
        files.add(u, us.born, &bytes, evs.len() as u32)?;
        stats.users_written += 1;
        stats.events_written += evs.len() as u64;
    }
    files.finish_open()?;
    let mut new_segments = Vec::with_capacity(files.finished.len());
    for (id, path, len, entries) in files.finished {
        stats.segments_written += 1;
        stats.bytes_written += len;
        let segment = Arc::new(Segment::open(&path, id)?);
        new_segments.push(NewSegment { segment, entries });
    }
    Ok(new_segments)
}

/// Compaction reads without the shared cache: it reads each user once.
fn view_config<'s>(inner: &Inner, s0: &'s State) -> ViewConfig<'s> {
    ViewConfig {
        catalog: &s0.catalog,
        layout: inner.read.layout,
        retention: inner.read.retention,
        cache: None,
    }
}

/// Encode one user's entry. Each distinct item is resolved once; one without a catalog row
/// (stubs were made for every pending item in step 1) means the catalog lost a record.
fn build_user_entry(
    inner: &Inner,
    s0: &State,
    user: u64,
    evs: &[Ev],
    params: &EntryParams,
) -> Result<Vec<u8>> {
    let mut missing = None;
    let built = build_entry(user, evs, params, |id| match s0.catalog.lookup(id) {
        Some(row) => (row, s0.catalog.semid(row)),
        None => {
            missing.get_or_insert(id);
            (0, None)
        }
    });
    match missing {
        None => Ok(built.0),
        Some(id) => Err(inner.store.corruption(
            "items",
            DecodeError::corrupt(format!("item {id} of user {user} has no catalog row")),
        )),
    }
}

/// New segment files, rolled over at `target_bytes`.
struct NewFiles<'a> {
    dir: &'a Path,
    target_bytes: u64,
    next_id: u64,
    open: Option<(SegmentWriter, Vec<WrittenEntry>)>,
    /// (segment id, path, file length, entries) of each finished file.
    finished: Vec<(u64, PathBuf, u64, Vec<WrittenEntry>)>,
}

impl NewFiles<'_> {
    fn add(&mut self, user: u64, born: u64, entry: &[u8], n: u32) -> Result<()> {
        let (w, entries) = match &mut self.open {
            Some(open) => open,
            None => {
                let w = SegmentWriter::create(self.dir, self.next_id)?;
                self.next_id += 1;
                self.open.insert((w, Vec::new()))
            }
        };
        let record = w.add(user, entry, n)?;
        entries.push(WrittenEntry { user, record, born });
        if w.len() >= self.target_bytes {
            self.finish_open()?;
        }
        Ok(())
    }

    /// Finish the file being written, if any: fsync it and rename it into place.
    fn finish_open(&mut self) -> Result<()> {
        if let Some((w, entries)) = self.open.take() {
            let id = w.id();
            let (path, len) = w.finish()?;
            self.finished.push((id, path, len, entries));
        }
        Ok(())
    }
}

/// What the commit changed on disk.
struct Committed {
    /// Segments no live user references any more, dropped from the manifest.
    dead: Vec<SegState>,
    /// The new generation, if the set of segment files changed.
    generation: Option<u64>,
}

/// Step 3: under the writer lock, one synced RocksDB batch with the users' new locations, the
/// deletion of the pending records folded in (sequence numbers up to `upto`) and the new
/// manifest; then publish the new state. `next_segment_id` is the snapshot's.
fn commit(
    inner: &Inner,
    new_segments: Vec<NewSegment>,
    next_segment_id: u64,
    upto: u64,
) -> Result<Committed> {
    let _w = inner.writer.lock();
    let s1 = inner.state.load_full();
    let files_added = !new_segments.is_empty();
    let mut c = Commit {
        s1: &s1,
        next: (*s1).clone(),
        segments: (*s1.segments).clone(),
        batch: Batch::default(),
        upto,
    };
    c.next.next_segment_id = next_segment_id + new_segments.len() as u64;
    for new in new_segments {
        c.add_segment(new)?;
    }
    let dead = c.remove_dead();
    let Commit {
        mut next,
        segments,
        mut batch,
        ..
    } = c;
    next.segments = Arc::new(segments);
    next.compacted_seq = next.compacted_seq.max(upto);
    let generation = (files_added || !dead.is_empty()).then(|| {
        next.generation += 1;
        batch.put_generation(next.generation);
        next.generation
    });
    batch.put_manifest(&next.manifest());
    inner.store.write(batch, Durability::Sync)?;
    failpoint!("compaction::after_commit");
    inner.state.store(Arc::new(next));
    Ok(Committed { dead, generation })
}

/// A commit being assembled from the state `s1` it replaces.
struct Commit<'a> {
    s1: &'a State,
    next: State,
    segments: BTreeMap<u64, SegState>,
    batch: Batch,
    /// Pending events up to this sequence number are folded in.
    upto: u64,
}

impl Commit<'_> {
    /// Add a new segment. Users it holds move to it, unless they were deleted (or deleted and
    /// re-created) while it was written: then their copy is garbage that must not survive the
    /// next compaction.
    fn add_segment(&mut self, new: NewSegment) -> Result<()> {
        let mut ss = SegState {
            segment: new.segment,
            needs_erase: false,
            live_users: 0,
            live_bytes: 0,
        };
        for e in new.entries {
            match self.s1.users.get(&e.user) {
                Some(cur) if cur.born == e.born => {
                    ss.live_users += 1;
                    ss.live_bytes += u64::from(e.record.len);
                    let entry = EntryRef {
                        record: find_written(&ss.segment, e.user)?,
                        segment: Arc::clone(&ss.segment),
                    };
                    self.move_user(e.user, cur, entry);
                }
                _ => ss.needs_erase = true,
            }
        }
        self.segments.insert(ss.segment.id, ss);
        Ok(())
    }

    /// Point `user` at its new entry, in RocksDB and in the next state, keeping only its pending
    /// events after `upto`; its previous entry no longer counts as live.
    fn move_user(&mut self, user: u64, cur: &UserState, entry: EntryRef) {
        if let Some(e) = &cur.entry {
            let old = self
                .segments
                .get_mut(&e.segment.id)
                .expect("a live user's entry is in a live segment");
            old.live_users -= 1;
            old.live_bytes -= u64::from(e.segment.record(e.record).len);
        }
        self.batch.put_location(user, &entry.location());
        self.batch.delete_pending_through(user, self.upto);
        let remaining = cur.pending.after(self.upto);
        self.next.pending_events -= (cur.pending.len() - remaining.len()) as u64;
        if remaining.is_empty() {
            self.next.pending_users.remove(&user);
        }
        self.next.users.insert(
            user,
            Arc::new(UserState {
                entry: Some(entry),
                pending: remaining,
                born: cur.born,
            }),
        );
    }

    /// Drop the segments no live user references from the manifest; returns them.
    fn remove_dead(&mut self) -> Vec<SegState> {
        let dead: Vec<SegState> = self
            .segments
            .values()
            .filter(|s| s.live_users == 0)
            .cloned()
            .collect();
        for d in &dead {
            self.segments.remove(&d.segment.id);
        }
        dead
    }
}

/// The directory index of `user` in a segment that was just written with it.
fn find_written(segment: &Segment, user: u64) -> Result<usize> {
    segment.find(user).ok_or_else(|| {
        DecodeError::corrupt(format!(
            "user {user} was written but is not in the directory"
        ))
        .at(&segment.path, "directory")
    })
}

/// Step 4: delete the files of dead segments. Readers that still map them keep their mapping
/// (unlink does not invalidate it). Returns whether any held a deleted user.
fn remove_dead_files(inner: &Inner, dead: &[SegState]) -> Result<bool> {
    let mut erased = false;
    for d in dead {
        let p = inner.seg_dir.join(segment_file_name(d.segment.id));
        match fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(p, e)),
        }
        failpoint!("compaction::between_deletions");
        erased |= d.needs_erase;
    }
    if !dead.is_empty() {
        sync_dir(&inner.seg_dir)?;
    }
    Ok(erased)
}

/// Step 5: the folded-in pending records were range-deleted; compact that range so RocksDB drops
/// them now rather than whenever its own compaction gets there, and, when users were deleted,
/// the users' range too, so that their records leave RocksDB's files.
fn compact_deleted_records(inner: &Inner, users_deleted: bool) -> Result<()> {
    inner.store.compact_cf(Cf::Pending)?;
    if users_deleted {
        inner.store.compact_cf(Cf::Users)?;
    }
    Ok(())
}
