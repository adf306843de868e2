//! Bit streams and Elias–Fano lists: the position lists of format version 2 (docs/FORMAT.md).
//!
//! An Elias–Fano list stores `c` strictly increasing values below a universe `u` in
//! `c * l + c + ((u - 1) >> l)` bits, `l = floor(log2(u / c))`: each value's low `l` bits packed,
//! then its high part in unary (value `i` sets bit `(v_i >> l) + i` of the high bitvector). That
//! is within two bits per value of the information-theoretic minimum for any density, the size
//! follows from `(c, u)` alone (so lists can be packed back to back and found by summing sizes),
//! and the list answers "how many values are below `x`" (a rank) and "the values below `x`, largest
//! first" by scanning the high bitvector a word at a time, without decoding the list.

use crate::error::{corrupt, DecodeResult};

/// Appends values of up to 57 bits to a byte buffer, least significant bit first (the order of
/// [`crate::codec::bitpack`]).
#[derive(Debug, Default)]
pub struct BitWriter {
    bytes: Vec<u8>,
    bits: usize,
}

impl BitWriter {
    /// Append the low `width` bits of `v` (`width <= 57`).
    pub fn push(&mut self, v: u64, width: u32) {
        debug_assert!(width <= 57 && v >> width == 0);
        if width == 0 {
            return;
        }
        let end = self.bits + width as usize;
        self.bytes.resize(end.div_ceil(8), 0);
        let mut v = v;
        let mut at = self.bits;
        while at < end {
            let shift = at % 8;
            self.bytes[at / 8] |= (v << shift) as u8;
            let taken = 8 - shift;
            v = v.checked_shr(taken as u32).unwrap_or(0);
            at += taken;
        }
        self.bits = end;
    }

    /// Set bit `bit` (which must be below [`BitWriter::len`]).
    fn set(&mut self, bit: usize) {
        self.bytes[bit / 8] |= 1 << (bit % 8);
    }

    /// Append `n` zero bits.
    pub fn zeros(&mut self, n: usize) {
        self.bits += n;
        self.bytes.resize(self.bits.div_ceil(8), 0);
    }

    /// Bits written.
    pub fn len(&self) -> usize {
        self.bits
    }

    pub fn is_empty(&self) -> bool {
        self.bits == 0
    }

    /// The bytes, the last one padded with zero bits.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

/// Bits `[bit, bit + width)` of `bytes` (`width <= 57`), zero beyond the end of `bytes`.
#[inline]
pub fn read_bits(bytes: &[u8], bit: usize, width: u32) -> u64 {
    debug_assert!(width <= 57);
    if width == 0 {
        return 0;
    }
    let byte = bit / 8;
    let word = match bytes.get(byte..byte + 8) {
        Some(b) => u64::from_le_bytes(b.try_into().expect("8 bytes")),
        None => {
            let mut w = [0u8; 8];
            if let Some(tail) = bytes.get(byte..) {
                w[..tail.len()].copy_from_slice(tail);
            }
            u64::from_le_bytes(w)
        }
    };
    (word >> (bit % 8)) & (u64::MAX >> (64 - width))
}

/// The low-bit width of an Elias–Fano list of `c` values below `u` (`1 <= c <= u`).
#[inline]
pub fn low_bits(c: u64, u: u64) -> u32 {
    let q = u / c.max(1);
    if q <= 1 {
        0
    } else {
        63 - q.leading_zeros()
    }
}

/// Bits of an Elias–Fano list of `c` values below `u` (0 for an empty list).
#[inline]
pub fn size_bits(c: u64, u: u64) -> u64 {
    if c == 0 {
        return 0;
    }
    let l = low_bits(c, u);
    c * u64::from(l) + c + ((u - 1) >> l)
}

/// Append `values` (strictly increasing, each below `u`, `u <= 2^32`) as an Elias–Fano list.
pub fn encode(values: &[u32], u: u64, out: &mut BitWriter) {
    let c = values.len() as u64;
    if c == 0 {
        return;
    }
    debug_assert!(values.windows(2).all(|w| w[0] < w[1]));
    debug_assert!(u64::from(values[values.len() - 1]) < u);
    let l = low_bits(c, u);
    let mask = if l == 0 { 0 } else { u64::MAX >> (64 - l) };
    for &v in values {
        out.push(u64::from(v) & mask, l);
    }
    let high_at = out.len();
    out.zeros((c + ((u - 1) >> l)) as usize);
    for (i, &v) in values.iter().enumerate() {
        out.set(high_at + (u64::from(v) >> l) as usize + i);
    }
}

/// An Elias–Fano list read in place from a bit stream.
#[derive(Debug, Clone, Copy)]
pub struct EfList<'a> {
    bytes: &'a [u8],
    low_at: usize,
    high_at: usize,
    high_len: usize,
    c: usize,
    l: u32,
}

/// Bits scanned at a time in the high bitvector.
const SCAN: usize = 56;

