//! Format version 2's position lists: one Elias–Fano list read from arbitrary bits (iteration,
//! rank, the values below a bound, validation), and an inverted entry's positions section (count
//! table, packed counts, lists) from arbitrary bytes. A list that validates must encode back to
//! the same values, and its ranks must agree with the values. A list encoded from arbitrary
//! values (the model: a sorted set) must give them back through every reader.
#![no_main]

use libfuzzer_sys::fuzz_target;
use siren_engine::format::{encode_ef, BitWriter, EfList, Lists};

/// The sorted set of u16 values in `data`, encoded, read back by iteration, rank, `below`,
/// `last` and validation.
fn against_model(data: &[u8]) {
    let mut values: Vec<u32> = data
        .chunks_exact(2)
        .map(|b| u32::from(u16::from_le_bytes([b[0], b[1]])))
        .collect();
    values.sort_unstable();
    values.dedup();
    let u = u64::from(values.last().copied().unwrap_or(0)) + 1 + u64::from(data.first().copied().unwrap_or(0));
    let mut w = BitWriter::default();
    encode_ef(&values, u, &mut w);
    let bytes = w.into_bytes();
    let list = EfList::new(&bytes, 0, values.len(), u).expect("an encoded list");
    assert_eq!(list.iter().collect::<Vec<_>>(), values);
    assert_eq!(list.validate(u).expect("an encoded list validates"), values);
    assert_eq!(list.last(), values.last().copied());
    for x in [0, 1, u / 3, u / 2, u - 1, u] {
        let below: Vec<u32> = values.iter().copied().filter(|&v| u64::from(v) < x).collect();
        assert_eq!(list.rank(x), below.len());
        assert!(list.below(x).eq(below.into_iter().rev()));
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 6 {
        return;
    }
    if data[5] % 4 == 3 {
        // [5 bytes][a byte whose low two bits are 3][u16 values ...]
        against_model(&data[6..]);
        return;
    }
    // [c u16][u u16][offset u8][kind u8][bytes ...]
    let c = usize::from(u16::from_le_bytes([data[0], data[1]]));
    let u = u64::from(u16::from_le_bytes([data[2], data[3]])) + 1;
    let offset = usize::from(data[4] % 64);
    let kind = data[5];
    let bytes = &data[6..];
    if kind.is_multiple_of(2) {
        let Ok(list) = EfList::new(bytes, offset, c, u) else { return };
        let _ = list.last();
        for x in [0, 1, u / 2, u, u64::MAX] {
            let r = list.rank(x);
            assert!(r <= c);
            let _ = list.below(x).take(64).count();
        }
        if let Ok(values) = list.validate(u) {
            let mut w = BitWriter::default();
            encode_ef(&values, u, &mut w);
            let again = w.into_bytes();
            let back = EfList::new(&again, 0, values.len(), u).expect("re-encoded list");
            assert_eq!(back.iter().collect::<Vec<_>>(), values);
            for x in [0, 1, u / 3, u / 2, u] {
                let want = values.iter().filter(|&&v| u64::from(v) < x).count();
                assert_eq!(list.rank(x), want);
            }
        }
    } else {
        let n_dict = c % 512 + 1;
        let n_events = (u as u32).max(n_dict as u32);
        let Ok(lists) = Lists::parse(bytes, n_dict, n_events) else { return };
        for e in 0..n_dict.min(64) {
            let _ = lists.count(e);
            if let Ok(l) = lists.list(e) {
                let _ = l.rank(u64::from(n_events) / 2);
            }
        }
        let _ = lists.decode_all();
        let _ = lists.validate();
    }
});
