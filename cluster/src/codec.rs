//! The bytes Siren puts on the log and in the metadata store, and their decoders.
//!
//! Everything is one kind of frame (layout in `docs/CLUSTER.md`, "Formats"):
//!
//! ```text
//! magic "SRNL" | version u8 | kind u8 | payload length u32 LE | payload | crc32c u32 LE
//! ```
//!
//! The checksum covers every byte before it. Partition streams carry [`LogRecord::Events`] and
//! [`LogRecord::DeleteUsers`], the catalog stream [`LogRecord::Items`]; metadata values are JSON
//! payloads in frames of their own kinds; checkpoints are sequences of frames.

use siren_engine::format::{checksum_matches, Reader};
use siren_engine::{DecodeError, Event, Item, SemId, MAX_SEMID_LEVELS};

use crate::error::{Error, Result};

pub const MAGIC: [u8; 4] = *b"SRNL";
pub const VERSION: u8 = 1;
/// Magic, version, kind and length.
pub const HEADER_BYTES: usize = 10;
/// The checksum after the payload.
pub const TRAILER_BYTES: usize = 4;
/// Bytes one event takes in an events payload.
pub const EVENT_BYTES: usize = 27;

/// What a frame holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Events = 1,
    DeleteUsers = 2,
    Items = 3,
    ClusterConfig = 16,
    Assignment = 17,
    NodeInfo = 18,
    CheckpointHeader = 32,
    CheckpointChunk = 33,
    CheckpointEnd = 34,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Events,
            2 => Kind::DeleteUsers,
            3 => Kind::Items,
            16 => Kind::ClusterConfig,
            17 => Kind::Assignment,
            18 => Kind::NodeInfo,
            32 => Kind::CheckpointHeader,
            33 => Kind::CheckpointChunk,
            34 => Kind::CheckpointEnd,
            _ => return None,
        })
    }
}

/// One message of a partition stream or of the catalog stream.
#[derive(Debug, Clone, PartialEq)]
pub enum LogRecord {
    /// Events of users of the stream's partition, in the order they are to be applied.
    Events(Vec<Event>),
    /// Users of the stream's partition to delete.
    DeleteUsers(Vec<u64>),
    /// Catalog items to insert or replace (catalog stream only).
    Items(Vec<Item>),
}

/// Wraps `payload` in a frame of `kind`.
pub fn frame(kind: Kind, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_BYTES + payload.len() + TRAILER_BYTES);
    frame_into(&mut out, kind, payload);
    out
}

/// Appends a frame of `kind` around `payload` to `out`.
pub fn frame_into(out: &mut Vec<u8>, kind: Kind, payload: &[u8]) {
    let start = out.len();
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(kind as u8);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
    let crc = crc32c::crc32c(&out[start..]);
    out.extend_from_slice(&crc.to_le_bytes());
}

/// The total length of the frame that starts `buf`, from its header, or `None` if fewer than
/// [`HEADER_BYTES`] bytes are given. Checks nothing but the length field.
pub fn frame_len(buf: &[u8]) -> Option<usize> {
    let len = u32::from_le_bytes(buf.get(6..10)?.try_into().ok()?);
    Some(HEADER_BYTES + len as usize + TRAILER_BYTES)
}

