//! Replays the fuzz corpora (`fuzz/corpus/<target>/*`) through the fuzz targets' own code as
//! ordinary tests, so that every stored input keeps passing in `cargo test`, without libFuzzer.
//!
//! A crate's test includes the targets it can build with `#[path]` (each becomes a module with a
//! `run(&[u8])` function, through the `fuzz_target!` below standing in for libFuzzer's) and this
//! module, and declares `extern crate self as libfuzzer_sys;` so that the targets'
//! `use libfuzzer_sys::fuzz_target;` finds it.
#![allow(dead_code)]

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

/// libFuzzer's `fuzz_target!` for byte inputs, as a plain function `run`.
#[macro_export]
macro_rules! fuzz_target {
    (|$data:ident: &[u8]| $body:block) => {
        pub fn run($data: &[u8]) $body
    };
}

/// A fuzz target: its name and its `run`.
pub type Target = (&'static str, fn(&[u8]));

/// Targets whose corpora are replayed, by the crate that replays them.
pub const REPLAYED: [(&str, &[&str]); 4] = [
    (
        "siren-engine",
        &[
            "catalog_record",
            "column_block",
            "column_chunk",
            "manifest",
            "pending_record",
            "position_lists",
            "prefix_index",
            "segment_file",
            "user_entry",
        ],
    ),
    (
        "siren-model",
        &["codebook", "dataset_tables", "model_config"],
    ),
    ("siren-http", &["http_bodies"]),
    ("siren-cluster", &["cluster_checkpoint", "cluster_log"]),
];

pub fn corpus_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus")
}

/// Every corpus directory has a crate that replays it.
pub fn check_every_corpus_is_replayed() {
    for e in std::fs::read_dir(corpus_root())
        .expect("fuzz/corpus")
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        assert!(
            REPLAYED.iter().any(|(_, ts)| ts.contains(&name.as_str())),
            "fuzz/corpus/{name} is replayed by no test: add it to REPLAYED and a replay test"
        );
    }
}

/// Run every input of `target`'s corpus through `run`; a panic fails, naming the input.
/// Returns how many inputs ran.
pub fn replay(target: &str, run: fn(&[u8])) -> usize {
    let dir = corpus_root().join(target);
    let mut inputs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "{} has no inputs", dir.display());
    for input in &inputs {
        let bytes = std::fs::read(input).expect("read a corpus input");
        if catch_unwind(AssertUnwindSafe(|| run(&bytes))).is_err() {
            panic!("fuzz target {target} failed on {}", input.display());
        }
    }
    inputs.len()
}