impl<'a> EfList<'a> {
    /// The list of `c` values below `u` that starts at bit `bit` of `bytes`. Checks only that
    /// the bits are there; [`EfList::validate`] checks the contents.
    pub fn new(bytes: &'a [u8], bit: usize, c: usize, u: u64) -> DecodeResult<Self> {
        if c as u64 > u || u > 1 << 32 {
            corrupt!("list of {c} values below {u}");
        }
        let size = size_bits(c as u64, u) as usize;
        if bit
            .checked_add(size)
            .is_none_or(|end| end > bytes.len() * 8)
        {
            corrupt!(
                "list of {size} bits at bit {bit} lies outside its {} bytes",
                bytes.len()
            );
        }
        let l = low_bits(c as u64, u);
        let low_at = bit;
        let high_at = bit + c * l as usize;
        Ok(EfList {
            bytes,
            low_at,
            high_at,
            high_len: bit + size - high_at,
            c,
            l,
        })
    }

    pub fn len(&self) -> usize {
        self.c
    }

    /// Bits the list takes.
    pub fn bits(&self) -> usize {
        self.high_at - self.low_at + self.high_len
    }

    /// The bit where this list starts in its stream.
    pub fn start_bit(&self) -> usize {
        self.low_at
    }

    pub fn is_empty(&self) -> bool {
        self.c == 0
    }

    #[inline]
    fn low(&self, i: usize) -> u64 {
        read_bits(self.bytes, self.low_at + i * self.l as usize, self.l)
    }

    #[inline]
    fn value(&self, i: usize, high_bit: usize) -> u32 {
        ((((high_bit.saturating_sub(i)) as u64) << self.l) | self.low(i)) as u32
    }

    #[inline]
    fn chunk(&self, from: usize, width: usize) -> u64 {
        read_bits(self.bytes, self.high_at + from, width as u32)
    }

    /// The first set bit of the high bitvector at or after `from`.
    fn next_one(&self, mut from: usize) -> Option<usize> {
        while from < self.high_len {
            let w = SCAN.min(self.high_len - from);
            let chunk = self.chunk(from, w);
            if chunk != 0 {
                return Some(from + chunk.trailing_zeros() as usize);
            }
            from += w;
        }
        None
    }

    /// The last set bit of the high bitvector before `before`.
    fn prev_one(&self, mut before: usize) -> Option<usize> {
        while before > 0 {
            let start = before.saturating_sub(SCAN);
            let chunk = self.chunk(start, before - start);
            if chunk != 0 {
                return Some(start + 63 - chunk.leading_zeros() as usize);
            }
            before = start;
        }
        None
    }

    /// Position of zero number `k` (0-based) of the high bitvector.
    fn select_zero(&self, mut k: usize) -> Option<usize> {
        let mut from = 0;
        while from < self.high_len {
            let w = SCAN.min(self.high_len - from);
            let zeros = !self.chunk(from, w) & (u64::MAX >> (64 - w));
            let n = zeros.count_ones() as usize;
            if n > k {
                let mut z = zeros;
                for _ in 0..k {
                    z &= z - 1;
                }
                return Some(from + z.trailing_zeros() as usize);
            }
            k -= n;
            from += w;
        }
        None
    }

    /// The values in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        let mut i = 0;
        let mut at = 0;
        std::iter::from_fn(move || {
            if i >= self.c {
                return None;
            }
            let p = self.next_one(at)?;
            let v = self.value(i, p);
            i += 1;
            at = p + 1;
            Some(v)
        })
    }

    /// The largest value (`None` for an empty list).
    pub fn last(&self) -> Option<u32> {
        self.below(u64::MAX).next()
    }

    /// Number of values below `x`.
    pub fn rank(&self, x: u64) -> usize {
        self.cursor(x).0
    }

    /// The values below `x`, largest first.
    pub fn below(&self, x: u64) -> Below<'a> {
        let (idx, pos) = self.cursor(x);
        Below {
            list: *self,
            idx,
            pos,
        }
    }

    /// (number of values below `x`, high-bitvector position of the largest of them).
    fn cursor(&self, x: u64) -> (usize, usize) {
        if self.c == 0 {
            return (0, 0);
        }
        let h = (x >> self.l) as usize;
        // Values in bucket h (high part h) lie after zero number h - 1; those in earlier buckets
        // before it. Past the last bucket, every value is below x.
        let start = if h == 0 {
            Some(0)
        } else {
            self.select_zero(h - 1).map(|p| p + 1)
        };
        let Some(mut pos) = start else {
            return (self.c, self.prev_one(self.high_len).unwrap_or(0));
        };
        // On damaged bits more than c values could seem to precede the bucket: never count more.
        let mut idx = (pos - h).min(self.c);
        let xl = if self.l == 0 {
            0
        } else {
            x & (u64::MAX >> (64 - self.l))
        };
        while idx < self.c && pos < self.high_len && self.chunk(pos, 1) == 1 && self.low(idx) < xl {
            idx += 1;
            pos += 1;
        }
        let last = if idx == 0 {
            0
        } else {
            self.prev_one(pos).unwrap_or(0)
        };
        (idx, last)
    }

    /// Check the list: exactly `c` set bits in the high bitvector, values strictly increasing
    /// and below `u`. Returns the values.
    pub fn validate(&self, u: u64) -> DecodeResult<Vec<u32>> {
        let ones: u32 = (0..self.high_len)
            .step_by(SCAN)
            .map(|from| {
                self.chunk(from, SCAN.min(self.high_len - from))
                    .count_ones()
            })
            .sum();
        if ones as usize != self.c {
            corrupt!("list has {ones} set high bits for {} values", self.c);
        }
        let values: Vec<u32> = self.iter().collect();
        if values.windows(2).any(|w| w[0] >= w[1]) {
            corrupt!("list values do not increase");
        }
        if values.last().is_some_and(|&v| u64::from(v) >= u) {
            corrupt!("list value beyond {u}");
        }
        Ok(values)
    }
}

