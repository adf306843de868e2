//! Column encodings of one block of a user's sequence, before chunking (zstd + CRC).
//!
//! - time: the first timestamp as i64 LE, then LEB128 deltas (the column is sorted, so deltas are
//!   non-negative and usually small).
//! - item: indexes into the user's item dictionary, bit-packed at `width` bits (one leading byte).
//! - action: one byte per event.
//! - domain: u16 LE per event.
//!
//! The per-user item dictionary lists the user's distinct item ids in ascending order (LEB128
//! deltas) followed by each item's internal catalog number (LEB128).

use crate::codec::{bitpack, bitpacked_len, bits_for, bitunpack, put_varint, Reader};
use crate::error::{corrupt, DecodeResult};

pub fn encode_time(ts: &[i64], out: &mut Vec<u8>) {
    let Some(&first) = ts.first() else { return };
    out.extend_from_slice(&first.to_le_bytes());
    let mut prev = first;
    for &t in &ts[1..] {
        debug_assert!(t >= prev, "time column must be sorted");
        put_varint(out, t.wrapping_sub(prev) as u64);
        prev = t;
    }
}

/// Decode `n` sorted timestamps.
pub fn decode_time(raw: &[u8], n: usize, out: &mut Vec<i64>) -> DecodeResult<()> {
    out.clear();
    if n == 0 {
        if !raw.is_empty() {
            corrupt!("time column of 0 events has {} bytes", raw.len());
        }
        return Ok(());
    }
    // Each delta takes at least one byte: reject counts the bytes cannot hold before reserving.
    if raw.len() < 8 + (n - 1) {
        corrupt!("time column of {} bytes cannot hold {n} events", raw.len());
    }
    out.reserve(n);
    let mut r = Reader::new(raw);
    let mut t = r.i64()?;
    out.push(t);
    for i in 1..n {
        let d = r.varint()?;
        t = match t.checked_add_unsigned(d) {
            Some(v) => v,
            None => corrupt!("time delta {d} at event {i} overflows"),
        };
        out.push(t);
    }
    r.finish()
}

/// Bit width used for dictionary indexes of a dictionary with `n_dict` entries.
pub fn item_width(n_dict: usize) -> u8 {
    bits_for(n_dict.saturating_sub(1) as u64)
}

pub fn encode_items(idx: &[u32], n_dict: usize, out: &mut Vec<u8>) {
    let width = item_width(n_dict);
    out.push(width);
    bitpack(idx, width, out);
}

/// Decode `n` dictionary indexes, each checked to be below `n_dict`.
pub fn decode_items(raw: &[u8], n: usize, n_dict: usize, out: &mut Vec<u32>) -> DecodeResult<()> {
    out.clear();
    let mut r = Reader::new(raw);
    let width = r.u8()?;
    if width != item_width(n_dict) {
        corrupt!(
            "item column width {width}, dictionary of {n_dict} needs {}",
            item_width(n_dict)
        );
    }
    let packed = r.bytes(bitpacked_len(n, width).min(r.remaining()))?;
    bitunpack(packed, width, n, out)?;
    r.finish()?;
    if let Some(bad) = out.iter().find(|&&i| i as usize >= n_dict) {
        corrupt!("item index {bad} outside dictionary of {n_dict}");
    }
    Ok(())
}

pub fn encode_actions(actions: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(actions);
}

pub fn decode_actions(raw: &[u8], n: usize, out: &mut Vec<u8>) -> DecodeResult<()> {
    if raw.len() != n {
        corrupt!("action column has {} bytes for {n} events", raw.len());
    }
    out.clear();
    out.extend_from_slice(raw);
    Ok(())
}

pub fn encode_domains(domains: &[u16], out: &mut Vec<u8>) {
    for d in domains {
        out.extend_from_slice(&d.to_le_bytes());
    }
}

pub fn decode_domains(raw: &[u8], n: usize, out: &mut Vec<u16>) -> DecodeResult<()> {
    if raw.len() != 2 * n {
        corrupt!("domain column has {} bytes for {n} events", raw.len());
    }
    out.clear();
    out.extend(
        raw.chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]])),
    );
    Ok(())
}

/// Encode a dictionary: `ids` strictly ascending, `internal[i]` the catalog row of `ids[i]`.
pub fn encode_dict(ids: &[u64], internal: &[u32], out: &mut Vec<u8>) {
    debug_assert_eq!(ids.len(), internal.len());
    let mut prev = 0u64;
    for (i, &id) in ids.iter().enumerate() {
        debug_assert!(i == 0 || id > prev);
        put_varint(out, if i == 0 { id } else { id - prev });
        prev = id;
    }
    for &n in internal {
        put_varint(out, u64::from(n));
    }
}

/// Decoded per-user item dictionary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dict {
    pub ids: Vec<u64>,
    pub internal: Vec<u32>,
}

