//! The values Siren keeps in RocksDB (their keys are `store`'s) and the bytes of the WATERMARK
//! file. Each is framed as `magic[4] | version u8 | body | crc32c u32` (the CRC covers magic,
//! version and body), so a damaged value is caught by Siren even where RocksDB's own block
//! checksums are not consulted.

use crate::codec::{push_crc, split_crc, Reader};
use crate::error::{corrupt, DecodeError, DecodeResult};
use crate::types::Ev;
use crate::types::{SemId, MAX_SEMID_LEVELS};

pub const RECORD_VERSION: u8 = 1;

fn frame(magic: &[u8; 4], body: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(magic);
    out.push(RECORD_VERSION);
    body(&mut out);
    push_crc(&mut out, 0);
    out
}

fn unframe<'a>(bytes: &'a [u8], magic: &[u8; 4], what: &'static str) -> DecodeResult<Reader<'a>> {
    let body = split_crc(bytes, what)?;
    let mut r = Reader::new(body);
    if r.bytes(4)? != magic {
        corrupt!("{what}: bad magic");
    }
    let version = r.u8()?;
    if version != RECORD_VERSION {
        return Err(DecodeError::Version {
            what,
            found: u32::from(version),
            supported: u32::from(RECORD_VERSION),
        });
    }
    Ok(r)
}

// ---------------------------------------------------------------------------------------------
// Pending events: one record per (user, append batch).

const EV_LEN: usize = 19;

pub fn encode_pending(events: &[Ev]) -> Vec<u8> {
    frame(b"SPND", |out| {
        out.extend_from_slice(&(events.len() as u32).to_le_bytes());
        for e in events {
            out.extend_from_slice(&e.ts.to_le_bytes());
            out.extend_from_slice(&e.item.to_le_bytes());
            out.push(e.action);
            out.extend_from_slice(&e.domain.to_le_bytes());
        }
    })
}

pub fn decode_pending(bytes: &[u8]) -> DecodeResult<Vec<Ev>> {
    let mut r = unframe(bytes, b"SPND", "pending record")?;
    let n = r.u32()? as usize;
    if n.checked_mul(EV_LEN) != Some(r.remaining()) {
        corrupt!(
            "pending record claims {n} events in {} bytes",
            r.remaining()
        );
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(Ev {
            ts: r.i64()?,
            item: r.u64()?,
            action: r.u8()?,
            domain: r.u16()?,
        });
    }
    r.finish()?;
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// User location: where a user's compacted entry lives.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub segment: u64,
    pub offset: u64,
    pub len: u32,
    pub n_events: u32,
}

pub fn encode_location(l: &Location) -> Vec<u8> {
    frame(b"SLOC", |out| {
        out.extend_from_slice(&l.segment.to_le_bytes());
        out.extend_from_slice(&l.offset.to_le_bytes());
        out.extend_from_slice(&l.len.to_le_bytes());
        out.extend_from_slice(&l.n_events.to_le_bytes());
    })
}

pub fn decode_location(bytes: &[u8]) -> DecodeResult<Location> {
    let mut r = unframe(bytes, b"SLOC", "user location")?;
    let l = Location {
        segment: r.u64()?,
        offset: r.u64()?,
        len: r.u32()?,
        n_events: r.u32()?,
    };
    r.finish()?;
    Ok(l)
}

// ---------------------------------------------------------------------------------------------
// Catalog items.

/// An item as stored: embedding already quantised.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemRecord {
    pub internal: u32,
    pub category: u32,
    pub semid: Option<SemId>,
    /// Catalog SemID generation at which this item's SemID last changed (0: never changed since
    /// the item was first stored).
    pub semid_gen: u64,
    /// Quantised embedding and its scale (`value = q * scale`).
    pub embedding: Option<(f32, Vec<i8>)>,
    /// The item is only known from events; nobody upserted it.
    pub stub: bool,
}

pub fn encode_item(it: &ItemRecord) -> Vec<u8> {
    frame(b"SITM", |out| {
        let flags = u8::from(it.semid.is_some())
            | (u8::from(it.embedding.is_some()) << 1)
            | (u8::from(it.stub) << 2);
        out.push(flags);
        out.extend_from_slice(&it.internal.to_le_bytes());
        out.extend_from_slice(&it.category.to_le_bytes());
        out.extend_from_slice(&it.semid_gen.to_le_bytes());
        if let Some(s) = &it.semid {
            out.push(s.levels() as u8);
            for c in s.codes() {
                out.extend_from_slice(&c.to_le_bytes());
            }
        }
        if let Some((scale, q)) = &it.embedding {
            out.extend_from_slice(&(q.len() as u32).to_le_bytes());
            out.extend_from_slice(&scale.to_le_bytes());
            out.extend(q.iter().map(|&v| v as u8));
        }
    })
}

