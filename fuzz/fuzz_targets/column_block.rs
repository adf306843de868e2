//! Format version 2's column block (time with its divisor and exceptions; constant, packed or
//! sparse action and domain). From arbitrary bytes read as a block, decoding returns an error or
//! events, never a panic; a block that decodes is encoded again and must decode to the same
//! columns, and the one-event decoder (`stamp_at`) must agree with the whole-block one. From
//! arbitrary bytes read as columns (the model), encoding then decoding must give them back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use siren_engine::format::{decode_block, encode_block, stamp_at, Block, Stamp};

/// `stamp_at` against the decoded block, at a few events.
fn check_stamps(raw: &[u8], first: i64, b: &Block) {
    let n = b.ts.len();
    for o in [0, n / 3, n / 2, n - 1] {
        let want = Stamp {
            ts: b.ts[o],
            domain: b.domain[o],
            action: b.action[o],
        };
        assert_eq!(stamp_at(raw, n, first, o).expect("event of a block"), want);
    }
    assert!(stamp_at(raw, n, first, n).is_err());
}

/// Columns built from `data`: time deltas (u16, times a divisor from the first byte), action
/// and domain values from the bytes, as many events as the bytes give.
fn model(data: &[u8]) -> (Vec<i64>, Vec<u32>, Vec<u32>) {
    let divisor = i64::from(data[0]) + 1;
    let mut t = i64::from(data[1]) * 1_000_000;
    let (mut ts, mut action, mut domain) = (Vec::new(), Vec::new(), Vec::new());
    for ev in data[2..].chunks_exact(4).take(4096) {
        t += i64::from(u16::from_le_bytes([ev[0], ev[1]])) * divisor;
        ts.push(t);
        // Mostly defaults, so that the sparse and constant modes are reached too.
        action.push(u32::from(ev[2].is_multiple_of(4)) * u32::from(ev[2] >> 2));
        domain.push(u32::from(ev[3] > 200) * u32::from(ev[3]) * 200);
    }
    (ts, action, domain)
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 10 {
        return;
    }
    if data[0] & 1 == 1 {
        let (ts, action, domain) = model(&data[1..]);
        if ts.is_empty() {
            return;
        }
        let mut raw = Vec::new();
        encode_block(&ts, &action, &domain, &mut raw);
        let mut b = Block::default();
        decode_block(&raw, ts.len(), ts[0], &mut b).expect("an encoded block decodes");
        assert_eq!(b.ts, ts);
        assert!(b.action.iter().map(|&v| u32::from(v)).eq(action));
        assert!(b.domain.iter().map(|&v| u32::from(v)).eq(domain));
        check_stamps(&raw, ts[0], &b);
        return;
    }
    // [n u16][first ts i64][block ...]
    let n = usize::from(u16::from_le_bytes([data[0], data[1]])) % 4097;
    let first = i64::from_le_bytes(data[2..10].try_into().expect("8 bytes"));
    let mut b = Block::default();
    if decode_block(&data[10..], n, first, &mut b).is_ok() {
        check_stamps(&data[10..], first, &b);
        let action: Vec<u32> = b.action.iter().map(|&v| u32::from(v)).collect();
        let domain: Vec<u32> = b.domain.iter().map(|&v| u32::from(v)).collect();
        let mut again = Vec::new();
        encode_block(&b.ts, &action, &domain, &mut again);
        let mut back = Block::default();
        decode_block(&again, n, first, &mut back).expect("re-encoded block decodes");
        assert_eq!(back, b);
    } else if n > 0 {
        let _ = stamp_at(&data[10..], n, first, n / 2);
    }
});