impl Dict {
    pub fn len(&self) -> usize {
        self.ids.len()
    }
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

pub fn decode_dict(raw: &[u8], n: usize) -> DecodeResult<Dict> {
    // Two varints of at least one byte per entry.
    if raw.len() < 2 * n {
        corrupt!("dictionary of {} bytes cannot hold {n} entries", raw.len());
    }
    let mut r = Reader::new(raw);
    let mut ids = Vec::with_capacity(n);
    let mut prev = 0u64;
    for i in 0..n {
        let d = r.varint()?;
        let id = if i == 0 {
            d
        } else {
            if d == 0 {
                corrupt!("dictionary ids not strictly ascending at entry {i}");
            }
            match prev.checked_add(d) {
                Some(v) => v,
                None => corrupt!("dictionary id overflows at entry {i}"),
            }
        };
        ids.push(id);
        prev = id;
    }
    let mut internal = Vec::with_capacity(n);
    for i in 0..n {
        let v = r.varint()?;
        if v > u64::from(u32::MAX) {
            corrupt!("internal item number {v} at entry {i} exceeds u32");
        }
        internal.push(v as u32);
    }
    r.finish()?;
    Ok(Dict { ids, internal })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sorted_ts() -> impl Strategy<Value = Vec<i64>> {
        prop_oneof![
            // Realistic millisecond gaps, including equal timestamps.
            (any::<i32>(), proptest::collection::vec(prop_oneof![Just(0u32), 0u32..100_000], 0..1500)).prop_map(|(s, gaps)| {
                let mut t = i64::from(s) * 1000;
                gaps.into_iter().map(|g| { t += i64::from(g); t }).collect()
            }),
            // Extremes: the whole i64 range, sorted.
            proptest::collection::vec(any::<i64>(), 0..300).prop_map(|mut v| { v.sort(); v }),
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
        fn items_round_trip(n_dict in 1usize..100_000, seed in any::<u64>(), n in 0usize..3000) {
            let mut x = seed | 1;
            let idx: Vec<u32> = (0..n).map(|_| { x ^= x << 13; x ^= x >> 7; x ^= x << 17; (x % n_dict as u64) as u32 }).collect();
            let mut raw = Vec::new();
            encode_items(&idx, n_dict, &mut raw);
            let mut out = Vec::new();
            decode_items(&raw, n, n_dict, &mut out).unwrap();
            prop_assert_eq!(out, idx);
        }

        #[test]
        fn actions_domains_round_trip(a in proptest::collection::vec(any::<u8>(), 0..2000), d in proptest::collection::vec(any::<u16>(), 0..2000)) {
            let mut raw = Vec::new();
            encode_actions(&a, &mut raw);
            let mut out = Vec::new();
            decode_actions(&raw, a.len(), &mut out).unwrap();
            prop_assert_eq!(out, a);
            let mut raw = Vec::new();
            encode_domains(&d, &mut raw);
            let mut out = Vec::new();
            decode_domains(&raw, d.len(), &mut out).unwrap();
            prop_assert_eq!(out, d);
        }

        #[test]
        fn dict_round_trip(ids in proptest::collection::btree_set(any::<u64>(), 0..2000), seed in any::<u32>()) {
            let ids: Vec<u64> = ids.into_iter().collect();
            let internal: Vec<u32> = ids.iter().enumerate().map(|(i, _)| seed.wrapping_mul(i as u32 + 1)).collect();
            let mut raw = Vec::new();
            encode_dict(&ids, &internal, &mut raw);
            let d = decode_dict(&raw, ids.len()).unwrap();
            prop_assert_eq!(d.ids, ids);
            prop_assert_eq!(d.internal, internal);
        }

        #[test]
        fn decoders_never_panic(raw in proptest::collection::vec(any::<u8>(), 0..200), n in 0usize..100, n_dict in 0usize..50) {
            let mut t = Vec::new();
            let _ = decode_time(&raw, n, &mut t);
            let mut i = Vec::new();
            let _ = decode_items(&raw, n, n_dict, &mut i);
            let _ = decode_dict(&raw, n);
            let mut d = Vec::new();
            let _ = decode_domains(&raw, n, &mut d);
        }
    }

    #[test]
    fn time_rejects_overflow() {
        let mut raw = i64::MAX.to_le_bytes().to_vec();
        put_varint(&mut raw, 1);
        let mut out = Vec::new();
        assert!(decode_time(&raw, 2, &mut out).is_err());
    }

    #[test]
    fn items_reject_index_outside_dictionary() {
        let mut raw = Vec::new();
        encode_items(&[0, 3], 4, &mut raw);
        let mut out = Vec::new();
        assert!(decode_items(&raw, 2, 3, &mut out).is_err());
    }
}