pub fn decode_item(bytes: &[u8]) -> DecodeResult<ItemRecord> {
    let mut r = unframe(bytes, b"SITM", "item record")?;
    let flags = r.u8()?;
    if flags > 7 {
        corrupt!("item record flags {flags:#x}");
    }
    let internal = r.u32()?;
    let category = r.u32()?;
    let semid_gen = r.u64()?;
    let semid = if flags & 1 != 0 {
        let n = r.u8()? as usize;
        if n == 0 || n > MAX_SEMID_LEVELS {
            corrupt!("item SemID of {n} levels");
        }
        let mut codes = [0u16; MAX_SEMID_LEVELS];
        for c in codes.iter_mut().take(n) {
            *c = r.u16()?;
        }
        Some(SemId::new(&codes[..n]).map_err(|e| DecodeError::corrupt(e.to_string()))?)
    } else {
        None
    };
    let embedding = if flags & 2 != 0 {
        let dim = r.u32()? as usize;
        let scale = r.f32()?;
        if !scale.is_finite() || scale < 0.0 {
            corrupt!("item embedding scale {scale}");
        }
        let q = r.bytes(dim)?.iter().map(|&b| b as i8).collect();
        Some((scale, q))
    } else {
        None
    };
    r.finish()?;
    Ok(ItemRecord {
        internal,
        category,
        semid,
        semid_gen,
        embedding,
        stub: flags & 4 != 0,
    })
}

// ---------------------------------------------------------------------------------------------
// Manifest: the live segment files.

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    pub id: u64,
    pub file_len: u64,
    /// A deleted user's bytes are in this file: the next compaction must rewrite it.
    pub needs_erase: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Manifest {
    pub next_segment_id: u64,
    /// Highest append sequence number folded into segments.
    pub compacted_seq: u64,
    pub segments: Vec<SegmentInfo>,
}

pub fn encode_manifest(m: &Manifest) -> Vec<u8> {
    frame(b"SMAN", |out| {
        out.extend_from_slice(&m.next_segment_id.to_le_bytes());
        out.extend_from_slice(&m.compacted_seq.to_le_bytes());
        out.extend_from_slice(&(m.segments.len() as u32).to_le_bytes());
        for s in &m.segments {
            out.extend_from_slice(&s.id.to_le_bytes());
            out.extend_from_slice(&s.file_len.to_le_bytes());
            out.push(u8::from(s.needs_erase));
        }
    })
}

pub fn decode_manifest(bytes: &[u8]) -> DecodeResult<Manifest> {
    let mut r = unframe(bytes, b"SMAN", "manifest")?;
    let next_segment_id = r.u64()?;
    let compacted_seq = r.u64()?;
    let n = r.u32()? as usize;
    if n.checked_mul(17) != Some(r.remaining()) {
        corrupt!("manifest claims {n} segments in {} bytes", r.remaining());
    }
    let mut segments = Vec::with_capacity(n);
    for _ in 0..n {
        let id = r.u64()?;
        let file_len = r.u64()?;
        let needs_erase = match r.u8()? {
            0 => false,
            1 => true,
            f => corrupt!("manifest segment flag {f}"),
        };
        if id >= next_segment_id {
            corrupt!("segment {id} is not below the next segment id {next_segment_id}");
        }
        segments.push(SegmentInfo {
            id,
            file_len,
            needs_erase,
        });
    }
    r.finish()?;
    Ok(Manifest {
        next_segment_id,
        compacted_seq,
        segments,
    })
}

// ---------------------------------------------------------------------------------------------
// Config: the settings fixed at creation.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    pub embedding_dim: u32,
    pub semid_levels: u8,
    pub semid_codebook_size: u32,
}

pub fn encode_config(c: &Config) -> Vec<u8> {
    frame(b"SCFG", |out| {
        out.extend_from_slice(&c.embedding_dim.to_le_bytes());
        out.push(c.semid_levels);
        out.extend_from_slice(&c.semid_codebook_size.to_le_bytes());
    })
}

pub fn decode_config(bytes: &[u8]) -> DecodeResult<Config> {
    let mut r = unframe(bytes, b"SCFG", "config")?;
    let c = Config {
        embedding_dim: r.u32()?,
        semid_levels: r.u8()?,
        semid_codebook_size: r.u32()?,
    };
    r.finish()?;
    Ok(c)
}

// ---------------------------------------------------------------------------------------------
// Sources: last applied sequence number per append source.

pub fn encode_source(last_seq: u64) -> Vec<u8> {
    frame(b"SSRC", |out| {
        out.extend_from_slice(&last_seq.to_le_bytes())
    })
}

pub fn decode_source(bytes: &[u8]) -> DecodeResult<u64> {
    let mut r = unframe(bytes, b"SSRC", "source record")?;
    let v = r.u64()?;
    r.finish()?;
    Ok(v)
}

