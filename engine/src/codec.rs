//! Byte-level building blocks shared by every on-disk structure: a bounds-checked reader,
//! LEB128 varints, fixed-width bit packing, and checksummed (optionally zstd-compressed) chunks.
//!
//! Every decoder here returns [`DecodeError`] on bad input; none panics, loops without bound or
//! allocates more than its caller's stated limit.

use std::cell::RefCell;

use crate::error::{corrupt, DecodeError, DecodeResult};

/// Cursor over a byte slice. Every read is bounds-checked.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    pub fn position(&self) -> usize {
        self.pos
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub fn bytes(&mut self, n: usize) -> DecodeResult<&'a [u8]> {
        if n > self.remaining() {
            corrupt!(
                "needs {n} bytes at offset {}, {} remain",
                self.pos,
                self.remaining()
            );
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    pub fn array<const N: usize>(&mut self) -> DecodeResult<[u8; N]> {
        let b = self.bytes(N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(b);
        Ok(out)
    }

    pub fn u8(&mut self) -> DecodeResult<u8> {
        Ok(self.array::<1>()?[0])
    }
    pub fn u16(&mut self) -> DecodeResult<u16> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    pub fn u32(&mut self) -> DecodeResult<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    pub fn u64(&mut self) -> DecodeResult<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    pub fn i64(&mut self) -> DecodeResult<i64> {
        Ok(i64::from_le_bytes(self.array()?))
    }
    pub fn f32(&mut self) -> DecodeResult<f32> {
        Ok(f32::from_le_bytes(self.array()?))
    }

    pub fn varint(&mut self) -> DecodeResult<u64> {
        let mut value = 0u64;
        for i in 0..10 {
            let byte = self.u8()?;
            let bits = u64::from(byte & 0x7f);
            if i == 9 && byte > 1 {
                corrupt!("varint overflows 64 bits at offset {}", self.pos - 1);
            }
            value |= bits << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        corrupt!("varint longer than 10 bytes at offset {}", self.pos)
    }

    /// Fails unless every byte has been consumed: trailing garbage is corruption too.
    pub fn finish(&self) -> DecodeResult<()> {
        if self.remaining() != 0 {
            corrupt!("{} unexpected trailing bytes", self.remaining());
        }
        Ok(())
    }
}

pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// The `N` bytes at `off` of a slice known to be long enough (checked by callers through
/// fixed-size headers whose lengths were validated); out of bounds panics as indexing does.
#[inline(always)]
pub fn bytes_at<const N: usize>(b: &[u8], off: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&b[off..off + N]);
    out
}

/// Read a little-endian u32 at `off` (see [`bytes_at`]).
pub fn le_u32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(bytes_at(b, off))
}

/// Read a little-endian u64 at `off` (see [`bytes_at`]).
pub fn le_u64(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(bytes_at(b, off))
}

/// Whether a stored checksum matches the computed one. Fuzz builds (`cfg(fuzzing)`, which
/// `cargo fuzz` sets) accept any checksum so that the fuzzer reaches the decoders behind it; the
/// checks themselves are covered by the tests that flip every byte of every structure.
#[inline]
pub fn checksum_matches(stored: u32, computed: u32) -> bool {
    stored == computed || cfg!(fuzzing)
}

/// Split `record` into body and trailing CRC32C and check it.
pub fn split_crc<'a>(record: &'a [u8], what: &str) -> DecodeResult<&'a [u8]> {
    if record.len() < 4 {
        corrupt!("{what}: {} bytes is too short for a checksum", record.len());
    }
    let (body, tail) = record.split_at(record.len() - 4);
    let stored = le_u32(tail, 0);
    let actual = crc32c::crc32c(body);
    if !checksum_matches(stored, actual) {
        corrupt!("{what}: checksum mismatch (stored {stored:08x}, computed {actual:08x})");
    }
    Ok(body)
}

/// Append the CRC32C of everything in `out` from `start` on.
pub fn push_crc(out: &mut Vec<u8>, start: usize) {
    let crc = crc32c::crc32c(&out[start..]);
    out.extend_from_slice(&crc.to_le_bytes());
}

thread_local! {
    /// Unpacked low bits of a time block: reused, as a long read decodes many blocks.
    static LOWS: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
}

/// Run `f` with this thread's buffer for the unpacked low bits of a time block.
pub fn with_time_lows<R>(f: impl FnOnce(&mut Vec<u32>) -> R) -> R {
    LOWS.with_borrow_mut(f)
}

// ---------------------------------------------------------------------------------------------
// Bit packing

/// Bits needed to store values `0..n` (at least 1 when n > 1, 0 when every value is 0).
pub fn bits_for(max_value: u64) -> u8 {
    (64 - max_value.leading_zeros()) as u8
}

