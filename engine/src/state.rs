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
    pub pending: Pending,
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

/// A user's pending events, sorted by time (arrival order on equal times), as a persistent
/// vector: an append shares everything but the few tree nodes it touches with the version
/// readers hold, so it costs O(log n) per event however many events are pending, instead of a
/// copy of the whole array. Indexing is O(log n) with a small constant (64-way nodes).
#[derive(Debug, Clone, Default)]
pub struct Pending(imbl::Vector<PendingEv>);

impl Pending {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Event `j` (`j < len`).
    #[inline]
    pub fn get(&self, j: usize) -> PendingEv {
        self.0[j]
    }

    pub fn last(&self) -> Option<PendingEv> {
        self.0.last().copied()
    }

    /// Number of events with `ts < t`.
    pub fn count_lt(&self, t: i64) -> usize {
        self.partition(|p| p.ev.ts < t)
    }

    /// The first index whose event fails `pred`, for a `pred` true on a prefix.
    fn partition(&self, pred: impl Fn(&PendingEv) -> bool) -> usize {
        let found = self.0.binary_search_by(|p| {
            if pred(p) {
                std::cmp::Ordering::Less
            } else {
                std::cmp::Ordering::Greater
            }
        });
        found.unwrap_or_else(|i| i)
    }

    /// Events `range`, in order.
    pub fn range(&self, range: std::ops::Range<usize>) -> impl Iterator<Item = PendingEv> + '_ {
        self.0.focus().narrow(range).into_iter().copied()
    }

    pub fn iter(&self) -> impl Iterator<Item = PendingEv> + '_ {
        self.0.iter().copied()
    }

    /// These events with `new` (one append, in arrival order, sequence number `seq`) merged in:
    /// each goes after every event at or before its time, so equal times keep arrival order.
    /// Events at or after the last one (the usual case) are pushed at the end.
    pub fn with_appended(&self, new: &[Ev], seq: u64) -> Pending {
        let mut out = self.clone();
        out.append(new, seq);
        out
    }

    /// [`Pending::with_appended`] in place.
    pub fn append(&mut self, new: &[Ev], seq: u64) {
        let mut add: Vec<PendingEv> = new.iter().map(|&ev| PendingEv { ev, seq }).collect();
        add.sort_by_key(|p| p.ev.ts); // stable: keeps batch order on ties
        for p in add {
            match self.0.last() {
                Some(last) if last.ev.ts > p.ev.ts => {
                    let at = self.partition(|q| q.ev.ts <= p.ev.ts);
                    self.0.insert(at, p);
                }
                _ => self.0.push_back(p),
            }
        }
    }

    /// The events of appends after sequence number `upto`.
    pub fn after(&self, upto: u64) -> Pending {
        Pending(self.0.iter().filter(|p| p.seq > upto).copied().collect())
    }
}
