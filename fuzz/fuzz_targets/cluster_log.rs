//! Cluster mode's log records (events, deletes, items) and metadata values (configuration,
//! assignments, heartbeats), as read from JetStream: each that decodes must encode back to an
//! equal value, and planning a record for a partition's applier must not panic.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use siren_cluster::apply::plan;
use siren_cluster::codec::{LogRecord, Kind};
use siren_cluster::log::{LogEntry, StreamId};
use siren_cluster::meta::{Assignment, NodeInfo};

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else { return };
    match which % 3 {
        0 => {
            if let Ok(r) = LogRecord::decode(bytes, "fuzz") {
                assert_eq!(LogRecord::decode(&r.encode(), "again").expect("round trip"), r);
            }
            let entry = LogEntry { seq: 1, payload: Bytes::copy_from_slice(bytes) };
            for stream in [StreamId::Partition(3), StreamId::Catalog] {
                let _ = plan(stream, 8, 0, std::slice::from_ref(&entry), 1000);
            }
        }
        1 => {
            if let Ok(a) = Assignment::decode(bytes, "fuzz") {
                assert_eq!(Assignment::decode(&a.encode(), "again").expect("round trip"), a);
            }
        }
        _ => {
            if let Ok(n) = NodeInfo::decode(bytes, "fuzz") {
                assert_eq!(NodeInfo::decode(&n.encode(), "again").expect("round trip"), n);
            }
            let _ = siren_cluster::codec::unframe(bytes, "fuzz").map(|(k, _)| k == Kind::ClusterConfig);
        }
    }
});
