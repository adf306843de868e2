//! The one module that talks to RocksDB, and the one that knows its keys. Everything durable
//! and mutable lives here: the write path (pending events), user locations, the item catalog, the
//! manifest, the config, the compaction generation, the write count and the per-source sequence
//! numbers. Other modules read and write typed records ([`Store::manifest`], [`Batch::put_item`],
//! ...) and never see a key or a column family's layout, so that a RocksDB upgrade or a key
//! change touches only this file. Values are framed and checksummed by `records`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use rocksdb::{
    BottommostLevelCompaction, ColumnFamilyDescriptor, CompactOptions, DBCompressionType,
    DBRecoveryMode, IteratorMode, WriteBatch, WriteOptions, DB,
};

use crate::entry::Ev;
use crate::error::{corrupt, DecodeError, DecodeResult, Error, Result};
use crate::records::{self, Config, ItemRecord, Location, Manifest};
use crate::types::Durability;

/// Column families.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cf {
    /// The meta keys below: config, manifest, generation, write count.
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

// ---------------------------------------------------------------------------------------------
// Keys

/// Meta key of the settings fixed at creation ([`Config`]).
const CONFIG_KEY: &[u8] = b"config";
/// Meta key of the live segment files ([`Manifest`]).
const MANIFEST_KEY: &[u8] = b"manifest";
/// Meta key of the compaction generation (see `records::encode_generation`).
const GENERATION_KEY: &[u8] = b"generation";
/// Meta key of the write count (see [`Store::writes`]).
const WRITES_KEY: &[u8] = b"writes";

fn user_key(user: u64) -> [u8; 8] {
    user.to_be_bytes()
}

fn item_key(item: u64) -> [u8; 8] {
    item.to_be_bytes()
}

/// Big-endian, so that a user's pending records are adjacent and in append order.
fn pending_key(user: u64, seq: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&user.to_be_bytes());
    k[8..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// The (user, append sequence number) of a pending record's key.
pub fn parse_pending_key(k: &[u8]) -> DecodeResult<(u64, u64)> {
    let Ok(k) = <&[u8; 16]>::try_from(k) else {
        corrupt!("pending key of {} bytes", k.len());
    };
    let (user, seq) = k.split_at(8);
    Ok((
        parse_u64_key(user, "user")?,
        parse_u64_key(seq, "sequence")?,
    ))
}

/// A user or item key.
pub fn parse_u64_key(k: &[u8], what: &str) -> DecodeResult<u64> {
    match <[u8; 8]>::try_from(k) {
        Ok(b) => Ok(u64::from_be_bytes(b)),
        Err(_) => corrupt!("{what} key of {} bytes", k.len()),
    }
}

// ---------------------------------------------------------------------------------------------
// Errors

/// Map a RocksDB error: corruption becomes [`Error::DataCorruption`] naming the RocksDB
/// directory; anything else is [`Error::Store`], with RocksDB's error as its source.
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
            source: Box::new(e),
        }
    }
}

fn cf_options() -> rocksdb::Options {
    let mut o = rocksdb::Options::default();
    o.set_compression_type(DBCompressionType::Zstd);
    o
}

// ---------------------------------------------------------------------------------------------
// Writes

