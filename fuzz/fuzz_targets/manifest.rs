//! The manifest (live segment files, next segment id, compacted sequence). Whatever decodes must
//! encode back to a record that decodes to the same manifest.
#![no_main]

use libfuzzer_sys::fuzz_target;
use siren_engine::format::{decode_manifest, encode_manifest};

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = decode_manifest(data) {
        let again = encode_manifest(&m);
        assert_eq!(decode_manifest(&again).expect("re-encoded manifest decodes"), m);
    }
});
