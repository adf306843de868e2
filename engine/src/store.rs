//! The one module that talks to RocksDB. Everything durable and mutable lives here: the write
//! path (pending events), user locations, the item catalog, the manifest, the config and the
//! per-source sequence numbers. Keeping the crate behind this file means a RocksDB upgrade
//! touches only this file.

use std::path::{Path, PathBuf};

use rocksdb::{
    BottommostLevelCompaction, ColumnFamilyDescriptor, CompactOptions, DBCompressionType,
    DBRecoveryMode, IteratorMode, WriteBatch, WriteOptions, DB,
};

use crate::error::{Error, Result};
use crate::types::Durability;

/// Column families.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cf {
    /// `config`, `manifest`.
    Meta,
    /// (user BE, append seq BE) -> events of one user from one append batch.
    Pending,
    /// user BE -> location of its compacted entry.
    Users,
    /// item BE -> item record.
    Items,
    /// source name -> last applied sequence number.
    Sources,
}

impl Cf {
    pub const ALL: [Cf; 5] = [Cf::Meta, Cf::Pending, Cf::Users, Cf::Items, Cf::Sources];

    pub fn name(self) -> &'static str {
        match self {
            Cf::Meta => "meta",
            Cf::Pending => "pending",
            Cf::Users => "users",
            Cf::Items => "items",
            Cf::Sources => "sources",
        }
    }
}

pub struct Store {
    db: DB,
    path: PathBuf,
    /// Write batches committed so far (persisted with each batch under [`WRITES_KEY`]).
    writes: std::sync::atomic::AtomicU64,
}

/// Meta key of the write count.
pub const WRITES_KEY: &[u8] = b"writes";

/// Map a RocksDB error: corruption becomes [`Error::DataCorruption`] naming the RocksDB
/// directory; anything else is [`Error::Store`].
fn map_err(path: &Path, context: &'static str, e: rocksdb::Error) -> Error {
    if e.kind() == rocksdb::ErrorKind::Corruption {
        Error::DataCorruption {
            path: path.to_path_buf(),
            block: format!("RocksDB while {context}"),
            detail: e.into_string(),
        }
    } else {
        Error::Store {
            context,
            message: e.into_string(),
        }
    }
}

fn cf_options() -> rocksdb::Options {
    let mut o = rocksdb::Options::default();
    o.set_compression_type(DBCompressionType::Zstd);
    o
}

/// A group of writes applied atomically.
#[derive(Default)]
pub struct Batch {
    ops: Vec<Op>,
}

enum Op {
    Put(Cf, Vec<u8>, Vec<u8>),
    Delete(Cf, Vec<u8>),
    DeleteRange(Cf, Vec<u8>, Vec<u8>),
}

impl Batch {
    pub fn put(&mut self, cf: Cf, key: impl Into<Vec<u8>>, value: Vec<u8>) {
        self.ops.push(Op::Put(cf, key.into(), value));
    }
    pub fn delete(&mut self, cf: Cf, key: impl Into<Vec<u8>>) {
        self.ops.push(Op::Delete(cf, key.into()));
    }
    /// Delete keys in `[from, to)`.
    pub fn delete_range(&mut self, cf: Cf, from: impl Into<Vec<u8>>, to: impl Into<Vec<u8>>) {
        self.ops.push(Op::DeleteRange(cf, from.into(), to.into()));
    }
}