/// A group of writes applied atomically by [`Store::write`].
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
    fn put(&mut self, cf: Cf, key: impl Into<Vec<u8>>, value: Vec<u8>) {
        self.ops.push(Op::Put(cf, key.into(), value));
    }

    fn delete(&mut self, cf: Cf, key: impl Into<Vec<u8>>) {
        self.ops.push(Op::Delete(cf, key.into()));
    }

    /// Delete keys in `[from, to)`.
    fn delete_range(&mut self, cf: Cf, from: impl Into<Vec<u8>>, to: impl Into<Vec<u8>>) {
        self.ops.push(Op::DeleteRange(cf, from.into(), to.into()));
    }

    pub fn put_config(&mut self, config: &Config) {
        self.put(Cf::Meta, CONFIG_KEY, records::encode_config(config));
    }

    pub fn put_manifest(&mut self, manifest: &Manifest) {
        self.put(Cf::Meta, MANIFEST_KEY, records::encode_manifest(manifest));
    }

    pub fn put_generation(&mut self, generation: u64) {
        self.put(
            Cf::Meta,
            GENERATION_KEY,
            records::encode_generation(generation),
        );
    }

    pub fn put_item(&mut self, item: u64, record: &ItemRecord) {
        self.put(Cf::Items, item_key(item), records::encode_item(record));
    }

    /// Where `user`'s compacted entry is.
    pub fn put_location(&mut self, user: u64, location: &Location) {
        self.put(
            Cf::Users,
            user_key(user),
            records::encode_location(location),
        );
    }

    /// `user`'s events from the append with sequence number `seq`.
    pub fn put_pending(&mut self, user: u64, seq: u64, events: &[Ev]) {
        self.put(
            Cf::Pending,
            pending_key(user, seq),
            records::encode_pending(events),
        );
    }

    /// The last sequence number applied from append source `name`.
    pub fn put_source(&mut self, name: &str, last_seq: u64) {
        self.put(
            Cf::Sources,
            name.as_bytes(),
            records::encode_source(last_seq),
        );
    }

    /// Forget append source `name`.
    pub fn delete_source(&mut self, name: &str) {
        self.delete(Cf::Sources, name.as_bytes());
    }

    /// Delete `user`'s pending records with sequence numbers up to and including `upto`.
    pub fn delete_pending_through(&mut self, user: u64, upto: u64) {
        let from = pending_key(user, 0);
        match upto.checked_add(1) {
            Some(end) => self.delete_range(Cf::Pending, from, pending_key(user, end)),
            None => {
                // The range's end is exclusive: the last possible key goes on its own.
                self.delete_range(Cf::Pending, from, pending_key(user, u64::MAX));
                self.delete(Cf::Pending, pending_key(user, u64::MAX));
            }
        }
    }

    /// Delete every record of `user`: its pending records and its location.
    pub fn delete_user(&mut self, user: u64) {
        self.delete_pending_through(user, u64::MAX);
        self.delete(Cf::Users, user_key(user));
    }
}

// ---------------------------------------------------------------------------------------------
// The store

pub struct Store {
    db: DB,
    path: PathBuf,
    /// Write batches committed so far (persisted with each batch under [`WRITES_KEY`]).
    writes: AtomicU64,
    /// See [`Store::wal_damage`].
    wal_damage: Option<String>,
    /// A write failed: see [`Store::check_writable`].
    write_failed: AtomicBool,
}

/// Open RocksDB at `path` replaying its write-ahead log in `mode`.
fn open_db(path: &Path, mode: DBRecoveryMode) -> std::result::Result<DB, rocksdb::Error> {
    let mut opts = rocksdb::Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    opts.set_paranoid_checks(true);
    // Flushes of all column families are recorded as one MANIFEST edit: a damaged MANIFEST
    // then loses whole flushes, which the WATERMARK check at open detects, never a flush of
    // one family without the others.
    opts.set_atomic_flush(true);
    opts.set_wal_recovery_mode(mode);
    opts.set_compression_type(DBCompressionType::Zstd);
    opts.set_keep_log_file_num(4);
    let cfs = Cf::ALL
        .iter()
        .map(|cf| ColumnFamilyDescriptor::new(cf.name(), cf_options()));
    DB::open_cf_descriptors(&opts, path, cfs)
}

impl Store {
    /// Open the store. Its write-ahead log is replayed strictly first: up to a record cut short
    /// at the end (a write the crash interrupted), failing on a record whose checksum does not
    /// match. Such a record is either torn by a power cut (sectors of an unsynced write that
    /// never reached the disk) or damaged on the medium, and RocksDB cannot tell which; so the
    /// store is then opened again recovering to the point just before it (RocksDB's
    /// point-in-time recovery, which drops that record and everything after it), and
    /// [`Store::wal_damage`] says so. The power-loss harness found that the strict replay alone
    /// left a database that would not open after a power cut (docs/RELIABILITY.md).
    ///
    /// One damage neither replay reports: a run of zeros over a record header, which RocksDB
    /// takes for the log's preallocated end. The logs are checked for it before the replay
    /// ([`crate::wal_gap`]), and [`Store::wal_damage`] says so too.
    pub fn open(path: &Path) -> Result<Store> {
        let gap = crate::wal_gap::zeroed_gap(path)?;
        let (db, wal_damage) = match open_db(path, DBRecoveryMode::TolerateCorruptedTailRecords) {
            Ok(db) => (db, gap),
            Err(e) if e.kind() == rocksdb::ErrorKind::Corruption => {
                let db = open_db(path, DBRecoveryMode::PointInTime)
                    .map_err(|e2| map_err(path, "opening", e2))?;
                let damage = match gap {
                    Some(g) => format!("{}; {g}", e.into_string()),
                    None => e.into_string(),
                };
                (db, Some(damage))
            }
            Err(e) => return Err(map_err(path, "opening", e)),
        };
        let store = Store {
            db,
            path: path.to_path_buf(),
            writes: AtomicU64::new(0),
            wal_damage,
            write_failed: AtomicBool::new(false),
        };
        if let Some(n) = store.get_meta(WRITES_KEY, "write count", records::decode_writes)? {
            store.writes.store(n, Ordering::Relaxed);
        }
        Ok(store)
    }