/// Pack `values` at `width` bits each, little-endian bit order. Values must fit in `width` bits.
pub fn bitpack(values: &[u32], width: u8, out: &mut Vec<u8>) {
    debug_assert!(width <= 32);
    if width == 0 {
        return;
    }
    let mut acc: u64 = 0;
    let mut bits: u32 = 0;
    for &v in values {
        debug_assert!(width == 32 || v < (1u32 << width));
        acc |= u64::from(v) << bits;
        bits += u32::from(width);
        while bits >= 8 {
            out.push(acc as u8);
            acc >>= 8;
            bits -= 8;
        }
    }
    if bits > 0 {
        out.push(acc as u8);
    }
}

pub fn bitpacked_len(n: usize, width: u8) -> usize {
    (n * usize::from(width)).div_ceil(8)
}

/// Value `i` of a bit-packed array of `width`-bit values. `bytes` must hold at least
/// `bitpacked_len(i + 1, width)` bytes.
#[inline]
pub fn bit_get(bytes: &[u8], width: u8, i: usize) -> u32 {
    if width == 0 {
        return 0;
    }
    let bit = i * usize::from(width);
    let byte = bit / 8;
    let shift = bit % 8;
    let word = if byte + 8 <= bytes.len() {
        u64::from_le_bytes(bytes_at(bytes, byte))
    } else {
        let mut b = [0u8; 8];
        let tail = &bytes[byte..];
        b[..tail.len()].copy_from_slice(tail);
        u64::from_le_bytes(b)
    };
    let mask = if width == 32 {
        u32::MAX as u64
    } else {
        (1u64 << width) - 1
    };
    ((word >> shift) & mask) as u32
}

/// The sum of the first `count` values of a bit-packed array of `width`-bit values (`width`
/// at most 32, `count` below 2^32, so the sum fits). `bytes` must hold at least
/// `bitpacked_len(count, width)` bytes. The random access to one event's time sums half a
/// block of deltas, and [`bit_get`] per value with a wide sum cost most of a cold hard
/// retrieval.
pub fn bit_sum(bytes: &[u8], width: u8, count: usize) -> u64 {
    if width == 0 || count == 0 {
        return 0;
    }
    let w = usize::from(width);
    let mask = if width == 32 {
        u64::from(u32::MAX)
    } else {
        (1u64 << width) - 1
    };
    // Eight values take exactly `w` bytes, so the values of every group of eight sit at the
    // same byte offsets and shifts from the group's first byte (the last window ends at most
    // `w + 7` bytes in).
    let offsets: [usize; 8] = std::array::from_fn(|j| j * w / 8);
    let shifts: [usize; 8] = std::array::from_fn(|j| j * w % 8);
    let whole_groups = match bytes.len().checked_sub(w + 7) {
        Some(room) => room / w + 1,
        None => 0,
    };
    let groups = (count / 8).min(whole_groups);
    let mut sum = 0u64;
    for g in 0..groups {
        let chunk = &bytes[g * w..g * w + w + 7];
        for j in 0..8 {
            let word = u64::from_le_bytes(bytes_at(chunk, offsets[j]));
            sum += (word >> shifts[j]) & mask;
        }
    }
    // The rest (fewer than eight, and the last groups when the array ends within a window's
    // reach) one by one.
    sum + (groups * 8..count)
        .map(|i| u64::from(bit_get(bytes, width, i)))
        .sum::<u64>()
}

/// Unpack `n` values of `width` bits into `out` (replacing its contents). `bytes` must be
/// exactly `bitpacked_len(n, width)` long.
pub fn bitunpack(bytes: &[u8], width: u8, n: usize, out: &mut Vec<u32>) -> DecodeResult<()> {
    if width > 32 {
        corrupt!("bit width {width} exceeds 32");
    }
    if bytes.len() != bitpacked_len(n, width) {
        corrupt!(
            "{} bytes cannot hold {n} values of {width} bits",
            bytes.len()
        );
    }
    out.clear();
    out.resize(n, 0);
    if width == 0 || n == 0 {
        return Ok(());
    }
    let groups = n / 8;
    // One copy of the loop per width, so that shifts and masks are constants and the eight
    // values of a group unroll.
    macro_rules! by_width {
        ($($w:literal)*) => {
            match width {
                $($w => unpack_groups::<$w>(bytes, &mut out[..groups * 8]),)*
                _ => unreachable!("width checked above"),
            }
        };
    }
    by_width!(1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31 32);
    for (i, d) in out.iter_mut().enumerate().skip(groups * 8) {
        *d = bit_get(bytes, width, i);
    }
    Ok(())
}

