//! Catalog records (an item: category, SemID, int8 embedding), user locations, the config record,
//! source positions, and the generation, write-count and WATERMARK records. Each that decodes must encode back to an equal value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use siren_engine::format::{
    decode_config, decode_generation, decode_item, decode_location, decode_source,
    decode_watermark, decode_writes, encode_config, encode_generation, encode_item,
    encode_location, encode_source, encode_watermark, encode_writes, parse_u64_key,
};

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else { return };
    match which % 8 {
        5 => {
            if let Ok(w) = decode_watermark(bytes) {
                assert_eq!(decode_watermark(&encode_watermark(&w)).expect("round trip"), w);
            }
        }
        6 => {
            if let Ok(g) = decode_generation(bytes) {
                assert_eq!(decode_generation(&encode_generation(g)).expect("round trip"), g);
            }
        }
        7 => {
            if let Ok(n) = decode_writes(bytes) {
                assert_eq!(decode_writes(&encode_writes(n)).expect("round trip"), n);
            }
        }
        0 => {
            if let Ok(it) = decode_item(bytes) {
                assert_eq!(decode_item(&encode_item(&it)).expect("round trip"), it);
            }
        }
        1 => {
            if let Ok(l) = decode_location(bytes) {
                assert_eq!(decode_location(&encode_location(&l)).expect("round trip"), l);
            }
        }
        2 => {
            if let Ok(c) = decode_config(bytes) {
                assert_eq!(decode_config(&encode_config(&c)).expect("round trip"), c);
            }
        }
        3 => {
            if let Ok(s) = decode_source(bytes) {
                assert_eq!(decode_source(&encode_source(s)).expect("round trip"), s);
            }
        }
        _ => {
            if let Ok(id) = parse_u64_key(bytes, "item") {
                assert_eq!(bytes, id.to_be_bytes());
            }
        }
    }
});