/// Checks the frame that is exactly `buf` and returns its kind and payload. `what` names the
/// frame in errors ("partition 3 message 17").
pub fn unframe<'a>(buf: &'a [u8], what: &str) -> Result<(Kind, &'a [u8])> {
    let bad = |detail: String| Error::corrupt(what, detail);
    if buf.len() < HEADER_BYTES + TRAILER_BYTES {
        return Err(bad(format!("{} bytes is shorter than a frame", buf.len())));
    }
    if buf[..4] != MAGIC {
        return Err(bad(format!("magic {:02x?} is not {MAGIC:02x?}", &buf[..4])));
    }
    let body = buf.len() - TRAILER_BYTES;
    let stored = u32::from_le_bytes(buf[body..].try_into().expect("4 bytes"));
    // Fuzz builds accept any checksum, to reach the decoders behind it.
    if !checksum_matches(stored, crc32c::crc32c(&buf[..body])) {
        return Err(bad("checksum mismatch".into()));
    }
    if buf[4] != VERSION {
        return Err(Error::UnsupportedVersion {
            what: what.to_string(),
            found: buf[4],
            supported: VERSION,
        });
    }
    let kind = Kind::from_u8(buf[5]).ok_or_else(|| bad(format!("unknown kind {}", buf[5])))?;
    let len = u32::from_le_bytes(buf[6..10].try_into().expect("4 bytes")) as usize;
    if HEADER_BYTES + len != body {
        return Err(bad(format!(
            "payload length {len} does not fit a frame of {} bytes",
            buf.len()
        )));
    }
    Ok((kind, &buf[HEADER_BYTES..body]))
}

/// Checks the frame `buf` and that it is of `kind`.
pub fn unframe_kind<'a>(buf: &'a [u8], kind: Kind, what: &str) -> Result<&'a [u8]> {
    match unframe(buf, what)? {
        (k, payload) if k == kind => Ok(payload),
        (k, _) => Err(Error::corrupt(
            what,
            format!("a {k:?} frame, expected {kind:?}"),
        )),
    }
}

impl LogRecord {
    /// The record as one frame, ready to publish.
    pub fn encode(&self) -> Vec<u8> {
        let mut payload = Vec::new();
        let kind = match self {
            LogRecord::Events(events) => {
                encode_events(&mut payload, events);
                Kind::Events
            }
            LogRecord::DeleteUsers(users) => {
                payload.extend_from_slice(&(users.len() as u32).to_le_bytes());
                for u in users {
                    payload.extend_from_slice(&u.to_le_bytes());
                }
                Kind::DeleteUsers
            }
            LogRecord::Items(items) => {
                payload.extend_from_slice(&(items.len() as u32).to_le_bytes());
                for it in items {
                    encode_item(&mut payload, it);
                }
                Kind::Items
            }
        };
        frame(kind, &payload)
    }

    /// Decodes a message of a stream.
    pub fn decode(buf: &[u8], what: &str) -> Result<LogRecord> {
        let (kind, payload) = unframe(buf, what)?;
        let at = |e: DecodeError| decode_error(what, e);
        let mut r = Reader::new(payload);
        let record = match kind {
            Kind::Events => LogRecord::Events(decode_events(&mut r).map_err(at)?),
            Kind::DeleteUsers => {
                let n = counted(&mut r, 8).map_err(at)?;
                LogRecord::DeleteUsers(
                    (0..n)
                        .map(|_| r.u64())
                        .collect::<Result<_, _>>()
                        .map_err(at)?,
                )
            }
            Kind::Items => {
                // The smallest item is 18 bytes (no SemID, no embedding).
                let n = counted(&mut r, 18).map_err(at)?;
                let items = (0..n)
                    .map(|_| decode_item(&mut r))
                    .collect::<Result<_, _>>();
                LogRecord::Items(items.map_err(at)?)
            }
            other => {
                return Err(Error::corrupt(
                    what,
                    format!("a {other:?} frame where a log record belongs"),
                ))
            }
        };
        if r.remaining() != 0 {
            return Err(Error::corrupt(
                what,
                format!("{} bytes after the record", r.remaining()),
            ));
        }
        Ok(record)
    }
}

pub(crate) fn decode_error(what: &str, e: DecodeError) -> Error {
    match e {
        DecodeError::Corrupt(detail) => Error::corrupt(what, detail),
        DecodeError::Version {
            found, supported, ..
        } => Error::UnsupportedVersion {
            what: what.to_string(),
            found: found.min(255) as u8,
            supported: supported.min(255) as u8,
        },
        // A kind of damage added to the engine later: still damage.
        other => Error::corrupt(what, other.to_string()),
    }
}

