//! Writes the seed corpora of the `cluster_log` and `cluster_checkpoint` fuzz targets
//! (`fuzz/corpus/<target>/`) from real structures. Run when a format changes:
//!
//! ```sh
//! cargo test -p siren-cluster --test fuzz_seeds -- --ignored
//! ```

use std::path::{Path, PathBuf};

use siren_cluster::checkpoint::{check_checkpoint_bytes, write_checkpoint, CheckpointHeader};
use siren_cluster::codec::LogRecord;
use siren_cluster::meta::{Assignment, CheckpointRef, NodeInfo, Replica, ReplicaState};
use siren_cluster::partition_of;
use siren_engine::{AppendOptions, Db, Event, Item, Options, SemId};

fn put(target: &str, name: &str, bytes: &[u8]) {
    let root = std::env::var_os("SIREN_FUZZ_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus"));
    let dir = root.join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), bytes).unwrap();
}

/// The target picks the decoder by the first byte.
fn put_with(target: &str, which: u8, name: &str, bytes: &[u8]) {
    let mut v = vec![which];
    v.extend_from_slice(bytes);
    put(target, name, &v);
}

fn event(user: u64, ts: i64) -> Event {
    Event {
        user,
        ts,
        item: ts as u64 % 7,
        action: 1,
        domain: 2,
    }
}

#[test]
#[ignore = "writes the fuzz seed corpora; run by hand"]
fn write_fuzz_seeds() {
    let records = [
        LogRecord::Events((0..5).map(|i| event(3, i)).collect()),
        LogRecord::DeleteUsers(vec![3, 11]),
        LogRecord::Items(vec![Item {
            id: 9,
            category: 2,
            semid: Some(SemId::new(&[1, 2, 3]).unwrap()),
            embedding: Some(vec![0.25, -0.5, 1.0, 0.0]),
        }]),
    ];
    for (i, r) in records.iter().enumerate() {
        put_with("cluster_log", 0, &format!("record-{i}"), &r.encode());
    }
    let assignment = Assignment {
        partition: 3,
        epoch: 4,
        replicas: vec![
            Replica::joining("n1"),
            Replica {
                node: "n2".into(),
                state: ReplicaState::Ready,
                wants_checkpoint: true,
                checkpoint: Some(CheckpointRef {
                    object: "p3.n2.40".into(),
                    position: 40,
                    from: "n1".into(),
                }),
            },
        ],
    };
    put_with("cluster_log", 1, "assignment", &assignment.encode());
    let info = NodeInfo {
        node: "n1".into(),
        address: "127.0.0.1:7070".into(),
        started_ms: 1,
        beat: 9,
        serving: [(3, 40), (5, 2)].into_iter().collect(),
        holds_partitions: true,
        refused: [(6, "gap".to_string())].into_iter().collect(),
    };
    put_with("cluster_log", 2, "node", &info.encode());

    // A checkpoint of a real database's partition.
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(
        dir.path().join("db"),
        Options {
            embedding_dim: 4,
            auto_compact: None,
            ..Options::default()
        },
    )
    .unwrap();
    let users: Vec<u64> = (0..200)
        .filter(|u| partition_of(*u, 4) == 1)
        .take(12)
        .collect();
    let events: Vec<Event> = users
        .iter()
        .flat_map(|&u| (0..(u as i64 % 9 + 1)).map(move |t| event(u, t * 1000)))
        .collect();
    db.append(&events, &AppendOptions::default()).unwrap();
    let header = CheckpointHeader {
        cluster: "seed".into(),
        partition: 1,
        partitions: 4,
        position: 17,
    };
    let path = dir.path().join("checkpoint");
    write_checkpoint(&db.snapshot(), &header, &path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(
        check_checkpoint_bytes(&bytes).unwrap().users,
        users.len() as u64
    );
    put("cluster_checkpoint", "partition-1", &bytes);
}
