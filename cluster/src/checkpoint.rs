//! A partition checkpoint: every user of one partition with their retained events, and the
//! stream position they reflect, as shipped from a ready replica to a joining one.
//!
//! A node keeps all its partitions in one database, so a partition's checkpoint is logical: the
//! users' sequences, not the database's files. Re-appending a user's retained events in their
//! order gives the same sequence, retention and answers (the cluster fixes the retention
//! options, [`crate::DbShape`]). The file is a sequence of frames ([`crate::codec`]):
//!
//! ```text
//! CheckpointHeader  JSON {cluster, partition, partitions, position}
//! CheckpointChunk*  uncompressed length u32 LE | zstd( (user u64 LE | events)* )
//! CheckpointEnd     JSON {chunks, users, events}
//! ```
//!
//! where `events` is a count and 27 bytes per event as in a log record. Users appear once, in
//! ascending order; every event's user is its record's user and belongs to the partition.

use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};
use siren_engine::format::Reader;
use siren_engine::{AppendOptions, Db, Durability, Event, ReadRange, Snapshot};

use crate::codec::{
    decode_error, decode_events, decode_json, encode_events, frame_into, frame_len, unframe_kind,
    Kind, HEADER_BYTES,
};
use crate::error::{Error, Result};
use crate::log::StreamId;
use crate::partition::partition_of;

/// A user and their retained events, oldest first.
pub type UserEvents = (u64, Vec<Event>);

/// Uncompressed bytes per chunk before it is written.
const CHUNK_BYTES: usize = 4 << 20;
/// Users deleted per write when a partition is dropped.
const DROP_CHUNK: usize = 10_000;
/// Largest frame or decompressed chunk a reader accepts.
const MAX_CHUNK_BYTES: usize = 64 << 20;

/// What a checkpoint holds, from its first frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointHeader {
    pub cluster: String,
    pub partition: u32,
    pub partitions: u32,
    /// Every message of the partition's stream up to and including this one is reflected.
    pub position: u64,
}

/// Counts from the last frame (checked against what was read).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointSummary {
    pub chunks: u64,
    pub users: u64,
    pub events: u64,
}

/// Writes the checkpoint of `header.partition` from `snap` to the new file `path`.
pub fn write_checkpoint(
    snap: &Snapshot,
    header: &CheckpointHeader,
    path: &Path,
) -> Result<CheckpointSummary> {
    let file = std::fs::File::create_new(path).map_err(|e| Error::io(path, e))?;
    let mut out = BufWriter::new(file);
    let mut w = ChunkWriter::default();
    frame_into(
        &mut w.frames,
        Kind::CheckpointHeader,
        &serde_json::to_vec(header).expect("serialises"),
    );
    for user in snap.users() {
        if partition_of(user, header.partitions) != header.partition {
            continue;
        }
        let events = snap.read(user, ReadRange::all())?;
        w.add_user(user, &events);
        if w.buf.len() >= CHUNK_BYTES {
            w.flush_chunk()?;
        }
        write_frames(&mut out, &mut w.frames, path)?;
    }
    w.flush_chunk()?;
    let summary = w.summary;
    frame_into(
        &mut w.frames,
        Kind::CheckpointEnd,
        &serde_json::to_vec(&summary).expect("serialises"),
    );
    write_frames(&mut out, &mut w.frames, path)?;
    out.flush().map_err(|e| Error::io(path, e))?;
    Ok(summary)
}

fn write_frames(out: &mut impl Write, frames: &mut Vec<u8>, path: &Path) -> Result<()> {
    out.write_all(frames).map_err(|e| Error::io(path, e))?;
    frames.clear();
    Ok(())
}

#[derive(Default)]
struct ChunkWriter {
    buf: Vec<u8>,
    frames: Vec<u8>,
    summary: CheckpointSummary,
}

impl ChunkWriter {
    fn add_user(&mut self, user: u64, events: &[Event]) {
        self.buf.extend_from_slice(&user.to_le_bytes());
        encode_events(&mut self.buf, events);
        self.summary.users += 1;
        self.summary.events += events.len() as u64;
    }

    fn flush_chunk(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let mut payload = (self.buf.len() as u32).to_le_bytes().to_vec();
        let packed =
            zstd::bulk::compress(&self.buf, 3).map_err(|e| Error::io("checkpoint chunk", e))?;
        payload.extend_from_slice(&packed);
        frame_into(&mut self.frames, Kind::CheckpointChunk, &payload);
        self.buf.clear();
        self.summary.chunks += 1;
        Ok(())
    }
}

/// Reads a checkpoint frame by frame, checking everything it can as it goes.
pub struct CheckpointReader<R: Read> {
    input: R,
    what: String,
    pub header: CheckpointHeader,
    seen: CheckpointSummary,
    last_user: Option<u64>,
    done: Option<CheckpointSummary>,
}