    /// What RocksDB reported if, at open, its write-ahead log had a torn or damaged record and
    /// was replayed only up to it (the writes from that record on were dropped), or where a
    /// log's records stopped at a run of zeros that data followed.
    pub fn wal_damage(&self) -> Option<&str> {
        self.wal_damage.as_deref()
    }

    /// A corruption of the records kept here, in `block`: it names the RocksDB directory.
    pub fn corruption(&self, block: &str, e: DecodeError) -> Error {
        e.at(&self.path, block)
    }

    fn cf(&self, cf: Cf) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(cf.name())
            .expect("every column family is created at open")
    }

    fn get(&self, cf: Cf, key: &[u8], context: &'static str) -> Result<Option<Vec<u8>>> {
        self.db
            .get_cf(self.cf(cf), key)
            .map_err(|e| map_err(&self.path, context, e))
    }

    /// A meta record, decoded; corruption names it as `block`.
    fn get_meta<T>(
        &self,
        key: &[u8],
        block: &'static str,
        decode: fn(&[u8]) -> DecodeResult<T>,
    ) -> Result<Option<T>> {
        match self.get(Cf::Meta, key, "reading a meta record")? {
            Some(b) => decode(&b).map(Some).map_err(|e| self.corruption(block, e)),
            None => Ok(None),
        }
    }

    /// The settings fixed at creation; `None` in a new store.
    pub fn config(&self) -> Result<Option<Config>> {
        self.get_meta(CONFIG_KEY, "config", records::decode_config)
    }

    /// The live segment files; `None` before the first compaction or deletion.
    pub fn manifest(&self) -> Result<Option<Manifest>> {
        self.get_meta(MANIFEST_KEY, "manifest", records::decode_manifest)
    }

    /// Compactions that changed the set of segment files (0 in a new store).
    pub fn generation(&self) -> Result<u64> {
        Ok(self
            .get_meta(GENERATION_KEY, "generation", records::decode_generation)?
            .unwrap_or(0))
    }

    /// Visit every key and value of a column family in key order.
    fn scan(&self, cf: Cf, mut f: impl FnMut(&[u8], &[u8]) -> Result<()>) -> Result<()> {
        for kv in self.db.iterator_cf(self.cf(cf), IteratorMode::Start) {
            let (k, v) = kv.map_err(|e| map_err(&self.path, "scanning", e))?;
            f(&k, &v)?;
        }
        Ok(())
    }

    /// Every catalog item, in item id order.
    pub fn for_each_item(&self, mut f: impl FnMut(u64, ItemRecord) -> Result<()>) -> Result<()> {
        self.scan(Cf::Items, |k, v| {
            let id = parse_u64_key(k, "item").map_err(|e| self.corruption("items", e))?;
            let rec =
                records::decode_item(v).map_err(|e| self.corruption(&format!("item {id}"), e))?;
            f(id, rec)
        })
    }

    /// Every user's location, in user order.
    pub fn for_each_location(&self, mut f: impl FnMut(u64, Location) -> Result<()>) -> Result<()> {
        self.scan(Cf::Users, |k, v| {
            let user = parse_u64_key(k, "user").map_err(|e| self.corruption("users", e))?;
            let loc = records::decode_location(v)
                .map_err(|e| self.corruption(&format!("location of user {user}"), e))?;
            f(user, loc)
        })
    }

    /// Every pending record as (user, append sequence number, events), in that order: per
    /// user, in arrival order.
    pub fn for_each_pending(
        &self,
        mut f: impl FnMut(u64, u64, Vec<Ev>) -> Result<()>,
    ) -> Result<()> {
        self.scan(Cf::Pending, |k, v| {
            let (user, seq) = parse_pending_key(k).map_err(|e| self.corruption("pending", e))?;
            let evs = records::decode_pending(v).map_err(|e| {
                self.corruption(&format!("pending record user={user} seq={seq}"), e)
            })?;
            f(user, seq, evs)
        })
    }

    /// Every append source with its last applied sequence number.
    pub fn for_each_source(&self, mut f: impl FnMut(String, u64) -> Result<()>) -> Result<()> {
        self.scan(Cf::Sources, |k, v| {
            let name = String::from_utf8_lossy(k).into_owned();
            let last = records::decode_source(v)
                .map_err(|e| self.corruption(&format!("source {name}"), e))?;
            f(name, last)
        })
    }

    /// Decode every record of every column family. Returns how many records there are and what
    /// is wrong with them, without stopping at the first problem.
    pub fn verify(&self) -> (usize, Vec<Error>) {
        let mut count = 0;
        let mut problems = Vec::new();
        for cf in Cf::ALL {
            let res = self.scan(cf, |k, v| {
                count += 1;
                if let Err(e) = check_record(cf, k, v) {
                    problems.push(self.corruption(&format!("{} record {:02x?}", cf.name(), k), e));
                }
                Ok(())
            });
            if let Err(e) = res {
                problems.push(e);
            }
        }
        (count, problems)
    }

    /// Refuse to write, flush or checkpoint once a write failed (a full disk, a failed fsync):
    /// the write-ahead log's state is then unknown, RocksDB keeps its writer's error, and a flush
    /// or sync of that writer aborts the process in RocksDB builds with assertions. A reopen
    /// replays the log and clears this.
    fn check_writable(&self, context: &'static str) -> Result<()> {
        if self.write_failed.load(Ordering::Relaxed) {
            return Err(Error::Store {
                context,
                source: "an earlier write failed (disk full or I/O error); reopen the database"
                    .into(),
            });
        }
        Ok(())
    }

    /// Write batches committed so far. Every batch stores the new count, so a RocksDB that lost
    /// recent writes shows a smaller one (checked against the WATERMARK at open).
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    /// Commit `batch` atomically. Callers serialise writes (the engine's writer lock), so the
    /// write count each batch carries is exact.
    pub fn write(&self, batch: Batch, durability: Durability) -> Result<()> {
        self.check_writable("writing a batch")?;
        let n = self.writes() + 1;
        let mut wb = WriteBatch::default();
        wb.put_cf(self.cf(Cf::Meta), WRITES_KEY, records::encode_writes(n));
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
        self.db.write_opt(wb, &wo).map_err(|e| {
            self.write_failed.store(true, Ordering::Relaxed);
            map_err(&self.path, "writing a batch", e)
        })?;
        self.writes.store(n, Ordering::Relaxed);
        Ok(())
    }

    /// Flush every memtable to SST files (makes `Unlogged` writes durable). The meta family
    /// goes last: a MANIFEST that loses the tail of its edits then loses the write count with
    /// the data, which the WATERMARK check at open detects.
    pub fn flush(&self) -> Result<()> {
        self.check_writable("flushing")?;
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
        self.check_writable("flushing")?;
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
        self.check_writable("writing a checkpoint")?;
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

/// Decode one record as `verify` does.
fn check_record(cf: Cf, k: &[u8], v: &[u8]) -> DecodeResult<()> {
    match cf {
        Cf::Meta if k == CONFIG_KEY => records::decode_config(v).map(drop),
        Cf::Meta if k == MANIFEST_KEY => records::decode_manifest(v).map(drop),
        Cf::Meta if k == GENERATION_KEY => records::decode_generation(v).map(drop),
        Cf::Meta if k == WRITES_KEY => records::decode_writes(v).map(drop),
        Cf::Meta => Err(DecodeError::corrupt("unknown meta key")),
        Cf::Pending => parse_pending_key(k).and_then(|_| records::decode_pending(v).map(drop)),
        Cf::Users => parse_u64_key(k, "user").and_then(|_| records::decode_location(v).map(drop)),
        Cf::Items => parse_u64_key(k, "item").and_then(|_| records::decode_item(v).map(drop)),
        Cf::Sources => records::decode_source(v).map(drop),
    }
}
