//! A SemID codebook file (RQ-KMeans centroids). One that decodes must encode to the same bytes
//! and assign any vector of its dimension without panicking.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use siren_model::semid::Codebook;

fuzz_target!(|data: &[u8]| {
    let Ok(cb) = Codebook::decode(data, Path::new("fuzz.codebook")) else {
        return;
    };
    let again = cb.encode();
    let back = Codebook::decode(&again, Path::new("again")).expect("re-encoded codebook decodes");
    assert_eq!(back.encode(), again);
    let x: Vec<f32> = (0..cb.dim()).map(|i| (i as f32).sin()).collect();
    let s = cb.assign(&x);
    assert_eq!(s.levels(), cb.levels());
    assert!(s.codes().iter().all(|&c| usize::from(c) < cb.size()));
});
