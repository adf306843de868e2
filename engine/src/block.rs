//! The column block of format version 2: the time, action and domain of up to `block_events`
//! consecutive events of a user entry (docs/FORMAT.md, "Column blocks"). Item codes are not
//! here: they are the entry's position lists (inverted layout) or its code array (forward layout).
//!
//! - time: frame of reference on the deltas divided by their greatest common divisor (second-
//!   resolution data stores deltas in seconds), bit-packed at the width that minimises the size;
//!   deltas too wide for it are exceptions stored after the packed bits.
//! - action, domain: a constant (nothing per event), bit-packed values, or a default value with
//!   the positions of the others as an Elias–Fano list, whichever is smallest.

use crate::codec::{bitpack, bitpacked_len, bits_for, bitunpack, put_varint, Reader};
use crate::ef::{self, BitWriter, EfList};
use crate::error::{corrupt, DecodeResult};

/// Decoded columns of one block.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Block {
    pub ts: Vec<i64>,
    pub action: Vec<u8>,
    pub domain: Vec<u16>,
}

/// The time, action and domain of one event, side by side: a point read (a retrieval's hit)
/// touches one cache line instead of three.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub ts: i64,
    pub domain: u16,
    pub action: u8,
}

/// Event `o` of a block of `n` events starting at `first_ts`, decoding only what it needs: the
/// deltas before it, and one value of each small column.
pub fn stamp_at(raw: &[u8], n: usize, first_ts: i64, o: usize) -> DecodeResult<Stamp> {
    if o >= n {
        corrupt!("event {o} of a block of {n}");
    }
    let mut r = Reader::new(raw);
    let ts = time_at(&mut r, n, first_ts, o).map_err(|e| e.context("time"))?;
    let action = small_at(&mut r, n, u32::from(u8::MAX), o).map_err(|e| e.context("action"))?;
    let domain = small_at(&mut r, n, u32::from(u16::MAX), o).map_err(|e| e.context("domain"))?;
    r.finish()?;
    Ok(Stamp {
        ts,
        domain: domain as u16,
        action: action as u8,
    })
}

/// The time part's header: divisor, width, exception count, packed low bits.
fn time_header<'a>(r: &mut Reader<'a>, n: usize) -> DecodeResult<(u64, u8, usize, &'a [u8])> {
    if n == 0 || n > 1 << 20 {
        corrupt!("time block of {n} events");
    }
    let g = r.varint()?;
    let w = r.u8()?;
    if g == 0 || w > 32 {
        corrupt!("time divisor {g}, width {w}");
    }
    let n_exc = r.varint()? as usize;
    if n_exc > n - 1 {
        corrupt!("{n_exc} time exceptions for {} deltas", n - 1);
    }
    let packed = r.bytes(bitpacked_len(n - 1, w))?;
    Ok((g, w, n_exc, packed))
}

/// The next time exception: (delta index, high bits), after delta index `next`.
fn exception(r: &mut Reader<'_>, next: usize, n: usize, w: u8) -> DecodeResult<(usize, u64)> {
    let at = next.saturating_add(r.varint()? as usize);
    let high = r.varint()?;
    if at >= n - 1 || high == 0 || (w > 0 && high >> (64 - u32::from(w)) != 0) {
        corrupt!("time exception at delta {at} is not an exception");
    }
    Ok((at, high))
}

/// Timestamp `o`: the first plus the deltas before it.
fn time_at(r: &mut Reader<'_>, n: usize, first: i64, o: usize) -> DecodeResult<i64> {
    let (g, w, n_exc, packed) = time_header(r, n)?;
    let mut sum = u128::from(crate::codec::bit_sum(packed, w, o));
    let mut next = 0;
    for _ in 0..n_exc {
        let (at, high) = exception(r, next, n, w)?;
        if at < o {
            sum += u128::from(high) << w;
        }
        next = at + 1;
    }
    let t = sum
        .checked_mul(u128::from(g))
        .and_then(|d| i128::try_from(d).ok())
        .and_then(|d| d.checked_add(i128::from(first)))
        .and_then(|t| i64::try_from(t).ok());
    match t {
        Some(t) => Ok(t),
        None => corrupt!("time of event {o} overflows"),
    }
}