/// Unpack whole groups of eight `W`-bit values into `out` (a multiple of eight long). Eight
/// values of W bits take exactly W bytes, so each group starts on a byte boundary; each value is
/// one unaligned 8-byte load, straight from `bytes` while eight bytes remain, else from a
/// zero-padded copy of the group.
#[inline(always)]
fn unpack_groups<const W: usize>(bytes: &[u8], out: &mut [u32]) {
    let mask = if W == 32 {
        u32::MAX as u64
    } else {
        (1u64 << W) - 1
    };
    let group = |src: &[u8], dst: &mut [u32]| {
        for (j, d) in dst.iter_mut().enumerate() {
            let bit = j * W;
            let word = u64::from_le_bytes(bytes_at(src, bit / 8));
            *d = ((word >> (bit % 8)) & mask) as u32;
        }
    };
    for (g, dst) in out.chunks_exact_mut(8).enumerate() {
        let start = g * W;
        // The last value's load starts at byte (7 * W) / 8 of the group.
        if start + (7 * W) / 8 + 8 <= bytes.len() {
            group(&bytes[start..], dst);
        } else {
            let mut padded = [0u8; 32 + 8];
            padded[..W].copy_from_slice(&bytes[start..start + W]);
            group(&padded, dst);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Chunks: the unit of compression and checksumming inside segment files.
//
// layout: codec u8 | raw_len u32 | stored_len u32 | crc32c u32 | payload[stored_len]
// The CRC covers the first 9 header bytes and the payload.

pub const CHUNK_HEADER_LEN: usize = 13;
pub const CODEC_RAW: u8 = 0;
pub const CODEC_ZSTD: u8 = 1;
/// Smallest saving, in bytes, for which a chunk is stored compressed.
pub const MIN_ZSTD_SAVING: usize = 64;

thread_local! {
    static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

fn zstd_compress(raw: &[u8], level: i32) -> Option<Vec<u8>> {
    COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().map(|(l, _)| *l) != Some(level) {
            *slot = Some((level, zstd::bulk::Compressor::new(level).ok()?));
        }
        slot.as_mut()?.1.compress(raw).ok()
    })
}

fn zstd_decompress(payload: &[u8], raw_len: usize, out: &mut Vec<u8>) -> DecodeResult<()> {
    DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        let d = match &mut *slot {
            Some(d) => d,
            None => slot.insert(
                zstd::bulk::Decompressor::new()
                    .map_err(|e| DecodeError::corrupt(format!("zstd context: {e}")))?,
            ),
        };
        out.clear();
        out.reserve_exact(raw_len);
        let n = d
            .decompress_to_buffer(payload, out)
            .map_err(|e| DecodeError::corrupt(format!("zstd: {e}")))?;
        if n != raw_len {
            corrupt!("zstd produced {n} bytes, header says {raw_len}");
        }
        Ok(())
    })
}

/// Append a chunk holding `raw`, compressed with zstd at `level` when that saves at least an
/// eighth and at least [`MIN_ZSTD_SAVING`] bytes. Below that, reading raw bytes in place is worth
/// more than the space: a zstd frame costs microseconds of table set-up to decode, whatever its
/// size.
pub fn write_chunk(out: &mut Vec<u8>, raw: &[u8], level: i32) {
    let start = out.len();
    let keep_if = raw.len() - (raw.len() / 8).max(MIN_ZSTD_SAVING).min(raw.len());
    let compressed = zstd_compress(raw, level).filter(|c| c.len() < keep_if);
    let (codec, payload): (u8, &[u8]) = match &compressed {
        Some(c) => (CODEC_ZSTD, c),
        None => (CODEC_RAW, raw),
    };
    out.push(codec);
    out.extend_from_slice(&(raw.len() as u32).to_le_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    let mut crc = crc32c::crc32c(&out[start..start + 9]);
    crc = crc32c::crc32c_append(crc, payload);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(payload);
}

/// Check the chunk that is `bytes` (exactly one chunk) and return its raw contents: the stored
/// bytes themselves when uncompressed, else decompressed into `scratch`. `max_raw_len` bounds
/// the size a damaged header can ask for.
pub fn read_chunk<'a>(
    bytes: &'a [u8],
    max_raw_len: usize,
    scratch: &'a mut Vec<u8>,
) -> DecodeResult<&'a [u8]> {
    let mut r = Reader::new(bytes);
    let codec = r.u8()?;
    let raw_len = r.u32()? as usize;
    let stored_len = r.u32()? as usize;
    let crc = r.u32()?;
    let payload = r.bytes(stored_len)?;
    r.finish()?;
    let mut actual = crc32c::crc32c(&bytes[..9]);
    actual = crc32c::crc32c_append(actual, payload);
    if !checksum_matches(crc, actual) {
        corrupt!("chunk checksum mismatch (stored {crc:08x}, computed {actual:08x})");
    }
    if raw_len > max_raw_len {
        corrupt!("chunk claims {raw_len} raw bytes, limit is {max_raw_len}");
    }
    match codec {
        CODEC_RAW => {
            if stored_len != raw_len {
                corrupt!("raw chunk stores {stored_len} bytes but claims {raw_len}");
            }
            Ok(payload)
        }
        CODEC_ZSTD => {
            zstd_decompress(payload, raw_len, scratch)?;
            Ok(scratch)
        }
        other => corrupt!("unknown chunk codec {other}"),
    }
}

