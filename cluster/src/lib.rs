//! # siren-cluster
//!
//! Cluster mode: users sharded over many Siren nodes by a stable hash of their id into a fixed
//! number of virtual partitions, each partition a replicated NATS JetStream stream that the
//! nodes holding it apply in order, exactly once, through `Db::append(.., source = (stream,
//! seq))`. Assignments and liveness live in JetStream's key-value store and change by
//! compare-and-swap. See `docs/CLUSTER.md`.

pub mod apply;
pub mod checkpoint;
pub mod codec;
pub mod config;
pub mod directory;
mod error;
pub mod jetstream;
pub mod local;
pub mod log;
pub mod meta;
mod node;
pub mod partition;
pub mod placement;
pub mod producer;
mod replica;
mod runtime;

pub use config::{ClusterConfig, DbShape};
pub use directory::Directory;
pub use error::{Error, Result};
pub use node::{Node, NodeStatus, PartitionStatus, PinAt};
pub use partition::{partition_of, MAX_PARTITIONS};
pub use producer::{Producer, Published};
pub use runtime::{CatchUp, NodeConfig, NodeCounters, Phase};
