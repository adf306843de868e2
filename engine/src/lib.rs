//! # siren-engine
//!
//! An embedded storage engine for lifelong user-behaviour sequences, with the General Search
//! Unit (GSU) of a two-stage recommender built in:
//!
//! - per-user sequences in a custom column store (delta/bit-packed columns, zstd blocks) in
//!   immutable, memory-mapped segment files;
//! - per-user roaring-bitmap indexes on Semantic-ID prefixes, so that hard retrieval
//!   ([`Snapshot::retrieve_hard`]) is a storage query;
//! - int8 catalog embeddings in dense arrays for soft retrieval ([`Snapshot::retrieve_soft`]);
//! - reads bounded by time (`as_of`), so training sees what serving would have seen;
//! - RocksDB for the durable write path, the item catalog and the manifest.
//!
//! ```no_run
//! use siren_engine::{AppendOptions, Db, Event, Item, Options, ReadRange, SemId, Durability};
//! # fn main() -> siren_engine::Result<()> {
//! let db = Db::open("/tmp/siren-example", Options { embedding_dim: 4, ..Options::default() })?;
//! db.upsert_items(&[Item { id: 7, category: 1, semid: Some(SemId::new(&[1, 2, 3])?),
//!                          embedding: Some(vec![0.1, 0.2, 0.3, 0.4]) }], Durability::Sync)?;
//! db.append(&[Event { user: 1, ts: 1_000, item: 7, action: 1, domain: 0 }], &AppendOptions::default())?;
//! let snap = db.snapshot();
//! let hits = snap.retrieve_hard(1, &SemId::new(&[1, 2, 9])?, 50, None)?;
//! assert_eq!(hits[0].depth, 2);
//! let recent = snap.read(1, ReadRange { last: Some(50), ..ReadRange::as_of(2_000) })?;
//! # Ok(()) }
//! ```
//!
//! See `docs/ARCHITECTURE.md` for the write and read paths and `docs/FORMAT.md` for the bytes.

// Stored bytes and callers' input must produce errors, never panics; tests may unwrap
// (`allow-unwrap-in-tests` in this crate's clippy.toml).
#![deny(clippy::unwrap_used)]

/// A failpoint (docs/ARCHITECTURE.md, "Recovery"): with the `failpoints` feature, a
/// `fail::fail_point!` the crash tests arm; without it, nothing at all.
macro_rules! failpoint {
    ($name:literal) => {
        #[cfg(feature = "failpoints")]
        fail::fail_point!($name);
    };
}

mod cache;
mod catalog;
mod compaction;
mod db;
mod error;
mod inner;
mod recovery;
mod retrieve;
mod snapshot;
mod state;
mod store;
mod types;
mod view;
mod wal_gap;
mod watermark;

mod block;
mod codec;
mod columns;
mod decoded;
mod dot;
mod ef;
mod entry;
mod entry_v1;
mod postings;
mod prefix;
mod records;
mod segment;

pub use catalog::ItemRef;
pub use compaction::CompactionStats;
pub use db::{
    CheckpointStats, ColumnBytes, Counters, CreatedWith, Db, RocksBytes, Stats, VerifyReport,
    MAX_SOURCE_NAME,
};
pub use error::{DecodeError, Error, Result};
pub use retrieve::{HardHit, SoftHit};
pub use snapshot::{HistoryStamp, Snapshot};
pub use types::{
    AppendOptions, AppendOutcome, AutoCompact, Durability, Event, Item, Options, ReadRange, SemId,
    MAX_SEMID_LEVELS,
};

/// The storage format's decoders and encoders, public for the fuzz targets and for tools that
/// inspect files. Not a stable API.
#[doc(hidden)]
pub mod format {
    pub use crate::block::{decode_block, encode_block, stamp_at, Block, Stamp};
    pub use crate::catalog::{dequantize, dot_i8, dot_queries, inv_norm, inv_norm_f64, quantize};
    pub use crate::codec::{bitpack, bitunpack, checksum_matches, read_chunk, write_chunk, Reader};
    pub use crate::columns::{
        decode_time, encode_dict, encode_packed, encode_time, DictView, Packed,
    };
    pub use crate::dot::Queries;
    pub use crate::ef::encode as encode_ef;
    pub use crate::ef::{BitWriter, EfList};
    pub use crate::entry::{build_entry, EntryParams, EntryView, Ev, Layout, Lists};
    pub use crate::prefix::{
        decode_bitmap, IndexCache, PrefixIndex, PrefixIndexBuilder, PrefixLayout,
    };
    /// Format version 1, read (and written by the tests) for compatibility.
    pub mod v1 {
        pub use crate::entry_v1::{build_entry, Block, Cols, EntryView};
    }
    pub use crate::records::{
        decode_config, decode_generation, decode_item, decode_location, decode_manifest,
        decode_pending, decode_source, decode_watermark, decode_writes, encode_config,
        encode_generation, encode_item, encode_location, encode_manifest, encode_pending,
        encode_source, encode_watermark, encode_writes, Config, ItemRecord, Location, Manifest,
        SegmentInfo, Watermark,
    };
    pub use crate::segment::{Entry, Segment, SegmentWriter};
    pub use crate::store::{parse_pending_key, parse_u64_key};
}