impl Store {
    pub fn open(path: &Path) -> Result<Store> {
        let mut opts = rocksdb::Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_paranoid_checks(true);
        // Flushes of all column families are recorded as one MANIFEST edit: a damaged MANIFEST
        // then loses whole flushes, which the WATERMARK check at open detects, never a flush of
        // one family without the others.
        opts.set_atomic_flush(true);
        // Replay the write-ahead log up to a torn tail (an unacknowledged write cut by a crash),
        // but fail on damage anywhere before it rather than silently dropping later records.
        opts.set_wal_recovery_mode(DBRecoveryMode::TolerateCorruptedTailRecords);
        opts.set_compression_type(DBCompressionType::Zstd);
        opts.set_keep_log_file_num(4);
        let cfs = Cf::ALL
            .iter()
            .map(|cf| ColumnFamilyDescriptor::new(cf.name(), cf_options()));
        let db =
            DB::open_cf_descriptors(&opts, path, cfs).map_err(|e| map_err(path, "opening", e))?;
        let store = Store {
            db,
            path: path.to_path_buf(),
            writes: std::sync::atomic::AtomicU64::new(0),
        };
        if let Some(b) = store.get(Cf::Meta, WRITES_KEY)? {
            let n = crate::records::decode_writes(&b).map_err(|e| e.at(path, "write count"))?;
            store.writes.store(n, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn cf(&self, cf: Cf) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(cf.name())
            .expect("every column family is created at open")
    }

    pub fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.db
            .get_cf(self.cf(cf), key)
            .map_err(|e| map_err(&self.path, "reading", e))
    }

    /// Visit every key and value of a column family in key order.
    pub fn scan(&self, cf: Cf, mut f: impl FnMut(&[u8], &[u8]) -> Result<()>) -> Result<()> {
        for kv in self.db.iterator_cf(self.cf(cf), IteratorMode::Start) {
            let (k, v) = kv.map_err(|e| map_err(&self.path, "scanning", e))?;
            f(&k, &v)?;
        }
        Ok(())
    }

    /// Write batches committed so far.
    pub fn writes(&self) -> u64 {
        self.writes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Commit `batch` atomically. Callers serialise writes (the engine's writer lock), so the
    /// write count each batch carries is exact.
    pub fn write(&self, batch: Batch, durability: Durability) -> Result<()> {
        let n = self.writes() + 1;
        let mut wb = WriteBatch::default();
        wb.put_cf(
            self.cf(Cf::Meta),
            WRITES_KEY,
            crate::records::encode_writes(n),
        );
        for op in batch.ops {
            match op {
                Op::Put(cf, k, v) => wb.put_cf(self.cf(cf), k, v),
                Op::Delete(cf, k) => wb.delete_cf(self.cf(cf), k),
                Op::DeleteRange(cf, a, b) => wb.delete_range_cf(self.cf(cf), a, b),
            }
        }
        let mut wo = WriteOptions::default();
        match durability {
            Durability::Sync => wo.set_sync(true),
            Durability::Buffered => {}
            Durability::Unlogged => wo.disable_wal(true),
        }
        self.db
            .write_opt(wb, &wo)
            .map_err(|e| map_err(&self.path, "writing", e))?;
        self.writes.store(n, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Flush every memtable to SST files (makes `Unlogged` writes durable). The meta family
    /// goes last: a MANIFEST that loses the tail of its edits then loses the write count with
    /// the data, which the WATERMARK check at open detects.
    pub fn flush(&self) -> Result<()> {
        for cf in [Cf::Pending, Cf::Users, Cf::Items, Cf::Sources, Cf::Meta] {
            self.db
                .flush_cf(self.cf(cf))
                .map_err(|e| map_err(&self.path, "flushing", e))?;
        }
        self.db
            .flush_wal(true)
            .map_err(|e| map_err(&self.path, "syncing the WAL", e))
    }

    /// Run RocksDB's own compaction over a whole column family, bottommost level included, so
    /// that deleted keys and their tombstones are physically dropped from its files.
    pub fn compact_cf(&self, cf: Cf) -> Result<()> {
        self.db
            .flush_cf(self.cf(cf))
            .map_err(|e| map_err(&self.path, "flushing", e))?;
        let mut co = CompactOptions::default();
        co.set_bottommost_level_compaction(BottommostLevelCompaction::Force);
        self.db
            .compact_range_cf_opt(self.cf(cf), None::<&[u8]>, None::<&[u8]>, &co);
        Ok(())
    }

    /// A consistent copy of the whole store in the new directory `dest` (RocksDB's checkpoint:
    /// SST files hard-linked, memtables flushed first, so `Unlogged` writes are included).
    pub fn checkpoint(&self, dest: &Path) -> Result<()> {
        let cp = rocksdb::checkpoint::Checkpoint::new(&self.db)
            .map_err(|e| map_err(&self.path, "preparing a checkpoint", e))?;
        cp.create_checkpoint(dest)
            .map_err(|e| map_err(&self.path, "writing a checkpoint", e))
    }

    /// Bytes of SST files of a column family.
    pub fn sst_bytes(&self, cf: Cf) -> u64 {
        self.db
            .property_int_value_cf(self.cf(cf), "rocksdb.total-sst-files-size")
            .ok()
            .flatten()
            .unwrap_or(0)
    }
}
