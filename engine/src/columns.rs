//! Column encodings of one block of a user's sequence (the raw bytes inside a chunk), and the
//! per-user item dictionary. See docs/FORMAT.md.
//!
//! - time: patched frame-of-reference deltas. The first timestamp as i64, a bit width `w`, the
//!   `n - 1` deltas' low `w` bits bit-packed, then the exceptions: for each delta `>= 2^w`, its
//!   index and its high bits. `w` is chosen per block to minimise the size, so a rare long gap
//!   does not widen every delta.
//! - item, action, domain: a bit width, then the values bit-packed at that width.
//!
//! The dictionary lists a user's distinct items as their internal catalog numbers, ascending, in
//! blocks of [`DICT_BLOCK`] entries: per block a base and a width, then each entry's offset from
//! the base bit-packed. Any entry can be read in O(1) without decoding the others.

use crate::codec::{
    bit_get, bitpack, bitpacked_len, bits_for, bitunpack, le_u32, put_varint, Reader,
};
use crate::error::{corrupt, DecodeResult};

/// A bit-packed column read in place: `width u8 | values`.
#[derive(Clone, Copy)]
pub struct Packed<'a> {
    pub width: u8,
    data: &'a [u8],
    n: usize,
}

impl<'a> Packed<'a> {
    pub fn parse(raw: &'a [u8], n: usize, max_width: u8) -> DecodeResult<Self> {
        let Some((&width, data)) = raw.split_first() else {
            corrupt!("empty bit-packed column");
        };
        if width > max_width {
            corrupt!("bit width {width} exceeds {max_width}");
        }
        if data.len() != bitpacked_len(n, width) {
            corrupt!(
                "{} bytes cannot hold {n} values of {width} bits",
                data.len()
            );
        }
        Ok(Packed { width, data, n })
    }

    #[inline]
    pub fn get(&self, i: usize) -> u32 {
        debug_assert!(i < self.n);
        bit_get(self.data, self.width, i)
    }

    pub fn unpack(&self, out: &mut Vec<u32>) -> DecodeResult<()> {
        bitunpack(self.data, self.width, self.n, out)
    }
}

/// Encode small unsigned values: `width u8 | values bit-packed`.
pub fn encode_packed(values: &[u32], out: &mut Vec<u8>) {
    let width = bits_for(u64::from(values.iter().copied().max().unwrap_or(0)));
    out.push(width);
    bitpack(values, width, out);
}

// ---------------------------------------------------------------------------------------------
// Time

pub fn encode_time(ts: &[i64], out: &mut Vec<u8>) {
    let Some(&first) = ts.first() else { return };
    out.extend_from_slice(&first.to_le_bytes());
    let deltas: Vec<u64> = ts
        .windows(2)
        .map(|w| w[1].wrapping_sub(w[0]) as u64)
        .collect();
    debug_assert!(
        ts.windows(2).all(|w| w[0] <= w[1]),
        "time column must be sorted"
    );
    // Bytes for width w: packed low bits, plus (index u16 + varint of the high bits) for each
    // delta that does not fit. A delta of b significant bits is an exception below width b, and
    // its high part then has b - w bits, so a histogram of b prices every width.
    let mut by_bits = [0usize; 65];
    for &d in &deltas {
        by_bits[usize::from(bits_for(d))] += 1;
    }
    let mut best = (usize::MAX, 0u8);
    for w in 0..=32u8 {
        let mut size = bitpacked_len(deltas.len(), w);
        for (b, &count) in by_bits.iter().enumerate().skip(usize::from(w) + 1) {
            size += count * (2 + (b - usize::from(w)).div_ceil(7));
        }
        if size < best.0 {
            best = (size, w);
        }
    }
    let w = best.1;
    let mask = if w == 32 {
        u32::MAX as u64
    } else {
        (1u64 << w) - 1
    };
    let lows: Vec<u32> = deltas.iter().map(|&d| (d & mask) as u32).collect();
    let exceptions: Vec<(usize, u64)> = deltas
        .iter()
        .enumerate()
        .filter(|(_, &d)| (d >> w) != 0)
        .map(|(i, &d)| (i, d >> w))
        .collect();
    out.push(w);
    out.extend_from_slice(&(exceptions.len() as u16).to_le_bytes());
    bitpack(&lows, w, out);
    for (i, high) in exceptions {
        out.extend_from_slice(&(i as u16).to_le_bytes());
        put_varint(out, high);
    }
}

/// Decode `n` sorted timestamps (`n <= 65,536`).
pub fn decode_time(raw: &[u8], n: usize, out: &mut Vec<i64>) -> DecodeResult<()> {
    out.clear();
    if n == 0 {
        if !raw.is_empty() {
            corrupt!("time column of 0 events has {} bytes", raw.len());
        }
        return Ok(());
    }
    if n > 65_536 {
        corrupt!("time block of {n} events");
    }
    let mut r = Reader::new(raw);
    let first = r.i64()?;
    let w = r.u8()?;
    if w > 32 {
        corrupt!("time delta width {w}");
    }
    let n_exc = r.u16()? as usize;
    if n_exc > n - 1 {
        corrupt!("{n_exc} time exceptions for {} deltas", n - 1);
    }
    let packed = r.bytes(bitpacked_len(n - 1, w))?;
    crate::codec::with_time_lows(|lows| {
        bitunpack(packed, w, n - 1, lows)?;
        sum_deltas(raw, r.position(), lows, first, n_exc, w, out)
    })
}

