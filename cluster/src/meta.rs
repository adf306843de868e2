//! The records kept in the metadata store: partition assignments (changed only by
//! compare-and-swap) and node heartbeats.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::codec::{decode_json, encode_json, Kind};
use crate::error::Result;

/// The key of partition `p`'s assignment in [`crate::log::Bucket::Meta`].
pub fn assignment_key(p: u32) -> String {
    format!("assign.{p}")
}

/// The partition of an assignment key.
pub fn partition_of_key(key: &str) -> Option<u32> {
    key.strip_prefix("assign.")?.parse().ok()
}

/// Where a replica is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplicaState {
    /// Catching up (from a checkpoint, or by replaying the stream); serves nothing yet.
    Joining,
    /// Has caught up with the stream at least once; serves reads and can ship checkpoints.
    Ready,
}

/// A checkpoint of a partition shipped to a joining replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointRef {
    /// The object's name in the blob store.
    pub object: String,
    /// The stream position the checkpoint holds everything up to.
    pub position: u64,
    /// The node that wrote it.
    pub from: String,
}

/// One replica of a partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replica {
    pub node: String,
    pub state: ReplicaState,
    /// Set by a joining replica that cannot (or prefers not to) catch up from the log alone.
    #[serde(default)]
    pub wants_checkpoint: bool,
    /// Set by a ready replica once the checkpoint asked for is in the blob store.
    #[serde(default)]
    pub checkpoint: Option<CheckpointRef>,
}

impl Replica {
    pub fn joining(node: &str) -> Replica {
        Replica {
            node: node.to_string(),
            state: ReplicaState::Joining,
            wants_checkpoint: false,
            checkpoint: None,
        }
    }
}

/// Which nodes hold a partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    pub partition: u32,
    /// Counts the changes, for logs and tests.
    pub epoch: u64,
    pub replicas: Vec<Replica>,
}

impl Assignment {
    pub fn replica(&self, node: &str) -> Option<&Replica> {
        self.replicas.iter().find(|r| r.node == node)
    }

    pub fn replica_mut(&mut self, node: &str) -> Option<&mut Replica> {
        self.replicas.iter_mut().find(|r| r.node == node)
    }

    pub fn ready(&self) -> impl Iterator<Item = &Replica> {
        self.replicas
            .iter()
            .filter(|r| r.state == ReplicaState::Ready)
    }

    pub fn encode(&self) -> Bytes {
        Bytes::from(encode_json(Kind::Assignment, self))
    }

    pub fn decode(buf: &[u8], key: &str) -> Result<Assignment> {
        decode_json(buf, Kind::Assignment, &format!("assignment {key}"))
    }
}

/// What a node publishes on every heartbeat, under its id in [`crate::log::Bucket::Nodes`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub node: String,
    /// Where the node serves requests (for the router); empty if it serves none.
    pub address: String,
    /// Wall-clock start time, milliseconds since the Unix epoch (informational).
    pub started_ms: u64,
    /// Counts heartbeats.
    pub beat: u64,
    /// The partitions the node serves, with the stream position each has applied.
    pub serving: BTreeMap<u32, u64>,
    /// False for a router: it holds only the catalog and forwards every read, and placement
    /// gives it no partition. Absent in records of older builds, which all hold partitions.
    #[serde(default = "holds_partitions_by_default")]
    pub holds_partitions: bool,
    /// Partitions the node holds but refuses, with the reason (a gap, a corrupt message).
    #[serde(default)]
    pub refused: BTreeMap<u32, String>,
}

fn holds_partitions_by_default() -> bool {
    true
}

impl NodeInfo {
    pub fn encode(&self) -> Bytes {
        Bytes::from(encode_json(Kind::NodeInfo, self))
    }

    pub fn decode(buf: &[u8], key: &str) -> Result<NodeInfo> {
        decode_json(buf, Kind::NodeInfo, &format!("node record {key}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_keys_parse() {
        let a = Assignment {
            partition: 7,
            epoch: 3,
            replicas: vec![
                Replica::joining("n1"),
                Replica {
                    node: "n2".into(),
                    state: ReplicaState::Ready,
                    wants_checkpoint: false,
                    checkpoint: Some(CheckpointRef {
                        object: "p7.n1.40".into(),
                        position: 40,
                        from: "n2".into(),
                    }),
                },
            ],
        };
        assert_eq!(Assignment::decode(&a.encode(), "k").unwrap(), a);
        assert_eq!(partition_of_key(&assignment_key(7)), Some(7));
        assert_eq!(partition_of_key("config"), None);
        assert!(NodeInfo::decode(&a.encode(), "k").is_err());
        assert_eq!(a.ready().count(), 1);
    }
}
