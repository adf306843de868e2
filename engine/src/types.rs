//! The public data model: events, items, Semantic IDs, durability and options.

use std::fmt;
use std::time::Duration;

use crate::error::{Error, Result};

/// Most SemID levels a database can have.
pub const MAX_SEMID_LEVELS: usize = 6;

/// One behaviour: `user` did `action` on `item` at `ts` (milliseconds) in `domain`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Event {
    pub user: u64,
    pub ts: i64,
    pub item: u64,
    /// User-defined action code (view, click, cart, buy, a rating, ...).
    pub action: u8,
    /// The scenario or surface the event happened in.
    pub domain: u16,
}

/// A Semantic ID: a short tuple of codes, coarse to fine. Level count and codebook size are fixed
/// per database ([`Options::semid_levels`], [`Options::semid_codebook_size`]).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct SemId {
    len: u8,
    codes: [u16; MAX_SEMID_LEVELS],
}

impl SemId {
    /// Build a SemID from its codes. Fails if there are more than [`MAX_SEMID_LEVELS`].
    pub fn new(codes: &[u16]) -> Result<SemId> {
        if codes.is_empty() || codes.len() > MAX_SEMID_LEVELS {
            return Err(Error::invalid(format!(
                "a SemID has 1 to {MAX_SEMID_LEVELS} codes, got {}",
                codes.len()
            )));
        }
        let mut out = SemId {
            len: codes.len() as u8,
            codes: [0; MAX_SEMID_LEVELS],
        };
        out.codes[..codes.len()].copy_from_slice(codes);
        Ok(out)
    }

    pub fn codes(&self) -> &[u16] {
        &self.codes[..usize::from(self.len)]
    }

    pub fn levels(&self) -> usize {
        usize::from(self.len)
    }

    /// Number of leading codes this SemID shares with `other`.
    pub fn common_prefix(&self, other: &SemId) -> usize {
        self.codes()
            .iter()
            .zip(other.codes())
            .take_while(|(a, b)| a == b)
            .count()
    }
}

impl fmt::Debug for SemId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SemId{:?}", self.codes())
    }
}

/// An item of the catalog as callers give and get it. The engine stores the embedding quantised
/// to int8 with one scale per item (see `docs/FORMAT.md`), so what comes back from
/// [`crate::Snapshot::item`] is the dequantised vector.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub id: u64,
    pub category: u32,
    pub semid: Option<SemId>,
    pub embedding: Option<Vec<f32>>,
}

/// How durable a write is when the call returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// The write is in RocksDB's write-ahead log, fsynced, before the call returns.
    /// Survives a process crash and a power loss or kernel panic.
    #[default]
    Sync,
    /// The write is in RocksDB's write-ahead log in the OS page cache when the call returns, not
    /// fsynced. Survives a process crash (`kill -9`); the most recent writes may be lost on power
    /// loss or a kernel panic. Roughly an order of magnitude faster than `Sync` for small batches.
    Buffered,
    /// No write-ahead log: the write lives only in RocksDB's memtable until the next flush
    /// ([`crate::Db::flush`] or a compaction). Lost on a process crash as well as on power loss.
    /// For bulk loads that can be restarted from their source.
    Unlogged,
}

/// Automatic (background) compaction settings.
#[derive(Debug, Clone, PartialEq)]
pub struct AutoCompact {
    /// Compact when this many events wait in the write path.
    pub pending_events: u64,
    /// Also compact when events have waited this long, if any wait.
    pub interval: Duration,
}

impl Default for AutoCompact {
    fn default() -> Self {
        AutoCompact {
            pending_events: 1_000_000,
            interval: Duration::from_secs(60),
        }
    }
}

