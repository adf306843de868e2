//! Compaction: fold pending events into new segment files and free old ones.
//!
//! 1. Under the writer lock, give every item seen only in pending events a stub catalog row, so
//!    that every dictionary entry has an internal number.
//! 2. Without locks, from a snapshot: rewrite each chosen user's whole retained sequence (entry +
//!    pending) into new segment files, fsync them and rename them into place.
//! 3. Under the writer lock, one synced RocksDB batch: the users' new locations, deletion of the
//!    pending records that were folded in, and the new manifest. Then publish the new state.
//! 4. Delete segment files no live user references.
//!
//! A crash before step 3 leaves files the manifest does not list; open deletes them. A crash
//! after it leaves dead files; open deletes those too. See docs/ARCHITECTURE.md.

use std::collections::BTreeSet;
use std::fs;
use std::sync::Arc;

use crate::db::Inner;
use crate::entry::{build_entry, EntryParams};
use crate::error::{DecodeError, Error, Result};
use crate::records::{self, ItemRecord};
use crate::segment::{segment_file_name, sync_dir, DirRecord, Segment, SegmentWriter};
use crate::state::{EntryRef, PendingEv, SegState, UserState};
use crate::store::{Batch, Cf};
use crate::types::Durability;
use crate::view::UserView;

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

fn create_stubs(inner: &Inner) -> Result<u64> {
    let _w = inner.writer.lock();
    let st = inner.state.load_full();
    let mut missing = BTreeSet::new();
    // Each distinct item is looked up in the catalog once (a plain set is cheaper per event
    // than the catalog's persistent map); this runs under the writer lock.
    let mut seen = std::collections::HashSet::new();
    for u in st.pending_users.iter() {
        if let Some(us) = st.users.get(u) {
            for p in us.pending.iter() {
                if seen.insert(p.ev.item) && st.catalog.lookup(p.ev.item).is_none() {
                    missing.insert(p.ev.item);
                }
            }
        }
    }
    if missing.is_empty() {
        return Ok(0);
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
        batch.put(Cf::Items, id.to_be_bytes(), records::encode_item(&rec));
    }
    inner.store.write(batch, Durability::Sync)?;
    let mut next = (*st).clone();
    next.catalog = catalog;
    inner.state.store(Arc::new(next));
    Ok(missing.len() as u64)
}

