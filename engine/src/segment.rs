//! Segment files: immutable files of user entries with a sorted user directory, read through
//! memmap2. See `docs/FORMAT.md` for the byte layout.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::codec::{le_u32, le_u64, Reader};
use crate::entry::{EntrySizes, EntryView};
use crate::entry_v1;
use crate::error::{corrupt, DecodeError, DecodeResult, Error, Result};

pub const SEGMENT_MAGIC: &[u8; 8] = b"SIRENSEG";
pub const FOOTER_MAGIC: &[u8; 8] = b"SIRENFTR";
/// The version this build writes; it reads [`OLDEST_SEGMENT_VERSION`] on.
pub const SEGMENT_VERSION: u32 = 2;
pub const OLDEST_SEGMENT_VERSION: u32 = 1;
pub const HEADER_LEN: usize = 28;
pub const FOOTER_LEN: usize = 40;
/// Directory record length of version 2 (version 1's is [`DIR_RECORD_LEN_V1`]).
pub const DIR_RECORD_LEN: usize = 28;
pub const DIR_RECORD_LEN_V1: usize = 56;

/// Directory record length of a segment version (1 or 2).
fn dir_record_len(version: u32) -> usize {
    if version == 1 {
        DIR_RECORD_LEN_V1
    } else {
        DIR_RECORD_LEN
    }
}

/// A user entry of either format version.
#[derive(Clone, Copy)]
pub enum Entry<'a> {
    V1(entry_v1::EntryView<'a>),
    V2(EntryView<'a>),
}

impl<'a> Entry<'a> {
    pub fn n_events(&self) -> usize {
        match self {
            Entry::V1(v) => v.n_events(),
            Entry::V2(v) => v.n_events(),
        }
    }

    pub fn user(&self) -> u64 {
        match self {
            Entry::V1(v) => v.header.user,
            Entry::V2(v) => v.header.user,
        }
    }

    pub fn header_crc(&self) -> u32 {
        match self {
            Entry::V1(v) => v.header.header_crc,
            Entry::V2(v) => v.header.header_crc,
        }
    }

    pub fn semid_gen(&self) -> u64 {
        match self {
            Entry::V1(v) => v.header.semid_gen,
            Entry::V2(v) => v.header.semid_gen,
        }
    }

    pub fn first_ts(&self) -> i64 {
        match self {
            Entry::V1(v) => v.header.first_ts,
            Entry::V2(v) => v.header.first_ts,
        }
    }

    pub fn last_ts(&self) -> i64 {
        match self {
            Entry::V1(v) => v.header.last_ts,
            Entry::V2(v) => v.header.last_ts,
        }
    }

    pub fn validate(&self) -> DecodeResult<()> {
        match self {
            Entry::V1(v) => v.validate(),
            Entry::V2(v) => v.validate(),
        }
    }
}

pub fn segment_file_name(id: u64) -> String {
    format!("{id:016x}.seg")
}

/// Parse a segment id back out of a file name made by [`segment_file_name`].
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    let hex = name.strip_suffix(".seg")?;
    (hex.len() == 16)
        .then(|| u64::from_str_radix(hex, 16).ok())
        .flatten()
}

/// One directory record: where a user's entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirRecord {
    pub user: u64,
    pub offset: u64,
    pub len: u32,
    pub n_events: u32,
    /// The entry header's checksum, to cross-check the directory against the entry.
    pub header_crc: u32,
    /// What the entry spends on each part (version 1 keeps it in the directory; version 2 in
    /// the entry's header).
    pub sizes_v1: Option<EntrySizes>,
}

