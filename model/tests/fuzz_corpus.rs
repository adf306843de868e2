//! Every stored fuzz input of the model crate's decoders (`fuzz/corpus/<target>/*`), run through
//! the fuzz targets' own code (`fuzz/fuzz_targets/*.rs`) as an ordinary test: see
//! `fuzz/replay/mod.rs`.

extern crate self as libfuzzer_sys;

#[path = "../../fuzz/replay/mod.rs"]
mod replay;

#[allow(unused_attributes)]
#[path = "../../fuzz/fuzz_targets/codebook.rs"]
mod codebook;
#[allow(unused_attributes)]
#[path = "../../fuzz/fuzz_targets/dataset_tables.rs"]
mod dataset_tables;
#[allow(unused_attributes)]
#[path = "../../fuzz/fuzz_targets/model_config.rs"]
mod model_config;

#[test]
fn every_model_corpus_input_passes_its_fuzz_target() {
    let targets: [replay::Target; 3] = [
        ("codebook", codebook::run),
        ("dataset_tables", dataset_tables::run),
        ("model_config", model_config::run),
    ];
    let (_, mine) = replay::REPLAYED
        .iter()
        .find(|(krate, _)| *krate == "siren-model")
        .expect("the model crate's targets");
    assert_eq!(targets.map(|t| t.0).to_vec(), mine.to_vec());
    for (name, run) in targets {
        let n = replay::replay(name, run);
        eprintln!("{name}: {n} inputs");
    }
}