/// Value `o` of a small column (see [`encode_small`]).
fn small_at(r: &mut Reader<'_>, n: usize, max: u32, o: usize) -> DecodeResult<u32> {
    let v = match r.u8()? {
        SMALL_CONSTANT => r.varint()?,
        SMALL_PACKED => {
            let w = r.u8()?;
            if w > 16 {
                corrupt!("width {w}");
            }
            u64::from(crate::codec::bit_get(r.bytes(bitpacked_len(n, w))?, w, o))
        }
        SMALL_SPARSE => {
            let default = r.varint()?;
            let w = r.u8()?;
            let others = r.varint()? as usize;
            if w > 16 || others == 0 || others >= n {
                corrupt!("{others} exceptions of width {w} among {n}");
            }
            let bits = ef::size_bits(others as u64, n as u64) as usize;
            let positions = EfList::new(r.bytes(bits.div_ceil(8))?, 0, others, n as u64)?;
            let exc = r.bytes(bitpacked_len(others, w))?;
            let idx = positions.rank(o as u64 + 1);
            if idx > 0 && positions.below(o as u64 + 1).next() == Some(o as u32) {
                u64::from(crate::codec::bit_get(exc, w, idx - 1))
            } else {
                default
            }
        }
        m => corrupt!("unknown column mode {m}"),
    };
    match u32::try_from(v) {
        Ok(v) if v <= max => Ok(v),
        _ => corrupt!("value {v} above {max}"),
    }
}

/// Encode a block whose first timestamp (`ts[0]`, stored by the caller) and columns are given.
pub fn encode_block(ts: &[i64], action: &[u32], domain: &[u32], out: &mut Vec<u8>) {
    encode_time(ts, out);
    encode_small(action, out);
    encode_small(domain, out);
}

/// Decode a block of `n` events starting at `first_ts` from `raw` (exactly one block).
pub fn decode_block(raw: &[u8], n: usize, first_ts: i64, out: &mut Block) -> DecodeResult<()> {
    let mut r = Reader::new(raw);
    decode_time(&mut r, n, first_ts, &mut out.ts).map_err(|e| e.context("time"))?;
    let mut values = Vec::new();
    decode_small(&mut r, n, u32::from(u8::MAX), &mut values).map_err(|e| e.context("action"))?;
    out.action.clear();
    out.action.extend(values.iter().map(|&v| v as u8));
    decode_small(&mut r, n, u32::from(u16::MAX), &mut values).map_err(|e| e.context("domain"))?;
    out.domain.clear();
    out.domain.extend(values.iter().map(|&v| v as u16));
    r.finish()
}

