//! The in-memory image of the database that readers see. Each write builds a new [`State`]
//! (persistent maps make that O(changed users)) and publishes it atomically; a reader holds one
//! `Arc<State>` for as long as it likes and sees exactly that moment.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::catalog::Catalog;
use crate::entry::Ev;
use crate::records::{Location, Manifest, SegmentInfo};
use crate::segment::Segment;

/// An event in the write path, with the sequence number of the append that brought it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingEv {
    pub ev: Ev,
    pub seq: u64,
}

/// Where a user's compacted entry is.
#[derive(Debug, Clone)]
pub struct EntryRef {
    pub segment: Arc<Segment>,
    /// Index of the user's record in the segment directory.
    pub record: usize,
}

impl EntryRef {
    pub fn location(&self) -> Location {
        let r = self.segment.record(self.record);
        Location {
            segment: self.segment.id,
            offset: r.offset,
            len: r.len,
            n_events: r.n_events,
        }
    }
}

#[derive(Debug, Clone)]
pub struct UserState {
    pub entry: Option<EntryRef>,
    /// Not-yet-compacted events, sorted by time; equal times keep arrival order.
    pub pending: Arc<[PendingEv]>,
    /// Sequence number of the append that created this user (after its last deletion). A
    /// compaction that started before a delete recognises the user as a different one.
    pub born: u64,
}

/// A live segment with its accounting.
#[derive(Debug, Clone)]
pub struct SegState {
    pub segment: Arc<Segment>,
    pub needs_erase: bool,
    pub live_users: u64,
    pub live_bytes: u64,
}

impl SegState {
    pub fn entry_bytes(&self) -> u64 {
        (0..self.segment.len())
            .map(|i| u64::from(self.segment.record(i).len))
            .sum()
    }
}

#[derive(Clone)]
pub struct State {
    pub users: imbl::HashMap<u64, Arc<UserState>>,
    /// Users that have pending events.
    pub pending_users: imbl::OrdSet<u64>,
    pub pending_events: u64,
    pub catalog: Catalog,
    pub segments: Arc<BTreeMap<u64, SegState>>,
    pub next_segment_id: u64,
    pub compacted_seq: u64,
    /// Sequence number the next append gets.
    pub next_seq: u64,
    /// Compactions that changed the set of segment files (see `records::encode_generation`).
    pub generation: u64,
}

impl State {
    pub fn manifest(&self) -> Manifest {
        Manifest {
            next_segment_id: self.next_segment_id,
            compacted_seq: self.compacted_seq,
            segments: self
                .segments
                .values()
                .map(|s| SegmentInfo {
                    id: s.segment.id,
                    file_len: s.segment.file_len(),
                    needs_erase: s.needs_erase,
                })
                .collect(),
        }
    }
}

/// Merge `new` (in arrival order) into `old` (sorted by time, arrival order on ties).
pub fn merge_pending(old: &[PendingEv], new: &[Ev], seq: u64) -> Arc<[PendingEv]> {
    let mut add: Vec<PendingEv> = new.iter().map(|&ev| PendingEv { ev, seq }).collect();
    add.sort_by_key(|p| p.ev.ts); // stable: keeps batch order on ties
    let mut out = Vec::with_capacity(old.len() + add.len());
    let (mut i, mut j) = (0, 0);
    while i < old.len() && j < add.len() {
        // Older arrivals first on equal times.
        if old[i].ev.ts <= add[j].ev.ts {
            out.push(old[i]);
            i += 1;
        } else {
            out.push(add[j]);
            j += 1;
        }
    }
    out.extend_from_slice(&old[i..]);
    out.extend_from_slice(&add[j..]);
    out.into()
}
