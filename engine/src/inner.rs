//! [`Inner`]: what an open database shares between its handle, its writers and its background
//! compactor. `db` builds it from what `recovery` found; `compaction` works on it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use parking_lot::{Condvar, Mutex};

use crate::cache::DecodedCache;
use crate::error::Result;
use crate::records::Watermark;
use crate::snapshot::ReadConfig;
use crate::state::State;
use crate::store::Store;
use crate::types::Options;
use crate::watermark;

pub(crate) struct Inner {
    /// This open database's number, unique in the process ([`next_instance`]).
    pub instance: u64,
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
    /// Wakes and stops the background compactor.
    pub compactor: CompactorSignal,
    pub last_bg_error: Mutex<Option<String>>,
    /// A user was deleted since the last compaction started.
    pub users_deleted: AtomicBool,
    /// Compactions that changed something, since open.
    pub compactions: AtomicU64,
    /// The last watermark written to `<db>/WATERMARK`.
    pub watermark: Mutex<Watermark>,
}

/// A number no other database opened by this process has had: what tells the snapshots of
/// two opens apart (a reopened database starts its catalog generations and segment numbers
/// again).
pub fn next_instance() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
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
            watermark::write(&self.path, &mark)?;
        }
        Ok(())
    }

    /// After a compaction commit that changed the segment files.
    pub fn raise_generation(&self, generation: u64) -> Result<()> {
        let mut mark = self.watermark.lock();
        mark.generation = mark.generation.max(generation);
        watermark::write(&self.path, &mark)
    }
}

/// How the database tells its background compactor to run now or to stop.
#[derive(Default)]
pub(crate) struct CompactorSignal {
    flags: Mutex<Flags>,
    cv: Condvar,
}

#[derive(Default)]
struct Flags {
    stop: bool,
    kick: bool,
}

impl CompactorSignal {
    /// Ask for a compaction now.
    pub fn kick(&self) {
        self.flags.lock().kick = true;
        self.cv.notify_one();
    }

    pub fn stop(&self) {
        self.flags.lock().stop = true;
        self.cv.notify_one();
    }

    /// Wait for a kick, a stop or `interval`, whichever comes first. False once stopped.
    pub fn wait(&self, interval: Duration) -> bool {
        let mut flags = self.flags.lock();
        if !flags.stop && !flags.kick {
            self.cv.wait_for(&mut flags, interval);
        }
        flags.kick = false;
        !flags.stop
    }
}
