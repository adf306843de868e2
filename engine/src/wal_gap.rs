//! A check of RocksDB's write-ahead logs before they are replayed, for the one damage RocksDB's
//! replay takes for a normal end: a run of zeros over a record header. RocksDB reads a
//! zero-type header as the preallocated end of a log and stops there without an error, so a
//! run of zeros in the middle of a log dropped every write after it without a word
//! (docs/RELIABILITY.md, found by the corruption campaign). A real end of a log is followed
//! by nothing but zeros; here records follow.
//!
//! The logs are read record by record in RocksDB's format (`db/log_format.h`): 32 KiB blocks,
//! each a run of records with a 7-byte header (checksum 4, length 2 little-endian, type 1;
//! 11 bytes with the log number for the recyclable types 5 to 8) and a zero-filled trailer when
//! less than a header is left in the block. Nothing else is checked: a damaged checksum or
//! length is RocksDB's to report, and the scan stops at anything it does not recognise.

use std::fs;
use std::path::Path;

use crate::error::{Error, Result};

const BLOCK: usize = 32 * 1024;
const HEADER: usize = 7;
const RECYCLABLE_HEADER: usize = 11;

/// A description of the first log in the RocksDB directory `dir` whose records stop at a run
/// of zeros that data follows, or `None` (also for a directory that does not exist yet).
pub(crate) fn zeroed_gap(dir: &Path) -> Result<Option<String>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(dir, e)),
    };
    let mut logs = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        if path.extension().is_some_and(|e| e == "log") {
            logs.push(path);
        }
    }
    logs.sort();
    for path in logs {
        let bytes = fs::read(&path).map_err(|e| Error::io(&path, e))?;
        if let Some((zeros, data)) = gap_in(&bytes) {
            return Ok(Some(format!(
                "write-ahead log {}: its records stop at a run of zeros at byte {zeros}, which \
                 RocksDB reads as the log's end, but data follows from byte {data} of {}",
                path.display(),
                bytes.len()
            )));
        }
    }
    Ok(None)
}

/// Where the records of one log stop at a zero-type header, and the first non-zero byte
/// after it, when there is one.
fn gap_in(bytes: &[u8]) -> Option<(usize, usize)> {
    let mut pos = 0;
    while pos < bytes.len() {
        let left = BLOCK - pos % BLOCK;
        if left < HEADER {
            pos += left;
            continue;
        }
        let h = bytes.get(pos..pos + HEADER)?;
        let len = usize::from(u16::from_le_bytes([h[4], h[5]]));
        let header = match h[6] {
            0 => {
                let after = pos + HEADER;
                return bytes
                    .get(after..)?
                    .iter()
                    .position(|&b| b != 0)
                    .map(|off| (pos, after + off));
            }
            1..=4 | 9 | 10 => HEADER,
            5..=8 => RECYCLABLE_HEADER,
            _ => return None,
        };
        if header + len > left {
            return None;
        }
        pos += header + len;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A log of full records with payloads of `lens`, laid out as RocksDB's writer does.
    fn log(lens: &[usize]) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, &len) in lens.iter().enumerate() {
            let left = BLOCK - out.len() % BLOCK;
            if left < HEADER {
                out.resize(out.len() + left, 0);
            }
            out.extend_from_slice(&[0xab, 0xcd, 0xef, 0x01]);
            out.extend_from_slice(&(len as u16).to_le_bytes());
            out.push(1);
            out.extend((0..len).map(|j| (i + j) as u8 | 1));
        }
        out
    }

    #[test]
    fn a_whole_log_and_a_zero_filled_tail_have_no_gap() {
        let lens = [100, 2000, 30000, 700, 5];
        let bytes = log(&lens);
        assert_eq!(gap_in(&bytes), None);
        let mut tail = bytes.clone();
        tail.resize(bytes.len() + 5000, 0);
        assert_eq!(gap_in(&tail), None);
    }

    #[test]
    fn block_trailers_are_skipped() {
        // The first record leaves 6 bytes in the block: the writer fills them with zeros and
        // the next header starts the next block.
        let bytes = log(&[BLOCK - HEADER - 6, 40, 40]);
        assert_eq!(bytes[BLOCK - 6..BLOCK], [0; 6]);
        assert_eq!(gap_in(&bytes), None);
    }

    #[test]
    fn zeros_over_a_header_with_records_after_them_are_a_gap() {
        let bytes = log(&[100, 200, 300]);
        let second = HEADER + 100;
        let mut zeroed = bytes.clone();
        zeroed[second..second + 50].fill(0);
        assert_eq!(gap_in(&zeroed), Some((second, second + 50)));
        // The same zeros reaching the end of the log: a preallocated end, no gap.
        let mut to_end = bytes.clone();
        to_end[second..].fill(0);
        assert_eq!(gap_in(&to_end), None);
    }

    proptest::proptest! {
        /// Any bytes, a log damaged anywhere included: the scan ends without a panic, and a
        /// gap it reports is zeros followed by a non-zero byte.
        #[test]
        fn any_bytes_scan_without_panic(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..70_000),
            zero_from in 0usize..70_000,
            zero_len in 0usize..200,
        ) {
            let mut bytes = bytes;
            let end = bytes.len().min(zero_from.saturating_add(zero_len));
            if zero_from < end {
                bytes[zero_from..end].fill(0);
            }
            if let Some((zeros, data)) = gap_in(&bytes) {
                proptest::prop_assert!(zeros < data && data < bytes.len());
                proptest::prop_assert!(bytes[zeros + HEADER..data].iter().all(|&b| b == 0));
                proptest::prop_assert!(bytes[data] != 0);
            }
        }
    }

    #[test]
    fn unknown_types_and_cut_headers_stop_the_scan() {
        let mut bytes = log(&[10, 10]);
        bytes[HEADER + 10 + 6] = 77;
        assert_eq!(gap_in(&bytes), None);
        assert_eq!(gap_in(&log(&[10, 10])[..HEADER + 10 + 3]), None);
        assert_eq!(gap_in(&[]), None);
    }
}
