//! Every stored fuzz input of cluster mode's decoders (`fuzz/corpus/cluster_*/*`), run through
//! the fuzz targets' own code (`fuzz/fuzz_targets/cluster_*.rs`) as an ordinary test: see
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
    cluster_checkpoint = "../../fuzz/fuzz_targets/cluster_checkpoint.rs",
    cluster_log = "../../fuzz/fuzz_targets/cluster_log.rs",
);

#[test]
fn every_cluster_corpus_input_passes_its_fuzz_target() {
    replay::check_every_corpus_is_replayed();
    let (_, mine) = replay::REPLAYED
        .iter()
        .find(|(krate, _)| *krate == "siren-cluster")
        .expect("the cluster's targets");
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
