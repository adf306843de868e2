//! A write-path record (one user's events from one append) and its key. Whatever decodes must
//! encode back to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use siren_engine::format::{decode_pending, encode_pending, parse_pending_key};

fuzz_target!(|data: &[u8]| {
    if let Ok(evs) = decode_pending(data) {
        let again = encode_pending(&evs);
        assert_eq!(decode_pending(&again).expect("re-encoded record decodes"), evs);
    }
    if let Ok((user, seq)) = parse_pending_key(data) {
        assert_eq!(data.len(), 16);
        assert_eq!(data[..8], user.to_be_bytes());
        assert_eq!(data[8..], seq.to_be_bytes());
    }
});