/// Length of the chunk at the start of `bytes`, from its header, without checking it.
pub fn chunk_len(bytes: &[u8]) -> DecodeResult<usize> {
    let mut r = Reader::new(bytes);
    r.u8()?;
    r.u32()?;
    let stored = r.u32()? as usize;
    Ok(CHUNK_HEADER_LEN + stored)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// `n` pseudo-random `width`-bit values from `seed`, and their packed bytes.
    fn packed_values(width: u8, seed: u64, n: usize) -> (Vec<u32>, Vec<u8>) {
        let mask = if width == 32 {
            u32::MAX
        } else {
            (1u32 << width).wrapping_sub(1)
        };
        let mut x = seed | 1;
        let values: Vec<u32> = (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x as u32) & mask
            })
            .collect();
        let mut packed = Vec::new();
        bitpack(&values, width, &mut packed);
        (values, packed)
    }

    proptest! {
        #[test]
        fn varint_round_trip(values in proptest::collection::vec(any::<u64>(), 0..200)) {
            let mut buf = Vec::new();
            for &v in &values { put_varint(&mut buf, v); }
            let mut r = Reader::new(&buf);
            for &v in &values { prop_assert_eq!(r.varint().unwrap(), v); }
            prop_assert!(r.finish().is_ok());
        }

        /// The sum of a packed prefix equals the values' sum, for every width and length,
        /// short arrays (no eight-byte window) included.
        #[test]
        fn bit_sum_is_the_sum_of_the_values(width in 0u8..=32, seed in any::<u64>(), n in 0usize..300) {
            let (values, packed) = packed_values(width, seed, n);
            for count in 0..=n {
                let want: u64 = values[..count].iter().map(|&v| u64::from(v)).sum();
                prop_assert_eq!(bit_sum(&packed, width, count), want, "count {}", count);
            }
        }

        #[test]
        fn bitpack_round_trip(width in 0u8..=32, seed in any::<u64>(), n in 0usize..600) {
            let (values, packed) = packed_values(width, seed, n);
            prop_assert_eq!(packed.len(), bitpacked_len(n, width));
            let mut out = Vec::new();
            bitunpack(&packed, width, n, &mut out).unwrap();
            prop_assert_eq!(out, values);
        }

        #[test]
        fn chunk_round_trip(raw in proptest::collection::vec(any::<u8>(), 0..3000), repeat in 1usize..4) {
            let raw: Vec<u8> = raw.iter().cycle().take(raw.len() * repeat).copied().collect();
            let mut buf = Vec::new();
            write_chunk(&mut buf, &raw, 3);
            prop_assert_eq!(chunk_len(&buf).unwrap(), buf.len());
            let mut scratch = Vec::new();
            prop_assert_eq!(read_chunk(&buf, raw.len(), &mut scratch).unwrap(), &raw[..]);
        }

        #[test]
        fn chunk_rejects_any_flipped_byte(raw in proptest::collection::vec(any::<u8>(), 1..500), pos in any::<usize>(), bit in 0u8..8) {
            let mut buf = Vec::new();
            write_chunk(&mut buf, &raw, 3);
            let pos = pos % buf.len();
            buf[pos] ^= 1 << bit;
            let mut scratch = Vec::new();
            prop_assert!(read_chunk(&buf, 1 << 20, &mut scratch).is_err());
        }
    }

    #[test]
    fn varint_rejects_overlong() {
        let buf = [0xffu8; 11];
        assert!(Reader::new(&buf).varint().is_err());
        let buf = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02];
        assert!(Reader::new(&buf).varint().is_err());
    }

    #[test]
    fn chunk_bounds_raw_len() {
        let mut buf = Vec::new();
        write_chunk(&mut buf, &vec![7u8; 10_000], 3);
        let mut scratch = Vec::new();
        assert!(read_chunk(&buf, 9_999, &mut scratch).is_err());
    }
}