// ---------------------------------------------------------------------------------------------
// Generation: how many compactions have changed the set of segment files. Stored in RocksDB and,
// after each such commit, in the file `<db>/WATERMARK` (see docs/ARCHITECTURE.md, "Recovery").

pub fn encode_generation(g: u64) -> Vec<u8> {
    frame(b"SGEN", |out| out.extend_from_slice(&g.to_le_bytes()))
}

pub fn decode_generation(bytes: &[u8]) -> DecodeResult<u64> {
    let mut r = unframe(bytes, b"SGEN", "generation record")?;
    let v = r.u64()?;
    r.finish()?;
    Ok(v)
}

/// How many write batches the store has committed: every batch carries the new count, so that a
/// store that lost recent flushes shows a smaller one.
pub fn encode_writes(n: u64) -> Vec<u8> {
    frame(b"SWRT", |out| out.extend_from_slice(&n.to_le_bytes()))
}

pub fn decode_writes(bytes: &[u8]) -> DecodeResult<u64> {
    let mut r = unframe(bytes, b"SWRT", "write count record")?;
    let v = r.u64()?;
    r.finish()?;
    Ok(v)
}

/// The file `<db>/WATERMARK`: what RocksDB is known to hold, kept outside RocksDB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Watermark {
    /// The generation of the last committed compaction that changed the segment files.
    pub generation: u64,
    /// RocksDB's write count (see [`encode_writes`]) at its last flush by Siren: a RocksDB that
    /// opens with a smaller count has lost flushed records.
    pub durable_writes: u64,
}

pub fn encode_watermark(w: &Watermark) -> Vec<u8> {
    frame(b"SWMK", |out| {
        out.extend_from_slice(&w.generation.to_le_bytes());
        out.extend_from_slice(&w.durable_writes.to_le_bytes());
    })
}

pub fn decode_watermark(bytes: &[u8]) -> DecodeResult<Watermark> {
    let mut r = unframe(bytes, b"SWMK", "watermark")?;
    let w = Watermark {
        generation: r.u64()?,
        durable_writes: r.u64()?,
    };
    r.finish()?;
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample_item() -> ItemRecord {
        ItemRecord {
            internal: 4,
            category: 2,
            semid: Some(SemId::new(&[1, 2, 3]).unwrap()),
            semid_gen: 9,
            embedding: Some((0.5, vec![1, -2, 127])),
            stub: false,
        }
    }

    fn sample_manifest() -> Manifest {
        Manifest {
            next_segment_id: 9,
            compacted_seq: 77,
            segments: vec![SegmentInfo {
                id: 3,
                file_len: 1000,
                needs_erase: true,
            }],
        }
    }

    fn all_records() -> Vec<Vec<u8>> {
        let stub = ItemRecord {
            internal: 5,
            category: 0,
            semid: None,
            semid_gen: 0,
            embedding: None,
            stub: true,
        };
        vec![
            encode_pending(&[
                Ev {
                    ts: -1,
                    item: 9,
                    action: 2,
                    domain: 3,
                },
                Ev {
                    ts: 5,
                    item: u64::MAX,
                    action: 0,
                    domain: 0,
                },
            ]),
            encode_location(&Location {
                segment: 3,
                offset: 28,
                len: 100,
                n_events: 7,
            }),
            encode_item(&sample_item()),
            encode_item(&stub),
            encode_manifest(&sample_manifest()),
            encode_config(&Config {
                embedding_dim: 128,
                semid_levels: 3,
                semid_codebook_size: 256,
            }),
            encode_source(41),
        ]
    }

    fn decode_any(i: usize, b: &[u8]) -> bool {
        match i {
            0 => decode_pending(b).is_ok(),
            1 => decode_location(b).is_ok(),
            2 | 3 => decode_item(b).is_ok(),
            4 => decode_manifest(b).is_ok(),
            5 => decode_config(b).is_ok(),
            _ => decode_source(b).is_ok(),
        }
    }

    #[test]
    fn round_trips() {
        for (i, r) in all_records().iter().enumerate() {
            assert!(decode_any(i, r), "record {i}");
        }
        assert_eq!(
            decode_item(&encode_item(&sample_item())).unwrap(),
            sample_item()
        );
        assert_eq!(
            decode_manifest(&encode_manifest(&sample_manifest())).unwrap(),
            sample_manifest()
        );
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        for (i, r) in all_records().iter().enumerate() {
            for pos in 0..r.len() {
                for bit in 0..8 {
                    let mut b = r.clone();
                    b[pos] ^= 1 << bit;
                    assert!(!decode_any(i, &b), "record {i} flip {pos}.{bit}");
                }
            }
        }
    }

    proptest! {
        #[test]
        fn decoders_never_panic(b in proptest::collection::vec(any::<u8>(), 0..100)) {
            for i in 0..7 { let _ = decode_any(i, &b); }
        }
    }
}
