//! Every stored fuzz input of the engine's decoders (`fuzz/corpus/<target>/*`), run through the
//! fuzz targets' own code (`fuzz/fuzz_targets/*.rs`) as an ordinary test: see
//! `fuzz/replay/mod.rs`.

extern crate self as libfuzzer_sys;

#[path = "../../fuzz/replay/mod.rs"]
mod replay;

macro_rules! targets {
    ($($name:ident = $file:literal),* $(,)?) => {
        $(
            #[allow(unused_attributes)]
            #[path = $file]
            mod $name;
        )*
        const TARGETS: &[replay::Target] = &[$((stringify!($name), $name::run)),*];
    };
}

targets!(
    catalog_record = "../../fuzz/fuzz_targets/catalog_record.rs",
    column_block = "../../fuzz/fuzz_targets/column_block.rs",
    column_chunk = "../../fuzz/fuzz_targets/column_chunk.rs",
    manifest = "../../fuzz/fuzz_targets/manifest.rs",
    pending_record = "../../fuzz/fuzz_targets/pending_record.rs",
    position_lists = "../../fuzz/fuzz_targets/position_lists.rs",
    prefix_index = "../../fuzz/fuzz_targets/prefix_index.rs",
    segment_file = "../../fuzz/fuzz_targets/segment_file.rs",
    user_entry = "../../fuzz/fuzz_targets/user_entry.rs",
);

#[test]
fn every_engine_corpus_input_passes_its_fuzz_target() {
    replay::check_every_corpus_is_replayed();
    let (_, mine) = replay::REPLAYED
        .iter()
        .find(|(krate, _)| *krate == "siren-engine")
        .expect("the engine's targets");
    assert_eq!(
        TARGETS.iter().map(|t| t.0).collect::<Vec<_>>(),
        mine.to_vec(),
        "the targets replayed here and REPLAYED disagree"
    );
    for (name, run) in TARGETS {
        let n = replay::replay(name, *run);
        eprintln!("{name}: {n} inputs");
    }
}