/// A count followed by that many elements of at least `min_bytes` each: the count is checked
/// against the bytes left, so a forged count cannot make the decoder allocate.
pub(crate) fn counted(r: &mut Reader<'_>, min_bytes: usize) -> Result<usize, DecodeError> {
    let n = r.u32()? as usize;
    if n.saturating_mul(min_bytes) > r.remaining() {
        return Err(DecodeError::corrupt(format!(
            "count {n} needs at least {} bytes, {} remain",
            n.saturating_mul(min_bytes),
            r.remaining()
        )));
    }
    Ok(n)
}

/// A count and that many events, [`EVENT_BYTES`] each.
pub(crate) fn encode_events(out: &mut Vec<u8>, events: &[Event]) {
    out.extend_from_slice(&(events.len() as u32).to_le_bytes());
    for e in events {
        out.extend_from_slice(&e.user.to_le_bytes());
        out.extend_from_slice(&e.ts.to_le_bytes());
        out.extend_from_slice(&e.item.to_le_bytes());
        out.push(e.action);
        out.extend_from_slice(&e.domain.to_le_bytes());
    }
}

pub(crate) fn decode_events(r: &mut Reader<'_>) -> Result<Vec<Event>, DecodeError> {
    let n = counted(r, EVENT_BYTES)?;
    (0..n)
        .map(|_| {
            Ok(Event {
                user: r.u64()?,
                ts: r.i64()?,
                item: r.u64()?,
                action: r.u8()?,
                domain: r.u16()?,
            })
        })
        .collect()
}

fn encode_item(out: &mut Vec<u8>, it: &Item) {
    out.extend_from_slice(&it.id.to_le_bytes());
    out.extend_from_slice(&it.category.to_le_bytes());
    let codes = it.semid.as_ref().map(|s| s.codes()).unwrap_or(&[]);
    out.push(codes.len() as u8);
    for c in codes {
        out.extend_from_slice(&c.to_le_bytes());
    }
    match &it.embedding {
        Some(v) => {
            out.push(1);
            out.extend_from_slice(&(v.len() as u32).to_le_bytes());
            for x in v {
                out.extend_from_slice(&x.to_le_bytes());
            }
        }
        None => out.push(0),
    }
}

fn decode_item(r: &mut Reader<'_>) -> Result<Item, DecodeError> {
    let id = r.u64()?;
    let category = r.u32()?;
    let levels = usize::from(r.u8()?);
    if levels > MAX_SEMID_LEVELS {
        return Err(DecodeError::corrupt(format!(
            "item {id}: {levels} SemID levels, at most {MAX_SEMID_LEVELS}"
        )));
    }
    let mut codes = [0u16; MAX_SEMID_LEVELS];
    for c in codes.iter_mut().take(levels) {
        *c = r.u16()?;
    }
    let semid = match levels {
        0 => None,
        n => Some(SemId::new(&codes[..n]).map_err(|e| DecodeError::corrupt(e.to_string()))?),
    };
    let embedding = match r.u8()? {
        0 => None,
        1 => {
            let dim = counted(r, 4)?;
            let v: Vec<f32> = (0..dim).map(|_| r.f32()).collect::<Result<_, _>>()?;
            // No producer writes a value the engine refuses (found by fuzzing: a NaN decoded,
            // and would have stopped every node's catalog at the engine instead of here).
            if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                return Err(DecodeError::corrupt(format!(
                    "item {id}: embedding value {i} is not finite"
                )));
            }
            Some(v)
        }
        b => {
            return Err(DecodeError::corrupt(format!(
                "item {id}: embedding flag {b} is not 0 or 1"
            )))
        }
    };
    Ok(Item {
        id,
        category,
        semid,
        embedding,
    })
}

