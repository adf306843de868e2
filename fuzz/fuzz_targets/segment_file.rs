//! A whole segment file (header, entries, directory, footer) of either format version: open it
//! as the engine does (from a file, memory-mapped), then verify it and read every entry. Errors
//! only, never a panic.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use siren_engine::format::{v1, Block, Entry, Segment};

fn dir() -> &'static tempfile::TempDir {
    static D: OnceLock<tempfile::TempDir> = OnceLock::new();
    D.get_or_init(|| tempfile::tempdir().expect("temp dir"))
}

fuzz_target!(|data: &[u8]| {
    let _ = Segment::parse_frame(data, 1);
    let path = dir().path().join("0000000000000001.seg");
    std::fs::write(&path, data).expect("write the input");
    let Ok(seg) = Segment::open(&path, 1) else { return };
    let _ = seg.verify();
    for i in 0..seg.len().min(16) {
        let rec = seg.record(i);
        assert_eq!(seg.find(rec.user), Some(i));
        let _ = seg.sizes(i);
        match seg.entry(i) {
            Ok(Entry::V2(view)) => {
                let mut block = Block::default();
                for b in 0..view.n_blocks().min(8) {
                    let _ = view.decode_block(b, &mut block);
                }
                let _ = view.codes();
            }
            Ok(Entry::V1(view)) => {
                let mut block = v1::Block::default();
                let mut scratch = Vec::new();
                for b in 0..view.n_blocks().min(8) {
                    let _ = view.decode_block(b, v1::Cols::ALL, &mut block, &mut scratch);
                }
            }
            Err(_) => {}
        }
    }
});