/// Patch the exceptions' high bits into the deltas `lows` and sum them from `first`.
fn sum_deltas(
    raw: &[u8],
    exc_start: usize,
    lows: &[u32],
    first: i64,
    n_exc: usize,
    w: u8,
    out: &mut Vec<i64>,
) -> DecodeResult<()> {
    let n = lows.len() + 1;
    let mut exceptions = Reader::new(&raw[exc_start..]);
    let mut prev_idx = None;
    out.reserve(n);
    out.push(first);
    let mut t = first;
    let mut next_exc = if n_exc > 0 {
        Some(read_exception(&mut exceptions, &mut prev_idx, n - 1, w)?)
    } else {
        None
    };
    let mut seen = 0;
    let mut i = 0;
    loop {
        // A run of plain deltas up to the next exception: each is below 2^32 and a run is
        // below 2^16 long, so the sum can wrap at most once, which shows as going backwards.
        let end = next_exc.map_or(lows.len(), |(ei, _)| ei);
        let before = t;
        out.extend(lows[i..end].iter().map(|&low| {
            t = t.wrapping_add(i64::from(low));
            t
        }));
        if t < before {
            corrupt!("time deltas before event {} overflow", end + 1);
        }
        let Some((ei, high)) = next_exc else { break };
        let d = u64::from(lows[ei]) | (high << w);
        t = match t.checked_add_unsigned(d) {
            Some(v) => v,
            None => corrupt!("time delta {d} at event {} overflows", ei + 1),
        };
        out.push(t);
        i = ei + 1;
        seen += 1;
        next_exc = if seen < n_exc {
            Some(read_exception(&mut exceptions, &mut prev_idx, n - 1, w)?)
        } else {
            None
        };
    }
    exceptions.finish()
}

fn read_exception(
    r: &mut Reader<'_>,
    prev: &mut Option<usize>,
    deltas: usize,
    w: u8,
) -> DecodeResult<(usize, u64)> {
    let i = r.u16()? as usize;
    let high = r.varint()?;
    if i >= deltas || prev.is_some_and(|p| p >= i) {
        corrupt!("time exception index {i} out of order or range");
    }
    *prev = Some(i);
    if (w > 0 && high >> (64 - u32::from(w)) != 0) || high == 0 {
        corrupt!("time exception {i} is not an exception");
    }
    Ok((i, high))
}

// ---------------------------------------------------------------------------------------------
// Dictionary

pub const DICT_BLOCK: usize = 64;
/// Per block: base u32, width u8, byte offset u32 (into the packed data).
const DICT_BLOCK_META: usize = 9;

/// Encode a dictionary of internal catalog numbers, strictly ascending.
pub fn encode_dict(internal: &[u32], out: &mut Vec<u8>) {
    debug_assert!(internal.windows(2).all(|w| w[0] < w[1]));
    let mut data = Vec::new();
    for block in internal.chunks(DICT_BLOCK) {
        let base = block[0];
        let offs: Vec<u32> = block.iter().map(|&v| v - base).collect();
        let last = offs.last().expect("`chunks` yields no empty block");
        let w = bits_for(u64::from(*last));
        out.extend_from_slice(&base.to_le_bytes());
        out.push(w);
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        bitpack(&offs, w, &mut data);
    }
    out.extend_from_slice(&data);
}

/// A dictionary read in place.
#[derive(Clone, Copy)]
pub struct DictView<'a> {
    n: usize,
    meta: &'a [u8],
    data: &'a [u8],
}

impl<'a> DictView<'a> {
    /// Parse and check the block structure (not that values ascend: see [`DictView::validate`]).
    pub fn parse(raw: &'a [u8], n: usize) -> DecodeResult<Self> {
        let blocks = n.div_ceil(DICT_BLOCK);
        let Some(meta_len) = blocks
            .checked_mul(DICT_BLOCK_META)
            .filter(|&l| l <= raw.len())
        else {
            corrupt!("dictionary of {} bytes cannot hold {n} entries", raw.len());
        };
        let (meta, data) = raw.split_at(meta_len);
        let mut expect = 0usize;
        for b in 0..blocks {
            let m = &meta[b * DICT_BLOCK_META..];
            let w = m[4];
            let off = le_u32(m, 5) as usize;
            if w > 32 || off != expect {
                corrupt!("dictionary block {b}: width {w}, offset {off}, expected offset {expect}");
            }
            let len = (n - b * DICT_BLOCK).min(DICT_BLOCK);
            expect += bitpacked_len(len, w);
        }
        if expect != data.len() {
            corrupt!(
                "dictionary data is {} bytes, blocks need {expect}",
                data.len()
            );
        }
        Ok(DictView { n, meta, data })
    }

    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Entry `i` (`i < len`); saturates instead of overflowing on damaged bytes.
    #[inline]
    pub fn get(&self, i: usize) -> u32 {
        let b = i / DICT_BLOCK;
        let m = &self.meta[b * DICT_BLOCK_META..];
        let base = le_u32(m, 0);
        let w = m[4];
        let off = le_u32(m, 5) as usize;
        base.saturating_add(bit_get(&self.data[off..], w, i % DICT_BLOCK))
    }

