//! A user entry from arbitrary bytes, as format version 2 (header, page checksums, block index,
//! dictionary, item codes or position lists, column blocks) and as version 1 (read for
//! compatibility): parsing, full validation and every accessor must return an error or succeed,
//! never panic, loop or allocate without bound. A version-2 entry that validates is decoded,
//! encoded again and decoded again: the events must come back the same (the encoder is the
//! reference model).
#![no_main]

use libfuzzer_sys::fuzz_target;
use siren_engine::format::{build_entry, v1, Block, EntryParams, EntryView, Ev, PrefixLayout};

/// Every event of a valid entry, items as catalog rows.
fn events(view: &EntryView<'_>) -> Vec<Ev> {
    let rows = view.dict_rows().expect("valid");
    let codes = view.codes().expect("valid");
    let mut out = Vec::new();
    let mut b = Block::default();
    for i in 0..view.n_blocks() {
        view.decode_block(i, &mut b).expect("valid");
        for j in 0..b.ts.len() {
            out.push(Ev {
                ts: b.ts[j],
                item: u64::from(rows[codes[i * view.block_events() + j] as usize]),
                action: b.action[j],
                domain: b.domain[j],
            });
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    if let Ok(view) = EntryView::parse(data) {
        let mut block = Block::default();
        for b in 0..view.n_blocks().min(64) {
            let _ = view.decode_block(b, &mut block);
        }
        let _ = view.first_block_reaching(0);
        let _ = view.dict_rows();
        let _ = view.codes();
        if let Ok(lists) = view.lists() {
            for e in 0..lists.len().min(64) {
                if let Ok(l) = lists.list(e) {
                    let _ = l.rank(1_000);
                    let _ = l.below(u64::MAX).take(16).count();
                }
            }
            let _ = lists.decode_all();
        }
        if view.validate().is_ok() && view.n_events() <= 20_000 {
            let evs = events(&view);
            let h = view.header;
            let params = EntryParams {
                block_events: h.block_events,
                zstd_level: 0,
                layout: PrefixLayout {
                    levels: h.levels.max(1),
                    code_bits: 8,
                },
                semid_gen: h.semid_gen,
            };
            let (again, _) = build_entry(h.user, &evs, &params, |id| (id as u32, None));
            let back = EntryView::parse(&again).expect("re-encoded entry parses");
            back.validate().expect("re-encoded entry validates");
            assert_eq!(events(&back), evs);
        }
    }
    if let Ok(view) = v1::EntryView::parse(data) {
        let _ = view.validate();
        let mut block = v1::Block::default();
        let mut scratch = Vec::new();
        for b in 0..view.n_blocks().min(64) {
            let _ = view.decode_block(b, v1::Cols::ALL, &mut block, &mut scratch);
        }
        if let Ok(index) = view.index() {
            let mut cache = siren_engine::format::IndexCache::default();
            for key in [0u64, 1 << 56, u64::MAX] {
                let _ = index.find(key, &mut cache);
            }
        }
    }
});