/// A metadata value: JSON in a frame of its own kind, so that a value of one kind is never read
/// as another and damage is caught by the checksum.
pub(crate) fn encode_json<T: serde::Serialize>(kind: Kind, value: &T) -> Vec<u8> {
    frame(
        kind,
        &serde_json::to_vec(value).expect("metadata serialises"),
    )
}

pub(crate) fn decode_json<T: serde::de::DeserializeOwned>(
    buf: &[u8],
    kind: Kind,
    what: &str,
) -> Result<T> {
    let payload = unframe_kind(buf, kind, what)?;
    serde_json::from_slice(payload).map_err(|e| Error::corrupt(what, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<LogRecord> {
        vec![
            LogRecord::Events(vec![
                Event {
                    user: 7,
                    ts: -5,
                    item: u64::MAX,
                    action: 3,
                    domain: 65535,
                },
                Event {
                    user: 8,
                    ts: 1_700_000_000_000,
                    item: 1,
                    action: 0,
                    domain: 0,
                },
            ]),
            LogRecord::Events(vec![]),
            LogRecord::DeleteUsers(vec![1, 2, u64::MAX]),
            LogRecord::Items(vec![
                Item {
                    id: 9,
                    category: 4,
                    semid: Some(SemId::new(&[1, 2, 65535]).unwrap()),
                    embedding: Some(vec![0.5, -1.25, 3.0]),
                },
                Item {
                    id: 10,
                    category: 0,
                    semid: None,
                    embedding: None,
                },
            ]),
        ]
    }

    #[test]
    fn records_round_trip() {
        for rec in sample() {
            let bytes = rec.encode();
            assert_eq!(frame_len(&bytes), Some(bytes.len()));
            assert_eq!(LogRecord::decode(&bytes, "test").unwrap(), rec);
        }
    }

    #[test]
    fn every_flipped_bit_and_every_truncation_is_refused() {
        for rec in sample() {
            let bytes = rec.encode();
            for i in 0..bytes.len() * 8 {
                let mut bad = bytes.clone();
                bad[i / 8] ^= 1 << (i % 8);
                assert!(
                    LogRecord::decode(&bad, "flip").is_err(),
                    "bit {i} of {rec:?}"
                );
            }
            for n in 0..bytes.len() {
                assert!(LogRecord::decode(&bytes[..n], "cut").is_err(), "cut at {n}");
            }
        }
    }

    #[test]
    fn forged_counts_and_versions_are_typed_errors() {
        // A valid frame whose count claims more events than the payload holds.
        let mut payload = 1_000_000u32.to_le_bytes().to_vec();
        payload.extend_from_slice(&[0; EVENT_BYTES]);
        let forged = frame(Kind::Events, &payload);
        assert!(matches!(
            LogRecord::decode(&forged, "forged"),
            Err(Error::Corrupt { .. })
        ));
        let mut future = LogRecord::DeleteUsers(vec![1]).encode();
        future[4] = VERSION + 1;
        let n = future.len() - TRAILER_BYTES;
        let crc = crc32c::crc32c(&future[..n]);
        future[n..].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(
            LogRecord::decode(&future, "future"),
            Err(Error::UnsupportedVersion { found: 2, .. })
        ));
        let nan = LogRecord::Items(vec![Item {
            id: 1,
            category: 0,
            semid: None,
            embedding: Some(vec![0.5, f32::NAN]),
        }]);
        assert!(matches!(
            LogRecord::decode(&nan.encode(), "nan"),
            Err(Error::Corrupt { .. })
        ));
        let meta = encode_json(Kind::NodeInfo, &1u32);
        assert!(LogRecord::decode(&meta, "meta").is_err());
        assert!(decode_json::<u32>(&meta, Kind::Assignment, "meta").is_err());
        assert_eq!(
            decode_json::<u32>(&meta, Kind::NodeInfo, "meta").unwrap(),
            1
        );
    }
}
