//! A partition checkpoint as shipped between nodes: header, zstd chunks of users and events,
//! last frame with counts. Every frame is decoded and checked; nothing may panic or allocate
//! without bound.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = siren_cluster::checkpoint::check_checkpoint_bytes(data);
});
