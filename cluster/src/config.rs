//! The cluster's configuration, fixed at creation and stored in the metadata store.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use siren_engine::Options;

use crate::error::{Error, Result};
use crate::partition::check_partition_count;

/// What every node's database must agree on, because a partition moves between nodes as a
/// sequence of events and must answer the same everywhere.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DbShape {
    pub embedding_dim: u32,
    pub semid_levels: u8,
    pub semid_codebook_size: u32,
    pub max_events_per_user: u32,
    pub max_event_age_ms: Option<i64>,
}

impl DbShape {
    pub fn of(opts: &Options) -> DbShape {
        DbShape {
            embedding_dim: opts.embedding_dim,
            semid_levels: opts.semid_levels,
            semid_codebook_size: opts.semid_codebook_size,
            max_events_per_user: opts.max_events_per_user,
            max_event_age_ms: opts.max_event_age_ms,
        }
    }

    /// `opts` with this shape.
    pub fn apply(&self, opts: Options) -> Options {
        Options {
            embedding_dim: self.embedding_dim,
            semid_levels: self.semid_levels,
            semid_codebook_size: self.semid_codebook_size,
            max_events_per_user: self.max_events_per_user,
            max_event_age_ms: self.max_event_age_ms,
            ..opts
        }
    }

    /// The first field in which `self` (the cluster's) and `node` differ.
    pub fn check(&self, cluster: &str, node: &DbShape) -> Result<()> {
        let fields: [(&'static str, String, String); 5] = [
            (
                "embedding_dim",
                self.embedding_dim.to_string(),
                node.embedding_dim.to_string(),
            ),
            (
                "semid_levels",
                self.semid_levels.to_string(),
                node.semid_levels.to_string(),
            ),
            (
                "semid_codebook_size",
                self.semid_codebook_size.to_string(),
                node.semid_codebook_size.to_string(),
            ),
            (
                "max_events_per_user",
                self.max_events_per_user.to_string(),
                node.max_events_per_user.to_string(),
            ),
            (
                "max_event_age_ms",
                format!("{:?}", self.max_event_age_ms),
                format!("{:?}", node.max_event_age_ms),
            ),
        ];
        match fields.into_iter().find(|(_, c, n)| c != n) {
            None => Ok(()),
            Some((field, cluster_value, node_value)) => Err(Error::ConfigMismatch {
                cluster: cluster.to_string(),
                field,
                cluster_value,
                node_value,
            }),
        }
    }
}

/// A cluster's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterConfig {
    /// Names the streams and buckets (`[A-Za-z0-9_-]`, 1 to 32 characters), so that several
    /// clusters can share one JetStream deployment.
    pub name: String,
    /// Virtual partitions; fixed for the cluster's life.
    pub partitions: u32,
    /// Siren replicas per partition, each on its own node and consuming the log on its own.
    pub replicas: u32,
    /// Copies of each stream the log keeps (JetStream's Raft replicas).
    pub log_replicas: u32,
    /// A retried publish with the same idempotency key is a no-op within this window.
    pub duplicate_window_secs: u64,
    /// Partition streams keep messages this long (0: forever). Nodes that fall further behind
    /// than this cannot catch up from the log and take a checkpoint instead.
    pub retention_secs: u64,
    pub db: DbShape,
}

impl ClusterConfig {
    /// A configuration with the defaults: 256 partitions, 2 Siren replicas, 3 log replicas, a
    /// 10-minute de-duplication window, streams kept forever.
    pub fn new(name: &str, db: DbShape) -> ClusterConfig {
        ClusterConfig {
            name: name.to_string(),
            partitions: 256,
            replicas: 2,
            log_replicas: 3,
            duplicate_window_secs: 600,
            retention_secs: 0,
            db,
        }
    }

    pub fn validate(&self) -> Result<()> {
        check_name("cluster name", &self.name, 32)?;
        check_partition_count(self.partitions)?;
        if !(1..=5).contains(&self.replicas) {
            return Err(Error::invalid(format!(
                "replicas must be 1 to 5, got {}",
                self.replicas
            )));
        }
        if ![1, 3, 5].contains(&self.log_replicas) {
            return Err(Error::invalid(format!(
                "log_replicas must be 1, 3 or 5, got {}",
                self.log_replicas
            )));
        }
        if self.duplicate_window_secs == 0 {
            return Err(Error::invalid("duplicate_window_secs must be positive"));
        }
        if self.retention_secs != 0 && self.retention_secs < self.duplicate_window_secs {
            return Err(Error::invalid(
                "retention_secs must be 0 (forever) or at least duplicate_window_secs",
            ));
        }
        Ok(())
    }

    pub fn duplicate_window(&self) -> Duration {
        Duration::from_secs(self.duplicate_window_secs)
    }
}

/// Checks a name that becomes part of stream, bucket or key names.
pub fn check_name(what: &str, name: &str, max: usize) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= max
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "{what} must be 1 to {max} characters of [A-Za-z0-9_-], got {name:?}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_and_names_are_checked() {
        let shape = DbShape::of(&Options::default());
        let other = DbShape {
            max_events_per_user: 5,
            ..shape.clone()
        };
        assert!(shape.check("c", &shape).is_ok());
        assert!(matches!(
            shape.check("c", &other),
            Err(Error::ConfigMismatch {
                field: "max_events_per_user",
                ..
            })
        ));
        assert!(ClusterConfig::new("prod-1", shape.clone())
            .validate()
            .is_ok());
        assert!(ClusterConfig::new("a.b", shape.clone()).validate().is_err());
        assert!(ClusterConfig::new("", shape).validate().is_err());
    }
}
