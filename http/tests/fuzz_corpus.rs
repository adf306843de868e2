//! Every stored input of the HTTP fuzz target (`fuzz/corpus/http_bodies/*`: request bodies,
//! paths and query strings through the real handlers), run through the target's own code
//! (`fuzz/fuzz_targets/http_bodies.rs`) as an ordinary test: see `fuzz/replay/mod.rs`.

extern crate self as libfuzzer_sys;

#[path = "../../fuzz/replay/mod.rs"]
mod replay;

#[allow(unused_attributes)]
#[path = "../../fuzz/fuzz_targets/http_bodies.rs"]
mod http_bodies;

#[test]
fn every_http_corpus_input_passes_its_fuzz_target() {
    replay::check_every_corpus_is_replayed();
    let (_, mine) = replay::REPLAYED
        .iter()
        .find(|(krate, _)| *krate == "siren-http")
        .expect("the HTTP crate's targets");
    assert_eq!(mine.to_vec(), ["http_bodies"]);
    let n = replay::replay("http_bodies", http_bodies::run);
    eprintln!("http_bodies: {n} inputs");
}