impl DirRecord {
    /// Version 2: user, offset, length, events, header checksum.
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.user.to_le_bytes());
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(&self.len.to_le_bytes());
        out.extend_from_slice(&self.n_events.to_le_bytes());
        out.extend_from_slice(&self.header_crc.to_le_bytes());
    }

    fn decode(b: &[u8], version: u32) -> DirRecord {
        let (user, offset, len, n_events) =
            (le_u64(b, 0), le_u64(b, 8), le_u32(b, 16), le_u32(b, 20));
        if version == 1 {
            return DirRecord {
                user,
                offset,
                len,
                n_events,
                header_crc: le_u32(b, 52),
                sizes_v1: Some(EntrySizes {
                    time: le_u32(b, 24),
                    item: le_u32(b, 28),
                    action: le_u32(b, 32),
                    domain: le_u32(b, 36),
                    dict: le_u32(b, 40),
                    index: le_u32(b, 44),
                    meta: le_u32(b, 48),
                }),
            };
        }
        DirRecord {
            user,
            offset,
            len,
            n_events,
            header_crc: le_u32(b, 24),
            sizes_v1: None,
        }
    }
}

/// Writes one segment file: `<id>.seg.tmp`, renamed into place by [`SegmentWriter::finish`]
/// after an fsync, so a segment file that exists under its final name is complete.
pub struct SegmentWriter {
    dir: PathBuf,
    id: u64,
    tmp: PathBuf,
    out: BufWriter<File>,
    offset: u64,
    records: Vec<DirRecord>,
}

impl SegmentWriter {
    pub fn create(dir: &Path, id: u64) -> Result<Self> {
        let tmp = dir.join(format!("{}.tmp", segment_file_name(id)));
        let file = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let mut w = SegmentWriter {
            dir: dir.to_path_buf(),
            id,
            tmp,
            out: BufWriter::with_capacity(1 << 20, file),
            offset: 0,
            records: Vec::new(),
        };
        let mut header = Vec::with_capacity(HEADER_LEN);
        header.extend_from_slice(SEGMENT_MAGIC);
        header.extend_from_slice(&SEGMENT_VERSION.to_le_bytes());
        header.extend_from_slice(&0u32.to_le_bytes());
        header.extend_from_slice(&id.to_le_bytes());
        crate::codec::push_crc(&mut header, 0);
        w.write(&header)?;
        Ok(w)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.out
            .write_all(bytes)
            .map_err(|e| Error::io(&self.tmp, e))?;
        self.offset += bytes.len() as u64;
        Ok(())
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.offset
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Add a user's entry (version 2, as `build_entry` made it). Users must be added in
    /// ascending order.
    pub fn add(&mut self, user: u64, entry: &[u8], n_events: u32) -> Result<DirRecord> {
        assert!(
            self.records.last().is_none_or(|r| r.user < user),
            "segment users must be added in ascending order"
        );
        let header_crc = EntryView::parse_with(entry, false)
            .map(|v| v.header.header_crc)
            .map_err(|e| e.at(&self.tmp, format!("user {user} entry")))?;
        let rec = DirRecord {
            user,
            offset: self.offset,
            len: entry.len() as u32,
            n_events,
            header_crc,
            sizes_v1: None,
        };
        self.write(entry)?;
        self.records.push(rec);
        Ok(rec)
    }

    /// Write the directory and footer, fsync, rename into place and fsync the directory.
    /// Returns the final path and file length.
    pub fn finish(mut self) -> Result<(PathBuf, u64)> {
        let dir_offset = self.offset;
        let mut dir = Vec::with_capacity(self.records.len() * DIR_RECORD_LEN);
        for r in &self.records {
            r.encode(&mut dir);
        }
        self.write(&dir)?;
        let mut footer = Vec::with_capacity(FOOTER_LEN);
        footer.extend_from_slice(FOOTER_MAGIC);
        footer.extend_from_slice(&SEGMENT_VERSION.to_le_bytes());
        footer.extend_from_slice(&(self.records.len() as u32).to_le_bytes());
        footer.extend_from_slice(&dir_offset.to_le_bytes());
        footer.extend_from_slice(&crc32c::crc32c(&dir).to_le_bytes());
        footer.extend_from_slice(&self.id.to_le_bytes());
        crate::codec::push_crc(&mut footer, 0);
        self.write(&footer)?;
        let file = self
            .out
            .into_inner()
            .map_err(|e| Error::io(&self.tmp, e.into_error()))?;
        file.sync_all().map_err(|e| Error::io(&self.tmp, e))?;
        drop(file);
        let path = self.dir.join(segment_file_name(self.id));
        fs::rename(&self.tmp, &path).map_err(|e| Error::io(&path, e))?;
        failpoint!("segment::after_rename");
        sync_dir(&self.dir)?;
        Ok((path, self.offset))
    }
}

pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

/// Create `dir` and its missing parents, durably: each new directory's entry is fsynced in its
/// parent, or a power cut could lose the directory with every file synced into it since.
pub fn create_dirs(dir: &Path) -> Result<()> {
    let missing: Vec<&Path> = dir.ancestors().take_while(|d| !d.exists()).collect();
    fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    for new in missing.iter().rev() {
        if let Some(parent) = new.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
    }
    Ok(())
}

/// An open, memory-mapped segment file.
///
/// The mapping assumes that no other process truncates or rewrites the file while it is open
/// (segment files are immutable; Siren only ever deletes them).
pub struct Segment {
    pub id: u64,
    pub path: PathBuf,
    mmap: Mmap,
    /// Format version of the file (1 or 2).
    version: u32,
    dir_offset: usize,
    count: usize,
}

impl std::fmt::Debug for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segment")
            .field("id", &self.id)
            .field("path", &self.path)
            .field("users", &self.count)
            .finish()
    }
}

