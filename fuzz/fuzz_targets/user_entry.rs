//! A user entry (header, block index, dictionary, column chunks, prefix index) from arbitrary
//! bytes: parsing and full validation must return an error or succeed, never panic, loop or
//! allocate without bound.
#![no_main]

use libfuzzer_sys::fuzz_target;
use siren_engine::format::{Block, Cols, EntryView, IndexCache};

fuzz_target!(|data: &[u8]| {
    let Ok(view) = EntryView::parse(data) else { return };
    let _ = view.validate();
    let mut block = Block::default();
    let mut scratch = Vec::new();
    for b in 0..view.n_blocks().min(64) {
        let _ = view.decode_block(b, Cols::ALL, &mut block, &mut scratch);
    }
    if let Ok(index) = view.index() {
        let mut cache = IndexCache::default();
        for key in [0u64, 1 << 56, u64::MAX] {
            let _ = index.find(key, &mut cache);
        }
    }
});
