//! Prefix-index bitmaps and the index directory: one roaring bitmap as stored, and a whole index
//! (sparse directory + chunks) queried for keys. A bitmap that decodes must serialise back to the
//! same bytes (its reference model is the roaring format itself).
#![no_main]

use libfuzzer_sys::fuzz_target;
use siren_engine::format::{decode_bitmap, IndexCache, PrefixIndex};

fuzz_target!(|data: &[u8]| {
    if let Ok(bm) = decode_bitmap(data) {
        let mut again = Vec::new();
        bm.serialize_into(&mut again).expect("serialise into a Vec");
        let back = decode_bitmap(&again).expect("re-serialised bitmap decodes");
        assert_eq!(back, bm);
    }
    if data.len() < 2 {
        return;
    }
    // [n_chunks u8][sparse: 12 * n bytes][chunks ...]
    let n = u32::from(data[0] % 16);
    let sparse_len = (n as usize * 12).min(data.len() - 1);
    let (sparse, chunks) = data[1..].split_at(sparse_len);
    let Ok(index) = PrefixIndex::new(sparse, n, chunks) else { return };
    let _ = index.validate(100_000);
    let mut cache = IndexCache::default();
    for c in 0..index.n_chunks() {
        let _ = index.chunk(c);
    }
    for key in [0u64, 1, 1 << 48, (1 << 56) + 3, u64::MAX] {
        if let Ok(Some(bm)) = index.find(key, &mut cache) {
            let _ = bm.len();
        }
    }
});
