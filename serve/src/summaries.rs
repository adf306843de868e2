//! Users' history summaries kept across requests.
//!
//! The evidence features of a request summarise the user's whole history before `at`
//! ([`HistorySummary`]): for a 100,000-event user, reading it, finding its items in the
//! catalog and grouping them cost more than the rest of the request's features together. Yet
//! the summary does not depend on the candidates, and the requests for one user mostly see the
//! same history. So the ranker keeps summaries under the engine's [`HistoryStamp`] of the
//! history they summarise: equal stamps mean the same events over the same catalog rows, so a
//! kept summary is reused exactly when it is the one that would be computed again. An append,
//! a deletion, any item upsert (one that rewrites a catalog row, or adds one for an item that
//! pending events may already name), or an `at` that sees other events gives
//! another stamp, and the summary is read afresh; an `at` that sees the same events (a
//! wall-clock `at` a millisecond later) reuses it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use siren_engine::{HistoryStamp, Snapshot};
use siren_model::features::HistorySummary;

use crate::error::{Result, ServeError};

/// How many bytes of summaries a ranker keeps by default: about seventy users of 100,000
/// events (the benchmark's, with 6,787 distinct items, takes 0.86 MB).
pub const DEFAULT_SUMMARY_CACHE_BYTES: usize = 64 << 20;

/// The weight of a kept summary: its approximate heap bytes (at least 1, as a zero weight is
/// never evicted).
#[derive(Clone)]
struct Bytes;

impl quick_cache::Weighter<HistoryStamp, Arc<HistorySummary>> for Bytes {
    fn weight(&self, _key: &HistoryStamp, value: &Arc<HistorySummary>) -> u64 {
        value.bytes().max(1) as u64
    }
}

/// Summaries by the stamp of the history they summarise, at most a number of bytes of them
/// (quick_cache: concurrent, weighted, S3-FIFO eviction).
pub struct SummaryCache {
    cache: Option<quick_cache::sync::Cache<HistoryStamp, Arc<HistorySummary>, Bytes>>,
    hits: AtomicU64,
    misses: AtomicU64,
}

/// Typical weight of a kept summary, for the cache's initial table size.
const TYPICAL_SUMMARY: usize = 256 << 10;

impl SummaryCache {
    /// A cache of at most `bytes` of summaries; 0 keeps none (every call reads its summary).
    pub fn new(bytes: usize) -> SummaryCache {
        let cache = (bytes > 0).then(|| {
            let items = (bytes / TYPICAL_SUMMARY).max(16);
            quick_cache::sync::Cache::with_weighter(items, bytes as u64, Bytes)
        });
        SummaryCache {
            cache,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// The summary of `user`'s events before `at` in `snap` (catalog embeddings of `dim`
    /// values): the kept one when the history's stamp matches, else read and kept. Calls that
    /// miss on the same stamp at once read it once.
    pub fn get(
        &self,
        snap: &Snapshot,
        user: u64,
        at: i64,
        dim: usize,
    ) -> Result<Arc<HistorySummary>> {
        let read = || -> Result<Arc<HistorySummary>> {
            Ok(Arc::new(HistorySummary::read(snap, user, at, dim)?))
        };
        let Some(cache) = &self.cache else {
            self.misses.fetch_add(1, Ordering::Relaxed);
            return read();
        };
        let stamp = snap.history_stamp(user, Some(at))?;
        let mut missed = false;
        let summary = cache.get_or_insert_with::<_, ServeError>(&stamp, || {
            missed = true;
            read()
        })?;
        let counter = if missed { &self.misses } else { &self.hits };
        counter.fetch_add(1, Ordering::Relaxed);
        Ok(summary)
    }

    /// Calls answered from the cache and calls that read their summary, since the cache was
    /// made.
    pub fn hits_and_misses(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }
}