impl<R: Read> CheckpointReader<R> {
    /// Reads and checks the header. `what` names the checkpoint in errors.
    pub fn new(mut input: R, what: &str) -> Result<Self> {
        let first = read_frame(&mut input, what)?
            .ok_or_else(|| Error::corrupt(what, "empty checkpoint"))?;
        let header: CheckpointHeader = decode_json(&first, Kind::CheckpointHeader, what)?;
        crate::partition::check_partition_count(header.partitions)
            .and_then(|()| {
                (header.partition < header.partitions)
                    .then_some(())
                    .ok_or_else(|| Error::invalid("partition out of range"))
            })
            .map_err(|e| Error::corrupt(what, e.to_string()))?;
        Ok(CheckpointReader {
            input,
            what: what.to_string(),
            header,
            seen: CheckpointSummary::default(),
            last_user: None,
            done: None,
        })
    }

    /// The next chunk's users and their events, or `None` after the last frame (whose counts
    /// have then been checked).
    pub fn next_chunk(&mut self) -> Result<Option<Vec<UserEvents>>> {
        if self.done.is_some() {
            return Ok(None);
        }
        let what = self.what.clone();
        let frame = read_frame(&mut self.input, &what)?
            .ok_or_else(|| Error::corrupt(&what, "ends before its last frame"))?;
        let (kind, _) = crate::codec::unframe(&frame, &what)?;
        if kind == Kind::CheckpointEnd {
            let end: CheckpointSummary = decode_json(&frame, Kind::CheckpointEnd, &what)?;
            if end != self.seen {
                return Err(Error::corrupt(
                    &what,
                    format!("last frame counts {end:?}, the chunks hold {:?}", self.seen),
                ));
            }
            let mut rest = [0u8; 1];
            if self
                .input
                .read(&mut rest)
                .map_err(|e| Error::io(&what, e))?
                != 0
            {
                return Err(Error::corrupt(&what, "bytes after the last frame"));
            }
            self.done = Some(end);
            return Ok(None);
        }
        let payload = unframe_kind(&frame, Kind::CheckpointChunk, &what)?;
        let users = self.decode_chunk(payload)?;
        self.seen.chunks += 1;
        Ok(Some(users))
    }

    /// The counts, once [`CheckpointReader::next_chunk`] has returned `None`.
    pub fn summary(&self) -> Option<CheckpointSummary> {
        self.done
    }

    fn decode_chunk(&mut self, payload: &[u8]) -> Result<Vec<UserEvents>> {
        let what = &self.what.clone();
        if payload.len() < 4 {
            return Err(Error::corrupt(what, "chunk without a length"));
        }
        let len = u32::from_le_bytes(payload[..4].try_into().expect("4 bytes")) as usize;
        if len > MAX_CHUNK_BYTES {
            return Err(Error::corrupt(what, format!("chunk of {len} bytes")));
        }
        let raw = zstd::bulk::decompress(&payload[4..], len)
            .map_err(|e| Error::corrupt(what, format!("zstd: {e}")))?;
        if raw.len() != len {
            return Err(Error::corrupt(
                what,
                format!("chunk holds {} bytes, its header says {len}", raw.len()),
            ));
        }
        let mut r = Reader::new(&raw);
        let mut users = Vec::new();
        while r.remaining() > 0 {
            let user = r.u64().map_err(|e| decode_error(what, e))?;
            let events = decode_events(&mut r).map_err(|e| decode_error(what, e))?;
            self.check_user(user, &events)?;
            self.seen.users += 1;
            self.seen.events += events.len() as u64;
            users.push((user, events));
        }
        Ok(users)
    }

    fn check_user(&mut self, user: u64, events: &[Event]) -> Result<()> {
        let bad = |detail: String| Err(Error::corrupt(&self.what, detail));
        if self.last_user.is_some_and(|last| last >= user) {
            return bad(format!("user {user} after user {:?}", self.last_user));
        }
        self.last_user = Some(user);
        let p = partition_of(user, self.header.partitions);
        if p != self.header.partition {
            return bad(format!(
                "user {user} is in partition {p}, not {}",
                self.header.partition
            ));
        }
        if let Some(e) = events.iter().find(|e| e.user != user) {
            return bad(format!(
                "an event of user {} in user {user}'s record",
                e.user
            ));
        }
        Ok(())
    }
}

/// Reads one whole frame, or `None` at a clean end of input.
fn read_frame(input: &mut impl Read, what: &str) -> Result<Option<Vec<u8>>> {
    let mut head = [0u8; HEADER_BYTES];
    let mut got = 0;
    while got < HEADER_BYTES {
        let n = input
            .read(&mut head[got..])
            .map_err(|e| Error::io(what, e))?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(Error::corrupt(what, "ends inside a frame header"))
            };
        }
        got += n;
    }
    let len = frame_len(&head).expect("a whole header");
    if len > MAX_CHUNK_BYTES + HEADER_BYTES + 8 {
        return Err(Error::corrupt(what, format!("frame of {len} bytes")));
    }
    let mut frame = head.to_vec();
    frame.resize(len, 0);
    input
        .read_exact(&mut frame[HEADER_BYTES..])
        .map_err(|_| Error::corrupt(what, "ends inside a frame"))?;
    Ok(Some(frame))
}