impl Segment {
    /// Open and check header, footer and directory (not the entries: those are checked when
    /// read, and entirely by [`Segment::verify`]).
    pub fn open(path: &Path, expected_id: u64) -> Result<Segment> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        if len < (HEADER_LEN + FOOTER_LEN) as u64 {
            return Err(
                DecodeError::corrupt(format!("file of {len} bytes is too short")).at(path, "file"),
            );
        }
        // SAFETY: segment files are immutable once renamed into place, and Siren never writes
        // to them again; the mapping is read-only. See the struct documentation.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let (version, dir_offset, count) =
            Self::parse_frame(&mmap, expected_id).map_err(|(block, e)| e.at(path, block))?;
        Ok(Segment {
            id: expected_id,
            path: path.to_path_buf(),
            mmap,
            version,
            dir_offset,
            count,
        })
    }

    /// Check header, footer and directory of a whole file image; returns (format version,
    /// directory offset, record count). Exposed for the fuzz targets.
    pub fn parse_frame(
        bytes: &[u8],
        expected_id: u64,
    ) -> std::result::Result<(u32, usize, usize), (&'static str, DecodeError)> {
        let header = || -> DecodeResult<u32> {
            if bytes.len() < HEADER_LEN + FOOTER_LEN {
                corrupt!("file of {} bytes is too short", bytes.len());
            }
            let body = crate::codec::split_crc(&bytes[..HEADER_LEN], "segment header")?;
            let mut r = Reader::new(body);
            let magic = r.bytes(8)?;
            let version = r.u32()?;
            if magic != SEGMENT_MAGIC {
                corrupt!("bad segment magic");
            }
            if !(OLDEST_SEGMENT_VERSION..=SEGMENT_VERSION).contains(&version) {
                return Err(DecodeError::Version {
                    what: "segment file",
                    found: version,
                    supported: SEGMENT_VERSION,
                });
            }
            r.u32()?;
            let id = r.u64()?;
            if id != expected_id {
                corrupt!("segment id {id} where {expected_id} was expected");
            }
            Ok(version)
        };
        let version = header().map_err(|e| ("header", e))?;
        let record_len = dir_record_len(version);
        let footer = || -> DecodeResult<(usize, usize, u32)> {
            let f = &bytes[bytes.len() - FOOTER_LEN..];
            let body = crate::codec::split_crc(f, "segment footer")?;
            let mut r = Reader::new(body);
            let magic = r.bytes(8)?;
            let footer_version = r.u32()?;
            if magic != FOOTER_MAGIC {
                corrupt!("bad footer magic");
            }
            if footer_version != version {
                return Err(DecodeError::Version {
                    what: "segment footer",
                    found: footer_version,
                    supported: version,
                });
            }
            let count = r.u32()? as usize;
            let dir_offset = r.u64()?;
            let dir_crc = r.u32()?;
            let id = r.u64()?;
            if id != expected_id {
                corrupt!("footer names segment {id}, expected {expected_id}");
            }
            let dir_end = (bytes.len() - FOOTER_LEN) as u64;
            if dir_offset < HEADER_LEN as u64
                || dir_offset > dir_end
                || (dir_end - dir_offset) != (count as u64) * record_len as u64
            {
                corrupt!("directory of {count} records does not fit at offset {dir_offset}");
            }
            Ok((dir_offset as usize, count, dir_crc))
        };
        let (dir_offset, count, dir_crc) = footer().map_err(|e| ("footer", e))?;
        let directory = || -> DecodeResult<()> {
            let dir = &bytes[dir_offset..dir_offset + count * record_len];
            if !crate::codec::checksum_matches(dir_crc, crc32c::crc32c(dir)) {
                corrupt!("directory checksum mismatch");
            }
            let mut expect = HEADER_LEN as u64;
            let mut prev_user = None;
            for i in 0..count {
                let r = DirRecord::decode(&dir[i * record_len..], version);
                if prev_user.is_some_and(|p| p >= r.user) {
                    corrupt!("directory users not ascending at record {i}");
                }
                prev_user = Some(r.user);
                if r.offset != expect {
                    corrupt!("entry {i} at offset {}, expected {expect}", r.offset);
                }
                if r.sizes_v1.is_some_and(|s| s.total() != u64::from(r.len)) {
                    corrupt!("entry {i} part sizes do not add up to its length");
                }
                expect += u64::from(r.len);
            }
            if expect != dir_offset as u64 {
                corrupt!("entries end at {expect}, directory starts at {dir_offset}");
            }
            Ok(())
        };
        directory().map_err(|e| ("directory", e))?;
        Ok((version, dir_offset, count))
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn file_len(&self) -> u64 {
        self.mmap.len() as u64
    }

    /// The file's format version (1 or 2).
    pub fn version(&self) -> u32 {
        self.version
    }

    pub fn record(&self, i: usize) -> DirRecord {
        let len = dir_record_len(self.version);
        DirRecord::decode(&self.mmap[self.dir_offset + i * len..], self.version)
    }

    /// What entry `i` spends on each part.
    pub fn sizes(&self, i: usize) -> Result<EntrySizes> {
        match self.record(i).sizes_v1 {
            Some(s) => Ok(s),
            None => match self.entry_with(i, false)? {
                Entry::V2(v) => Ok(v.sizes()),
                Entry::V1(_) => Err(self.corruption(
                    i,
                    DecodeError::corrupt("a version-1 entry in a version-2 file"),
                )),
            },
        }
    }

    /// Directory index of `user`, if this segment holds an entry for it.
    pub fn find(&self, user: u64) -> Option<usize> {
        let (mut lo, mut hi) = (0, self.count);
        while lo < hi {
            let mid = (lo + hi) / 2;
            let u = le_u64(
                &self.mmap,
                self.dir_offset + mid * dir_record_len(self.version),
            );
            match u.cmp(&user) {
                std::cmp::Ordering::Equal => return Some(mid),
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
            }
        }
        None
    }

    fn block_name(&self, i: usize) -> String {
        format!("user {} entry", self.record(i).user)
    }

    /// The entry of directory record `i`, header and sections checked.
    pub fn entry(&self, i: usize) -> Result<Entry<'_>> {
        self.entry_with(i, true)
    }

    /// [`Segment::entry`]; `sections` as in [`EntryView::parse_with`]. A version-1 file holds
    /// version-1 entries, a version-2 file version-2 ones.
    pub fn entry_with(&self, i: usize, sections: bool) -> Result<Entry<'_>> {
        let r = self.record(i);
        let bytes = &self.mmap[r.offset as usize..r.offset as usize + r.len as usize];
        let view = match self.version {
            1 => entry_v1::EntryView::parse_with(bytes, sections).map(Entry::V1),
            _ => EntryView::parse_with(bytes, sections).map(Entry::V2),
        }
        .map_err(|e| e.at(&self.path, self.block_name(i)))?;
        if view.user() != r.user || view.header_crc() != r.header_crc {
            return Err(
                DecodeError::corrupt("entry header disagrees with the directory")
                    .at(&self.path, self.block_name(i)),
            );
        }
        Ok(view)
    }

    /// Attach this file and entry to a decoder error.
    pub fn corruption(&self, i: usize, e: DecodeError) -> Error {
        e.at(&self.path, self.block_name(i))
    }

    /// Check every byte of every entry. Returns the first problem of each damaged entry.
    pub fn verify(&self) -> Vec<Error> {
        let mut problems = Vec::new();
        for i in 0..self.count {
            match self.entry(i) {
                Ok(v) => {
                    if let Err(e) = v.validate() {
                        problems.push(self.corruption(i, e));
                    } else if v.n_events() as u32 != self.record(i).n_events {
                        problems.push(self.corruption(
                            i,
                            DecodeError::corrupt("event count disagrees with the directory"),
                        ));
                    }
                }
                Err(e) => problems.push(e),
            }
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::{build_entry, EntryParams, Ev};
    use crate::prefix::PrefixLayout;

    fn write_segment(dir: &Path, id: u64, users: &[u64]) -> PathBuf {
        let mut w = SegmentWriter::create(dir, id).unwrap();
        let p = EntryParams {
            block_events: 32,
            zstd_level: 1,
            layout: PrefixLayout::new(2, 8),
            semid_gen: 0,
        };
        for &u in users {
            let evs: Vec<Ev> = (0..100)
                .map(|i| Ev {
                    ts: i * 10,
                    item: (u + i as u64) % 17,
                    action: 1,
                    domain: 0,
                })
                .collect();
            let (bytes, _) = build_entry(u, &evs, &p, |id| (id as u32, None));
            w.add(u, &bytes, evs.len() as u32).unwrap();
        }
        w.finish().unwrap().0
    }

    #[test]
    fn write_open_find() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_segment(dir.path(), 5, &[1, 7, 9]);
        assert_eq!(
            parse_segment_file_name(path.file_name().unwrap().to_str().unwrap()),
            Some(5)
        );
        let seg = Segment::open(&path, 5).unwrap();
        assert_eq!(seg.len(), 3);
        assert_eq!(seg.find(7), Some(1));
        assert_eq!(seg.find(8), None);
        assert_eq!(seg.entry(2).unwrap().user(), 9);
        assert!(seg.verify().is_empty());
        assert!(Segment::open(&path, 6).is_err());
    }

    #[test]
    fn every_flipped_byte_is_found_by_open_or_verify() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_segment(dir.path(), 1, &[3, 4]);
        let clean = fs::read(&path).unwrap();
        for pos in (0..clean.len()).step_by(7) {
            let mut bytes = clean.clone();
            bytes[pos] ^= 0x10;
            fs::write(&path, &bytes).unwrap();
            let found = match Segment::open(&path, 1) {
                Err(e) => e.is_corruption() || matches!(e, Error::UnsupportedVersion { .. }),
                Ok(seg) => !seg.verify().is_empty(),
            };
            assert!(found, "flip at {pos} of {} went unnoticed", clean.len());
        }
    }
}
