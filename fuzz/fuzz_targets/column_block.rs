//! Format version 2's column block (time with its divisor and exceptions; constant, packed or
//! sparse action and domain) from arbitrary bytes: decoding returns an error or events, never a
//! panic. A block that decodes is encoded again and must decode to the same columns.
#![no_main]

use libfuzzer_sys::fuzz_target;
use siren_engine::format::{decode_block, encode_block, Block};

fuzz_target!(|data: &[u8]| {
    if data.len() < 10 {
        return;
    }
    // [n u16][first ts i64][block ...]
    let n = usize::from(u16::from_le_bytes([data[0], data[1]])) % 4097;
    let first = i64::from_le_bytes(data[2..10].try_into().expect("8 bytes"));
    let mut b = Block::default();
    if decode_block(&data[10..], n, first, &mut b).is_ok() {
        let action: Vec<u32> = b.action.iter().map(|&v| u32::from(v)).collect();
        let domain: Vec<u32> = b.domain.iter().map(|&v| u32::from(v)).collect();
        let mut again = Vec::new();
        encode_block(&b.ts, &action, &domain, &mut again);
        let mut back = Block::default();
        decode_block(&again, n, first, &mut back).expect("re-encoded block decodes");
        assert_eq!(back, b);
    }
});