    pub fn to_vec(&self) -> Vec<u32> {
        (0..self.n).map(|i| self.get(i)).collect()
    }

    /// Check that entries ascend strictly.
    pub fn validate(&self) -> DecodeResult<()> {
        let mut prev = None;
        for i in 0..self.n {
            let v = self.get(i);
            if prev.is_some_and(|p| p >= v) {
                corrupt!("dictionary entries not ascending at {i}");
            }
            prev = Some(v);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sorted_ts() -> impl Strategy<Value = Vec<i64>> {
        prop_oneof![
            // Realistic millisecond gaps with rare long breaks and equal timestamps.
            (
                any::<i32>(),
                proptest::collection::vec(
                    prop_oneof![8 => 0u64..200_000, 1 => Just(0u64), 1 => 0u64..(1u64 << 40)],
                    0..1500
                )
            )
                .prop_map(|(s, gaps)| {
                    let mut t = i64::from(s) * 1000;
                    gaps.into_iter()
                        .map(|g| {
                            t += g as i64;
                            t
                        })
                        .collect()
                }),
            // Extremes: the whole i64 range, sorted.
            proptest::collection::vec(any::<i64>(), 0..300).prop_map(|mut v| {
                v.sort();
                v
            }),
            // All equal.
            (any::<i64>(), 0usize..2000).prop_map(|(t, n)| vec![t; n]),
        ]
    }

    proptest! {
        #[test]
        fn time_round_trip(ts in sorted_ts()) {
            let mut raw = Vec::new();
            encode_time(&ts, &mut raw);
            let mut out = Vec::new();
            decode_time(&raw, ts.len(), &mut out).unwrap();
            prop_assert_eq!(out, ts);
        }

        #[test]
        fn packed_round_trip_and_random_access(max in any::<u32>(), seed in any::<u64>(), n in 0usize..3000) {
            let mut x = seed | 1;
            let v: Vec<u32> = (0..n).map(|_| { x ^= x << 13; x ^= x >> 7; x ^= x << 17; (x as u32) % max.max(1) }).collect();
            let mut raw = Vec::new();
            encode_packed(&v, &mut raw);
            let p = Packed::parse(&raw, n, 32).unwrap();
            let mut out = Vec::new();
            p.unpack(&mut out).unwrap();
            prop_assert_eq!(&out, &v);
            for (i, &want) in v.iter().enumerate().step_by(7) {
                prop_assert_eq!(p.get(i), want);
            }
        }

        #[test]
        fn dict_round_trip(set in proptest::collection::btree_set(any::<u32>(), 0..2000)) {
            let v: Vec<u32> = set.into_iter().collect();
            let mut raw = Vec::new();
            encode_dict(&v, &mut raw);
            let d = DictView::parse(&raw, v.len()).unwrap();
            d.validate().unwrap();
            prop_assert_eq!(d.to_vec(), v);
        }

        #[test]
        fn decoders_never_panic(raw in proptest::collection::vec(any::<u8>(), 0..300), n in 0usize..100) {
            let mut t = Vec::new();
            let _ = decode_time(&raw, n, &mut t);
            if let Ok(p) = Packed::parse(&raw, n, 32) {
                let mut o = Vec::new();
                let _ = p.unpack(&mut o);
                for i in 0..n { let _ = p.get(i); }
            }
            if let Ok(d) = DictView::parse(&raw, n) {
                let _ = d.validate();
                let _ = d.to_vec();
            }
        }
    }

    #[test]
    fn time_rejects_overflow() {
        let mut raw = Vec::new();
        encode_time(&[i64::MAX - 1, i64::MAX], &mut raw);
        let mut out = Vec::new();
        decode_time(&raw, 2, &mut out).unwrap();
        // Patch the delta so the sum overflows.
        let mut bad = Vec::new();
        bad.extend_from_slice(&i64::MAX.to_le_bytes());
        bad.push(1);
        bad.extend_from_slice(&0u16.to_le_bytes());
        bad.push(1);
        assert!(decode_time(&bad, 2, &mut out).is_err());
    }

    #[test]
    fn long_gaps_become_exceptions() {
        let mut ts: Vec<i64> = (0..1000).map(|i| i * 1000).collect();
        for t in ts.iter_mut().skip(500) {
            *t += 86_400_000 * 30;
        }
        let mut raw = Vec::new();
        encode_time(&ts, &mut raw);
        assert!(
            raw.len() < 8 + 3 + 999 * 10 / 8 + 10,
            "one long gap must not widen every delta: {} bytes",
            raw.len()
        );
    }
}