/// Counts read from a checkpoint in memory, for the fuzz target: every frame decoded and
/// checked, nothing applied.
pub fn check_checkpoint_bytes(bytes: &[u8]) -> Result<CheckpointSummary> {
    let mut r = CheckpointReader::new(bytes, "checkpoint")?;
    while r.next_chunk()?.is_some() {}
    Ok(r.summary().expect("read to the end"))
}

/// Replaces the partition's data in `db` with a checkpoint's (a node runs this with the
/// partition's writes held off). The
/// position is written with the last batch, so a crash part-way leaves users without a
/// position, which the next acquisition (or start) deletes.
pub fn import_checkpoint(
    db: &Db,
    path: &Path,
    expect: &CheckpointHeader,
    durability: Durability,
    stopped: &dyn Fn() -> bool,
) -> Result<CheckpointSummary> {
    let what = format!("checkpoint {}", path.display());
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut reader = CheckpointReader::new(BufReader::new(file), &what)?;
    if &reader.header != expect {
        return Err(Error::corrupt(
            &what,
            format!("holds {:?}, expected {expect:?}", reader.header),
        ));
    }
    drop_partition(db, expect.partition, expect.partitions)?;
    let max = db.options().max_batch_events;
    let plain = AppendOptions {
        durability,
        source: None,
    };
    let mut batch: Vec<Event> = Vec::new();
    while let Some(users) = reader.next_chunk()? {
        if stopped() {
            return Err(Error::Shutdown);
        }
        for (_, events) in users {
            for piece in events.chunks(max) {
                if batch.len() + piece.len() > max {
                    db.append(&batch, &plain)?;
                    batch.clear();
                }
                batch.extend_from_slice(piece);
            }
        }
    }
    let last = AppendOptions {
        durability,
        source: Some((
            StreamId::Partition(expect.partition).source_name(),
            expect.position,
        )),
    };
    db.append(&batch, &last)?;
    Ok(reader.summary().expect("read to the end"))
}

/// Deletes a partition's position, then its users. Returns how many users were deleted.
pub fn drop_partition(db: &Db, p: u32, partitions: u32) -> Result<usize> {
    db.remove_source(&StreamId::Partition(p).source_name(), Durability::Sync)?;
    let users: Vec<u64> = db
        .snapshot()
        .users()
        .into_iter()
        .filter(|u| partition_of(*u, partitions) == p)
        .collect();
    let opts = AppendOptions {
        durability: Durability::Buffered,
        source: None,
    };
    for chunk in users.chunks(DROP_CHUNK) {
        db.delete_users(chunk, &opts)?;
    }
    Ok(users.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use siren_engine::{AppendOptions, Db, Options};

    fn db_with_users(dir: &Path) -> Db {
        let db = Db::open(
            dir.join("db"),
            Options {
                embedding_dim: 0,
                auto_compact: None,
                ..Options::default()
            },
        )
        .unwrap();
        let events: Vec<Event> = (0..300u64)
            .flat_map(|u| {
                (0..(u % 13) as i64).map(move |t| Event {
                    user: u,
                    ts: t * 10 - 50,
                    item: u * 31 + t as u64,
                    action: (t % 3) as u8,
                    domain: 1,
                })
            })
            .collect();
        db.append(&events, &AppendOptions::default()).unwrap();
        db
    }

    #[test]
    fn a_partition_round_trips_and_damage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let db = db_with_users(dir.path());
        let header = CheckpointHeader {
            cluster: "t".into(),
            partition: 2,
            partitions: 4,
            position: 99,
        };
        let path = dir.path().join("ck");
        let summary = write_checkpoint(&db.snapshot(), &header, &path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let mut r = CheckpointReader::new(&bytes[..], "ck").unwrap();
        assert_eq!(r.header, header);
        let mut seen = Vec::new();
        while let Some(users) = r.next_chunk().unwrap() {
            seen.extend(users);
        }
        assert_eq!(r.summary(), Some(summary));
        let snap = db.snapshot();
        let want: Vec<UserEvents> = snap
            .users()
            .into_iter()
            .filter(|u| partition_of(*u, 4) == 2)
            .map(|u| (u, snap.read(u, ReadRange::all()).unwrap()))
            .collect();
        assert!(want.len() > 50);
        assert_eq!(seen, want);

        for n in 0..bytes.len() {
            assert!(check_checkpoint_bytes(&bytes[..n]).is_err(), "cut at {n}");
        }
        for i in (0..bytes.len()).step_by(7) {
            let mut bad = bytes.clone();
            bad[i] ^= 0x41;
            assert!(check_checkpoint_bytes(&bad).is_err(), "byte {i}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(check_checkpoint_bytes(&longer).is_err());
    }
}
