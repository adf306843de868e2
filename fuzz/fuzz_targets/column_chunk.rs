//! A column chunk (codec, lengths, checksum, raw or zstd payload) and the column decoders behind
//! it: delta-coded time, bit-packed item/action/domain, the item dictionary. Whatever decodes
//! must encode back to the same values (the encoders are the reference model).
#![no_main]

use libfuzzer_sys::fuzz_target;
use siren_engine::format::{
    decode_time, encode_dict, encode_packed, encode_time, read_chunk, DictView, Packed,
};

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let which = data[0] % 4;
    let n = usize::from(u16::from_le_bytes([data[1], data[2]])) % 4097;
    let width = data[3] % 33;
    let bytes = &data[4..];
    // Either a chunk or the raw column bytes themselves.
    let mut scratch = Vec::new();
    let raw: &[u8] = match read_chunk(bytes, 1 << 20, &mut scratch) {
        Ok(r) => r,
        Err(_) => bytes,
    };
    match which {
        0 => {
            let mut ts = Vec::new();
            if decode_time(raw, n, &mut ts).is_ok() {
                assert_eq!(ts.len(), n);
                let mut again = Vec::new();
                encode_time(&ts, &mut again);
                let mut back = Vec::new();
                decode_time(&again, n, &mut back).expect("re-encoded times decode");
                assert_eq!(back, ts);
            }
        }
        1 => {
            if let Ok(p) = Packed::parse(raw, n, width) {
                let vals: Vec<u32> = (0..n).map(|i| p.get(i)).collect();
                let mut again = Vec::new();
                encode_packed(&vals, &mut again);
                let q = Packed::parse(&again, n, 32).expect("re-encoded column parses");
                assert!((0..n).all(|i| q.get(i) == vals[i]));
            }
        }
        _ => {
            if let Some(d) = DictView::parse(raw, n).ok().filter(|d| d.validate().is_ok()) {
                let vals: Vec<u32> = (0..d.len()).map(|i| d.get(i)).collect();
                let mut again = Vec::new();
                encode_dict(&vals, &mut again);
                let e = DictView::parse(&again, vals.len()).expect("re-encoded dictionary parses");
                assert!((0..vals.len()).all(|i| e.get(i) == vals[i]));
            }
        }
    }
});
