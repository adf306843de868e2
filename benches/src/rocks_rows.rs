//! The RocksDB baseline: one row per event, the layout a team would start with. Key: user
//! (8 bytes, big-endian) + time (8 bytes, big-endian with the sign bit flipped so that negative
//! times sort first) + a per-user sequence number (4 bytes) so that equal times stay distinct;
//! value: item (8 bytes) + action (1) + domain (2). zstd on every level, as in Siren's own
//! RocksDB. A user's history is a prefix scan.

use std::collections::HashMap;
use std::path::Path;

use rocksdb::{DBCompressionType, Options, ReadOptions, WriteBatch, WriteOptions, DB};
use siren_engine::Event;

pub type Result<T> = std::result::Result<T, rocksdb::Error>;

pub struct RocksRows {
    db: DB,
    seq: HashMap<u64, u32>,
}

fn key(user: u64, ts: i64, seq: u32) -> [u8; 20] {
    let mut k = [0u8; 20];
    k[..8].copy_from_slice(&user.to_be_bytes());
    k[8..16].copy_from_slice(&((ts as u64) ^ (1 << 63)).to_be_bytes());
    k[16..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn value(e: &Event) -> [u8; 11] {
    let mut v = [0u8; 11];
    v[..8].copy_from_slice(&e.item.to_le_bytes());
    v[8] = e.action;
    v[9..].copy_from_slice(&e.domain.to_le_bytes());
    v
}

impl RocksRows {
    pub fn open(path: &Path) -> Result<Self> {
        let mut o = Options::default();
        o.create_if_missing(true);
        o.set_compression_type(DBCompressionType::Zstd);
        o.set_bottommost_compression_type(DBCompressionType::Zstd);
        Ok(RocksRows {
            db: DB::open(&o, path)?,
            seq: HashMap::new(),
        })
    }

    /// One write batch for `events`; `sync` fsyncs the write-ahead log before returning, as
    /// Siren's `Durability::Sync` does.
    pub fn append(&mut self, events: &[Event], sync: bool) -> Result<()> {
        let mut b = WriteBatch::default();
        for e in events {
            let s = self.seq.entry(e.user).or_insert(0);
            b.put(key(e.user, e.ts, *s), value(e));
            *s += 1;
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        self.db.write_opt(b, &wo)
    }

    /// Flush the memtable and compact everything into the last level, so that the bytes on disk
    /// are the steady state.
    pub fn settle(&self) -> Result<()> {
        self.db.flush()?;
        self.db.compact_range::<&[u8], &[u8]>(None, None);
        Ok(())
    }

    /// Every event of `user` by a prefix scan.
    pub fn read_user(&self, user: u64) -> Result<Vec<Event>> {
        let mut ro = ReadOptions::default();
        ro.set_iterate_lower_bound(user.to_be_bytes().to_vec());
        if let Some(next) = user.checked_add(1) {
            ro.set_iterate_upper_bound(next.to_be_bytes().to_vec());
        }
        let mut it = self.db.raw_iterator_opt(ro);
        it.seek(user.to_be_bytes());
        let mut out = Vec::new();
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            if k.len() != 20 || v.len() != 11 {
                break;
            }
            let ts = (u64::from_be_bytes(k[8..16].try_into().expect("8 bytes")) ^ (1 << 63)) as i64;
            out.push(Event {
                user,
                ts,
                item: u64::from_le_bytes(v[..8].try_into().expect("8 bytes")),
                action: v[8],
                domain: u16::from_le_bytes([v[9], v[10]]),
            });
            it.next();
        }
        it.status()?;
        Ok(out)
    }
}