/// Bytes of the time, action and domain parts of an encoded block (for statistics).
pub fn part_lens(raw: &[u8], n: usize, first_ts: i64) -> DecodeResult<[usize; 3]> {
    let mut r = Reader::new(raw);
    let mut ts = Vec::new();
    let mut values = Vec::new();
    decode_time(&mut r, n, first_ts, &mut ts)?;
    let a = r.position();
    decode_small(&mut r, n, u32::from(u8::MAX), &mut values)?;
    let b = r.position();
    decode_small(&mut r, n, u32::from(u16::MAX), &mut values)?;
    r.finish()?;
    Ok([a, b - a, raw.len() - b])
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

fn varint_len(v: u64) -> usize {
    (bits_for(v) as usize).div_ceil(7).max(1)
}

/// `g | w | n_exc | packed low bits | n_exc × (index gap, high bits)`, all but `w` varints.
fn encode_time(ts: &[i64], out: &mut Vec<u8>) {
    debug_assert!(ts.windows(2).all(|w| w[0] <= w[1]), "time must be sorted");
    let deltas: Vec<u64> = ts
        .windows(2)
        .map(|w| w[1].wrapping_sub(w[0]) as u64)
        .collect();
    let g = deltas.iter().fold(0, |g, &d| gcd(g, d)).max(1);
    let q: Vec<u64> = deltas.iter().map(|&d| d / g).collect();
    // Price every width from a histogram of significant bits: a quotient of b bits is an
    // exception below width b, costing its index gap (about a byte) and its high bits.
    let mut by_bits = [0usize; 65];
    for &d in &q {
        by_bits[usize::from(bits_for(d))] += 1;
    }
    let w = (0..=32u8)
        .min_by_key(|&w| {
            let high: usize = (usize::from(w) + 1..65)
                .map(|b| by_bits[b] * (1 + (b - usize::from(w)).div_ceil(7)))
                .sum();
            bitpacked_len(q.len(), w) + high
        })
        .unwrap_or(0);
    let mask = if w == 32 {
        u64::from(u32::MAX)
    } else {
        (1 << w) - 1
    };
    let lows: Vec<u32> = q.iter().map(|&d| (d & mask) as u32).collect();
    let exceptions: Vec<(usize, u64)> = q
        .iter()
        .enumerate()
        .filter(|(_, &d)| d >> w != 0)
        .map(|(i, &d)| (i, d >> w))
        .collect();
    put_varint(out, g);
    out.push(w);
    put_varint(out, exceptions.len() as u64);
    bitpack(&lows, w, out);
    let mut next = 0;
    for (i, high) in exceptions {
        put_varint(out, (i - next) as u64);
        put_varint(out, high);
        next = i + 1;
    }
}

fn decode_time(r: &mut Reader<'_>, n: usize, first: i64, out: &mut Vec<i64>) -> DecodeResult<()> {
    out.clear();
    let (g, w, n_exc, packed) = time_header(r, n)?;
    crate::codec::with_time_lows(|lows| {
        bitunpack(packed, w, n - 1, lows)?;
        out.reserve(n);
        out.push(first);
        let mut t = first;
        let mut i = 0;
        for _ in 0..n_exc {
            let (at, high) = exception(r, i, n, w)?;
            t = sum_run(t, &lows[i..at], g, out)?;
            let d = (u64::from(lows[at]) | high << w).checked_mul(g);
            t = match d.and_then(|d| t.checked_add_unsigned(d)) {
                Some(v) => v,
                None => corrupt!("time delta at event {} overflows", at + 1),
            };
            out.push(t);
            i = at + 1;
        }
        sum_run(t, &lows[i..], g, out)?;
        Ok(())
    })
}

/// Add the deltas `q * g` of a run to `t`, pushing each time; fails on overflow.
#[inline]
fn sum_run(mut t: i64, q: &[u32], g: u64, out: &mut Vec<i64>) -> DecodeResult<i64> {
    if g == 1 {
        // Each delta is below 2^32 and a run below 2^20 long, so the sum wraps at most once,
        // which shows as going backwards.
        let before = t;
        out.extend(q.iter().map(|&d| {
            t = t.wrapping_add(i64::from(d));
            t
        }));
        if t < before {
            corrupt!("time deltas overflow");
        }
        return Ok(t);
    }
    for &d in q {
        t = match (u64::from(d))
            .checked_mul(g)
            .and_then(|d| t.checked_add_unsigned(d))
        {
            Some(v) => v,
            None => corrupt!("time delta overflows"),
        };
        out.push(t);
    }
    Ok(t)
}

const SMALL_CONSTANT: u8 = 0;
const SMALL_PACKED: u8 = 1;
const SMALL_SPARSE: u8 = 2;

/// Encode small values (action or domain codes) in the smallest of the three modes.
fn encode_small(values: &[u32], out: &mut Vec<u8>) {
    let mut counts: std::collections::HashMap<u32, usize> = Default::default();
    for &v in values {
        *counts.entry(v).or_default() += 1;
    }
    let (default, same) = counts
        .iter()
        .max_by_key(|&(v, c)| (*c, std::cmp::Reverse(*v)))
        .map_or((0, 0), |(&v, &c)| (v, c));
    if same == values.len() {
        out.push(SMALL_CONSTANT);
        put_varint(out, u64::from(default));
        return;
    }
    let w = bits_for(u64::from(values.iter().copied().max().unwrap_or(0)));
    let n = values.len();
    let others = n - same;
    let sparse_bits = ef::size_bits(others as u64, n as u64) as usize;
    let sparse = sparse_bits.div_ceil(8) + bitpacked_len(others, w) + 2 * varint_len(n as u64);
    if sparse < bitpacked_len(n, w) {
        out.push(SMALL_SPARSE);
        put_varint(out, u64::from(default));
        out.push(w);
        put_varint(out, others as u64);
        let positions: Vec<u32> = (0..n as u32)
            .filter(|&p| values[p as usize] != default)
            .collect();
        let mut bits = BitWriter::default();
        ef::encode(&positions, n as u64, &mut bits);
        out.extend_from_slice(&bits.into_bytes());
        let exc: Vec<u32> = positions.iter().map(|&p| values[p as usize]).collect();
        bitpack(&exc, w, out);
    } else {
        out.push(SMALL_PACKED);
        out.push(w);
        bitpack(values, w, out);
    }
}

fn decode_small(r: &mut Reader<'_>, n: usize, max: u32, out: &mut Vec<u32>) -> DecodeResult<()> {
    let value = |v: u64| -> DecodeResult<u32> {
        match u32::try_from(v) {
            Ok(v) if v <= max => Ok(v),
            _ => corrupt!("value {v} above {max}"),
        }
    };
    match r.u8()? {
        SMALL_CONSTANT => {
            let v = value(r.varint()?)?;
            out.clear();
            out.resize(n, v);
        }
        SMALL_PACKED => {
            let w = r.u8()?;
            if w > 16 {
                corrupt!("width {w}");
            }
            bitunpack(r.bytes(bitpacked_len(n, w))?, w, n, out)?;
            if let Some(&bad) = out.iter().find(|&&v| v > max) {
                corrupt!("value {bad} above {max}");
            }
        }
        SMALL_SPARSE => {
            let default = value(r.varint()?)?;
            let w = r.u8()?;
            let others = r.varint()? as usize;
            if w > 16 || others == 0 || others >= n {
                corrupt!("{others} exceptions of width {w} among {n}");
            }
            let bits = ef::size_bits(others as u64, n as u64) as usize;
            let raw = r.bytes(bits.div_ceil(8))?;
            let positions = EfList::new(raw, 0, others, n as u64)?;
            let exc = r.bytes(bitpacked_len(others, w))?;
            out.clear();
            out.resize(n, default);
            let mut seen = 0;
            let mut prev = None;
            for (i, p) in positions.iter().enumerate() {
                let v = crate::codec::bit_get(exc, w, i);
                if prev.is_some_and(|q| q >= p) || p as usize >= n || v == default || v > max {
                    corrupt!("exception {i} ({v} at {p}) out of order, range or kind");
                }
                out[p as usize] = v;
                prev = Some(p);
                seen += 1;
            }
            if seen != others {
                corrupt!("{seen} of {others} exceptions listed");
            }
        }
        m => corrupt!("unknown column mode {m}"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round_trip(ts: &[i64], action: &[u32], domain: &[u32]) -> Vec<u8> {
        let mut raw = Vec::new();
        encode_block(ts, action, domain, &mut raw);
        let mut b = Block::default();
        decode_block(&raw, ts.len(), ts[0], &mut b).unwrap();
        assert_eq!(b.ts, ts);
        assert_eq!(
            b.action.iter().map(|&v| u32::from(v)).collect::<Vec<_>>(),
            action
        );
        assert_eq!(
            b.domain.iter().map(|&v| u32::from(v)).collect::<Vec<_>>(),
            domain
        );
        let lens = part_lens(&raw, ts.len(), ts[0]).unwrap();
        assert_eq!(lens.iter().sum::<usize>(), raw.len());
        for o in (0..ts.len())
            .step_by(ts.len() / 7 + 1)
            .chain([ts.len() - 1])
        {
            let s = stamp_at(&raw, ts.len(), ts[0], o).unwrap();
            assert_eq!(
                (s.ts, u32::from(s.action), u32::from(s.domain)),
                (ts[o], action[o], domain[o])
            );
        }
        raw
    }

    fn block() -> impl Strategy<Value = (Vec<i64>, Vec<u32>, Vec<u32>)> {
        (1usize..1200, any::<i64>(), 0u8..4, any::<u64>()).prop_map(|(n, start, kind, seed)| {
            let mut x = seed | 1;
            let mut next = move || {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x
            };
            let start = start / 4;
            let mut t = start;
            let ts: Vec<i64> = (0..n)
                .map(|_| {
                    let r = next();
                    t = t.saturating_add(match kind {
                        0 => (r % 180_000) as i64,
                        1 => (r % 100) as i64 * 1000,
                        2 => {
                            if r % 50 == 0 {
                                (r % (1 << 40)) as i64
                            } else {
                                (r % 3) as i64
                            }
                        }
                        _ => 0,
                    });
                    t
                })
                .collect();
            let action: Vec<u32> = (0..n)
                .map(|_| {
                    if next() % 10 == 0 {
                        (next() % 256) as u32
                    } else {
                        0
                    }
                })
                .collect();
            let domain: Vec<u32> = (0..n)
                .map(|_| match kind {
                    3 => 7,
                    _ => (next() % 65_536) as u32,
                })
                .collect();
            (ts, action, domain)
        })
    }

    proptest! {
        #[test]
        fn blocks_round_trip((ts, action, domain) in block()) {
            round_trip(&ts, &action, &domain);
        }

        #[test]
        fn decoders_never_panic(raw in proptest::collection::vec(any::<u8>(), 0..200), n in 0usize..300, first in any::<i64>()) {
            let mut b = Block::default();
            let _ = decode_block(&raw, n, first, &mut b);
            let _ = part_lens(&raw, n, first);
            let _ = stamp_at(&raw, n, first, n / 2);
        }
    }

    #[test]
    fn seconds_constants_and_sparse_values_are_small() {
        let ts: Vec<i64> = (0..1024).map(|i| 1_600_000_000_000 + i * 7_000).collect();
        let raw = round_trip(&ts, &vec![3; 1024], &vec![0; 1024]);
        // Deltas of 7 s divided by their divisor are all 1: width 1 then 0 exceptions, so about
        // 128 bytes of deltas, and a few bytes for the two constant columns.
        assert!(raw.len() < 140, "{}", raw.len());
        let action: Vec<u32> = (0..1024).map(|i| u32::from(i % 10 == 0)).collect();
        let mut sparse = Vec::new();
        encode_small(&action, &mut sparse);
        assert_eq!(sparse[0], SMALL_SPARSE);
        assert!(sparse.len() < 128, "{}", sparse.len());
    }

    #[test]
    fn time_overflow_is_refused() {
        let mut raw = Vec::new();
        encode_time(&[i64::MAX - 10, i64::MAX], &mut raw);
        let mut out = Vec::new();
        decode_time(&mut Reader::new(&raw), 2, i64::MAX - 10, &mut out).unwrap();
        assert!(decode_time(&mut Reader::new(&raw), 2, i64::MAX - 5, &mut out).is_err());
    }
}