pub(crate) fn compact(inner: &Inner) -> Result<CompactionStats> {
    let _one = inner.compaction.lock();
    // Users deleted before this point must leave RocksDB's files by the end of this compaction.
    let deleted_before = inner
        .users_deleted
        .swap(false, std::sync::atomic::Ordering::AcqRel);
    let mut stats = CompactionStats {
        stub_items: create_stubs(inner)?,
        ..Default::default()
    };
    let s0 = inner.state.load_full();
    let cfg = inner.read;

    // Which users to write.
    let mut users: BTreeSet<u64> = s0.pending_users.iter().copied().collect();
    let min_live = inner.opts.segment_min_live_ratio;
    let rewrite: BTreeSet<u64> = s0
        .segments
        .values()
        .filter(|s| s.needs_erase || (s.live_bytes as f64) < min_live * s.entry_bytes() as f64)
        .map(|s| s.segment.id)
        .collect();
    for (&u, us) in s0.users.iter() {
        if let Some(e) = &us.entry {
            if rewrite.contains(&e.segment.id) {
                users.insert(u);
            } else if e.segment.entry(e.record)?.header.semid_gen < s0.catalog.semid_gen() {
                let mut v = UserView::of(us, &s0.catalog, u, cfg.retention, None, None)?;
                if !v.index_is_fresh()? {
                    users.insert(u);
                }
            }
        }
    }
    let any_dead = s0.segments.values().any(|s| s.live_users == 0);
    if users.is_empty() && !any_dead {
        if deleted_before {
            inner.store.compact_cf(Cf::Pending)?;
            inner.store.compact_cf(Cf::Users)?;
        }
        return Ok(stats);
    }
    let upto = s0.next_seq - 1;

    // Write new segments from the snapshot.
    let params = EntryParams {
        block_events: inner.opts.block_events,
        zstd_level: inner.opts.zstd_level,
        layout: cfg.layout,
        semid_gen: s0.catalog.semid_gen(),
    };
    let mut next_id = s0.next_segment_id;
    let mut writer: Option<SegmentWriter> = None;
    let mut written: Vec<(u64, u64, DirRecord, u64)> = Vec::new();
    let mut files = Vec::new();
    for &u in &users {
        let Some(us) = s0.users.get(&u) else { continue };
        let evs = UserView::of(us, &s0.catalog, u, cfg.retention, None, None)?.read(None, None)?;
        if evs.is_empty() {
            continue;
        }
        // Each distinct item is resolved once; one without a catalog row (stubs were made for
        // every pending item above) means the catalog lost a record.
        let mut missing = None;
        let (bytes, sizes) = build_entry(u, &evs, &params, |id| match s0.catalog.lookup(id) {
            Some(row) => (row, s0.catalog.semid(row)),
            None => {
                missing.get_or_insert(id);
                (0, None)
            }
        });
        if let Some(id) = missing {
            return Err(
                DecodeError::corrupt(format!("item {id} of user {u} has no catalog row"))
                    .at(inner.store.path(), "items"),
            );
        }
        let w = match &mut writer {
            Some(w) => w,
            None => {
                next_id += 1;
                writer.insert(SegmentWriter::create(&inner.seg_dir, next_id - 1)?)
            }
        };
        let rec = w.add(u, &bytes, sizes, evs.len() as u32)?;
        written.push((u, w.id(), rec, us.born));
        stats.users_written += 1;
        stats.events_written += evs.len() as u64;
        if w.len() >= inner.opts.segment_target_bytes {
            let w = writer.take().unwrap();
            files.push((w.id(), w.finish()?));
        }
    }
    if let Some(w) = writer.take() {
        files.push((w.id(), w.finish()?));
    }
    let mut new_segments = Vec::new();
    for (id, (path, len)) in &files {
        stats.segments_written += 1;
        stats.bytes_written += len;
        new_segments.push(Arc::new(Segment::open(path, *id)?));
    }

    // Commit.
    let w = inner.writer.lock();
    let s1 = inner.state.load_full();
    let mut segments = (*s1.segments).clone();
    for seg in &new_segments {
        segments.insert(
            seg.id,
            SegState {
                segment: seg.clone(),
                needs_erase: false,
                live_users: 0,
                live_bytes: 0,
            },
        );
    }
    let mut next = (*s1).clone();
    let mut batch = Batch::default();
    for (u, seg_id, rec, born) in written {
        let new_seg = segments[&seg_id].segment.clone();
        match s1.users.get(&u) {
            Some(cur) if cur.born == born => {
                if let Some(e) = &cur.entry {
                    let old = segments.get_mut(&e.segment.id).expect("live segment");
                    old.live_users -= 1;
                    old.live_bytes -= u64::from(e.segment.record(e.record).len);
                }
                let ns = segments.get_mut(&seg_id).unwrap();
                ns.live_users += 1;
                ns.live_bytes += u64::from(rec.len);
                let remaining: Vec<PendingEv> = cur
                    .pending
                    .iter()
                    .copied()
                    .filter(|p| p.seq > upto)
                    .collect();
                next.pending_events -= (cur.pending.len() - remaining.len()) as u64;
                if remaining.is_empty() {
                    next.pending_users.remove(&u);
                }
                let record = new_seg.find(u).expect("user written to this segment");
                let entry = EntryRef {
                    segment: new_seg,
                    record,
                };
                batch.put(
                    Cf::Users,
                    records::user_key(u).to_vec(),
                    records::encode_location(&entry.location()),
                );
                batch.delete_range(
                    Cf::Pending,
                    records::pending_key(u, 0).to_vec(),
                    records::pending_key(u, upto + 1).to_vec(),
                );
                next.users.insert(
                    u,
                    Arc::new(UserState {
                        entry: Some(entry),
                        pending: remaining.into(),
                        born,
                    }),
                );
            }
            // Deleted while we wrote: this copy must not survive the next compaction.
            _ => segments.get_mut(&seg_id).unwrap().needs_erase = true,
        }
    }
    let dead: Vec<SegState> = segments
        .values()
        .filter(|s| s.live_users == 0)
        .cloned()
        .collect();
    for d in &dead {
        segments.remove(&d.segment.id);
    }
    next.segments = Arc::new(segments);
    next.next_segment_id = next_id;
    next.compacted_seq = next.compacted_seq.max(upto);
    let changes_files = !new_segments.is_empty() || !dead.is_empty();
    if changes_files {
        next.generation += 1;
        batch.put(
            Cf::Meta,
            crate::db::GENERATION_KEY.to_vec(),
            records::encode_generation(next.generation),
        );
    }
    let generation = next.generation;
    batch.put(
        Cf::Meta,
        b"manifest".to_vec(),
        records::encode_manifest(&next.manifest()),
    );
    inner.store.write(batch, Durability::Sync)?;
    inner.state.store(Arc::new(next));
    drop(w);
    // Now that RocksDB holds the new generation, the file follows, before any file is deleted:
    // a RocksDB that later comes back older than this file has lost committed records.
    if changes_files {
        inner.raise_generation(generation)?;
    }

    // Remove dead files. Readers that still map them keep their mapping (unlink does not
    // invalidate it).
    let mut erased = false;
    for d in &dead {
        let p = inner.seg_dir.join(segment_file_name(d.segment.id));
        match fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(p, e)),
        }
        erased |= d.needs_erase;
        stats.segments_removed += 1;
    }
    if !dead.is_empty() {
        sync_dir(&inner.seg_dir)?;
    }
    // The folded-in pending records were range-deleted; compact that range so RocksDB drops
    // them now rather than whenever its own compaction gets there (and so that deleted users'
    // records leave RocksDB's files).
    inner.store.compact_cf(Cf::Pending)?;
    if erased || deleted_before {
        inner.store.compact_cf(Cf::Users)?;
    }
    Ok(stats)
}