/// Values of an [`EfList`] below a bound, largest first.
pub struct Below<'a> {
    list: EfList<'a>,
    /// Values not yet returned: indexes `0..idx`.
    idx: usize,
    /// High-bitvector position of value `idx - 1`.
    pos: usize,
}

impl Iterator for Below<'_> {
    type Item = u32;

    #[inline]
    fn next(&mut self) -> Option<u32> {
        if self.idx == 0 {
            return None;
        }
        self.idx -= 1;
        let v = self.list.value(self.idx, self.pos);
        if self.idx > 0 {
            self.pos = self.list.prev_one(self.pos).unwrap_or(0);
        }
        Some(v)
    }
}

impl Below<'_> {
    /// Values left.
    pub fn remaining(&self) -> usize {
        self.idx
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn list(values: &[u32], u: u64, pad: usize) -> (Vec<u8>, usize) {
        let mut w = BitWriter::default();
        w.zeros(pad);
        encode(values, u, &mut w);
        assert_eq!(
            w.len() as u64,
            pad as u64 + size_bits(values.len() as u64, u)
        );
        (w.into_bytes(), pad)
    }

    proptest! {
        #[test]
        fn round_trip_rank_and_below(
            set in proptest::collection::btree_set(0u32..5000, 1..400),
            extra in 0u64..3000,
            pad in 0usize..70,
            xs in proptest::collection::vec(0u64..9000, 10),
        ) {
            let values: Vec<u32> = set.into_iter().collect();
            let u = u64::from(*values.last().unwrap()) + 1 + extra;
            let (bytes, at) = list(&values, u, pad);
            let ef = EfList::new(&bytes, at, values.len(), u).unwrap();
            prop_assert_eq!(ef.validate(u).unwrap(), values.clone());
            prop_assert_eq!(ef.iter().collect::<Vec<_>>(), values.clone());
            prop_assert_eq!(ef.last(), values.last().copied());
            for x in xs {
                let want = values.iter().filter(|&&v| u64::from(v) < x).count();
                prop_assert_eq!(ef.rank(x), want);
                let below: Vec<u32> = ef.below(x).collect();
                let expect: Vec<u32> = values.iter().rev().copied().filter(|&v| u64::from(v) < x).collect();
                prop_assert_eq!(below, expect);
            }
        }

        #[test]
        fn bit_writer_round_trip(vals in proptest::collection::vec((any::<u64>(), 0u32..=57), 0..200)) {
            let mut w = BitWriter::default();
            for &(v, width) in &vals {
                w.push(if width == 0 { 0 } else { v & (u64::MAX >> (64 - width)) }, width);
            }
            let bytes = w.into_bytes();
            let mut at = 0;
            for &(v, width) in &vals {
                let want = if width == 0 { 0 } else { v & (u64::MAX >> (64 - width)) };
                prop_assert_eq!(read_bits(&bytes, at, width), want);
                at += width as usize;
            }
        }

        #[test]
        fn damaged_lists_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64), c in 0usize..40, u in 1u64..600, xs in proptest::collection::vec(0u64..700, 4)) {
            if let Ok(ef) = EfList::new(&bytes, 3, c, u) {
                let _ = ef.validate(u);
                let _ = ef.iter().count();
                for x in xs {
                    let _ = ef.rank(x);
                    let _ = ef.below(x).count();
                }
            }
        }
    }

    #[test]
    fn dense_and_full_lists() {
        let values: Vec<u32> = (0..1000).collect();
        let (bytes, at) = list(&values, 1000, 0);
        let ef = EfList::new(&bytes, at, 1000, 1000).unwrap();
        assert_eq!(ef.rank(500), 500);
        assert_eq!(ef.below(3).collect::<Vec<_>>(), vec![2, 1, 0]);
        let one = [99_999u32];
        let (bytes, at) = list(&one, 100_000, 5);
        let ef = EfList::new(&bytes, at, 1, 100_000).unwrap();
        assert_eq!(ef.last(), Some(99_999));
        assert_eq!(ef.rank(99_999), 0);
        assert_eq!(ef.rank(100_000), 1);
    }
}