/// Options for [`crate::Db::open`].
///
/// `embedding_dim`, `semid_levels` and `semid_codebook_size` are fixed when the database is
/// created; opening it again with other values fails with [`Error::OptionsMismatch`]. The rest
/// may change between opens.
#[derive(Debug, Clone)]
pub struct Options {
    pub create_if_missing: bool,
    /// Dimension of item embeddings (0: the catalog holds no embeddings).
    pub embedding_dim: u32,
    /// SemID levels (1 to [`MAX_SEMID_LEVELS`]).
    pub semid_levels: u8,
    /// Codes per SemID level (2 to 65,536).
    pub semid_codebook_size: u32,
    /// A user keeps at most this many events; the oldest are dropped first.
    pub max_events_per_user: u32,
    /// If set, events older than the user's newest event by more than this many milliseconds
    /// are dropped. Measured from the user's own newest event, not the wall clock, so that a
    /// read gives the same answer whenever it runs.
    pub max_event_age_ms: Option<i64>,
    /// Events per column block in segment files (a block is the unit of decompression).
    pub block_events: u32,
    /// zstd level of format-1 segment blocks; format 2 (what compaction writes) compresses nothing
    /// (docs/FORMAT.md, "Versions"), so this setting has no effect and is kept for configurations.
    pub zstd_level: i32,
    /// Background compaction; `None` means compaction runs only when [`crate::Db::compact`] is
    /// called.
    pub auto_compact: Option<AutoCompact>,
    /// A compaction starts a new segment file once the current one exceeds this size.
    pub segment_target_bytes: u64,
    /// Rewrite a segment when less than this share of its bytes is still referenced.
    pub segment_min_live_ratio: f64,
    /// Largest number of events one append call may carry.
    pub max_batch_events: usize,
    /// Memory for decoded time and item columns and prefix bitmaps, shared by all readers
    /// (see docs/ARCHITECTURE.md, "Decoded cache"); 0 turns the cache off.
    pub cache_bytes: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            create_if_missing: true,
            embedding_dim: 128,
            semid_levels: 3,
            semid_codebook_size: 256,
            max_events_per_user: 100_000,
            max_event_age_ms: None,
            block_events: 1024,
            zstd_level: 3,
            auto_compact: Some(AutoCompact::default()),
            segment_target_bytes: 256 << 20,
            segment_min_live_ratio: 0.5,
            max_batch_events: 1_000_000,
            cache_bytes: 64 << 20,
        }
    }
}

impl Options {
    pub(crate) fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::invalid(m));
        if usize::from(self.semid_levels) == 0 || usize::from(self.semid_levels) > MAX_SEMID_LEVELS
        {
            return bad(format!(
                "semid_levels must be 1 to {MAX_SEMID_LEVELS}, got {}",
                self.semid_levels
            ));
        }
        if !(2..=65_536).contains(&self.semid_codebook_size) {
            return bad(format!(
                "semid_codebook_size must be 2 to 65536, got {}",
                self.semid_codebook_size
            ));
        }
        if self.embedding_dim > 8192 {
            return bad(format!(
                "embedding_dim must be at most 8192, got {}",
                self.embedding_dim
            ));
        }
        if self.max_events_per_user == 0 || self.max_events_per_user > 50_000_000 {
            return bad(format!(
                "max_events_per_user must be 1 to 50,000,000, got {}",
                self.max_events_per_user
            ));
        }
        if !(16..=65_536).contains(&self.block_events) {
            return bad(format!(
                "block_events must be 16 to 65536, got {}",
                self.block_events
            ));
        }
        if matches!(self.max_event_age_ms, Some(a) if a < 0) {
            return bad("max_event_age_ms must not be negative".into());
        }
        if !(0.0..=1.0).contains(&self.segment_min_live_ratio) {
            return bad("segment_min_live_ratio must be in [0, 1]".into());
        }
        if self.max_batch_events == 0 {
            return bad("max_batch_events must be positive".into());
        }
        Ok(())
    }
}

/// Options of one append.
#[derive(Debug, Clone, Default)]
pub struct AppendOptions {
    pub durability: Durability,
    /// Where the batch comes from, for exactly-once application: a source name (for example a
    /// log partition) and the batch's sequence number in it. Sequence numbers must increase per
    /// source; a batch whose number is at or below the last applied one for its source is
    /// acknowledged and not applied again.
    pub source: Option<(String, u64)>,
}

/// What an append did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendOutcome {
    /// The events are stored.
    Applied { events: usize },
    /// The batch's sequence number was already applied for its source; nothing changed.
    Duplicate { last_applied: u64 },
}

/// Bounds of a sequence read. All bounds are optional; `as_of` is exclusive.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadRange {
    /// Only events with `ts >= since`.
    pub since: Option<i64>,
    /// Only events with `ts < as_of`: what a reader at that moment would have seen.
    pub as_of: Option<i64>,
    /// Only the most recent `last` events within the other bounds.
    pub last: Option<usize>,
}

impl ReadRange {
    pub fn all() -> Self {
        Self::default()
    }
    pub fn as_of(ts: i64) -> Self {
        ReadRange {
            as_of: Some(ts),
            ..Self::default()
        }
    }
}

/// An event without its user, as a user entry stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ev {
    pub ts: i64,
    pub item: u64,
    pub action: u8,
    pub domain: u16,
}
