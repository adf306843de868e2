//! The cluster crate's one error type.

use std::path::PathBuf;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The embedded engine failed (I/O, corruption, a refused argument).
    #[error("engine: {0}")]
    Engine(#[from] siren_engine::Error),

    /// The log or metadata service (NATS JetStream) failed or did not answer. `retryable` says
    /// whether the same call may succeed later (a timeout, a lost leader, a lost connection).
    #[error("log service, {op} on {target}: {detail}")]
    Log {
        op: &'static str,
        target: String,
        detail: String,
        retryable: bool,
    },

    /// A compare-and-swap lost: the key changed (or was created) since it was read.
    #[error("metadata key {key} changed concurrently")]
    Conflict { key: String },

    /// The partition's stream no longer holds the messages after the node's stored position:
    /// applying it would skip them, so the node refuses the partition.
    #[error(
        "partition {partition}: stored position {stored} and the stream's first sequence {first} \
         leave a gap of {} messages; refusing the partition",
        first - stored - 1
    )]
    Gap {
        partition: u32,
        stored: u64,
        first: u64,
    },

    /// A message of a log or a metadata value failed a magic, checksum, bounds or consistency
    /// check.
    #[error("corrupt {what}: {detail}")]
    Corrupt { what: String, detail: String },

    /// A structure carries a format version this build does not read.
    #[error("{what} has format version {found}, this build reads version {supported}")]
    UnsupportedVersion {
        what: String,
        found: u8,
        supported: u8,
    },

    /// This node does not serve the partition (not a replica, or not caught up yet).
    #[error("node {node} does not serve partition {partition}: {reason}")]
    NotServing {
        node: String,
        partition: u32,
        reason: String,
    },

    /// No live node serves the partition right now (its replicas are dead or still catching
    /// up): a read of its users cannot be answered until one does.
    #[error("no live node serves partition {partition}")]
    NoLiveOwner { partition: u32 },

    /// A read asked for a position the replica had not applied within the wait.
    #[error(
        "partition {partition} has applied up to sequence {applied}, the request needs {needed}"
    )]
    NotYetApplied {
        partition: u32,
        needed: u64,
        applied: u64,
    },

    /// A pinned read cannot be served: the pin is unknown here, was released, or the replica
    /// has already applied past the pinned position.
    #[error("pin {job} on partition {partition}: {reason}")]
    PinUnavailable {
        job: String,
        partition: u32,
        reason: String,
    },

    /// The node's database or options do not fit the cluster's configuration.
    #[error("cluster {cluster} has {field} = {cluster_value}, but this node has {node_value}")]
    ConfigMismatch {
        cluster: String,
        field: &'static str,
        cluster_value: String,
        node_value: String,
    },

    /// A caller passed something the cluster cannot accept.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// The NATS server binary is missing, too old, or failed to start.
    #[error("nats-server: {0}")]
    Server(String),

    /// A file or directory operation failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// Waited too long for something to happen.
    #[error("timed out after {secs:.1} s waiting for {what}")]
    Timeout { what: String, secs: f64 },

    /// The node or producer is shutting down.
    #[error("shutting down")]
    Shutdown,
}

impl Error {
    pub(crate) fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidArgument(msg.into())
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn corrupt(what: impl Into<String>, detail: impl Into<String>) -> Self {
        Error::Corrupt {
            what: what.into(),
            detail: detail.into(),
        }
    }

    pub(crate) fn timeout(what: impl Into<String>, waited: std::time::Duration) -> Self {
        Error::Timeout {
            what: what.into(),
            secs: waited.as_secs_f64(),
        }
    }

    /// Whether the same call may succeed if tried again later.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Log {
                retryable: true,
                ..
            } | Error::Timeout { .. }
                | Error::NotYetApplied { .. }
                | Error::NotServing { .. }
                | Error::NoLiveOwner { .. }
        )
    }
}

/// Calls `f` until it succeeds, fails with an error that is not retryable, or `budget` has
/// passed; pauses double from 50 ms to 1 s between calls.
pub(crate) async fn retrying<T, Fut>(
    budget: std::time::Duration,
    mut f: impl FnMut() -> Fut,
) -> Result<T>
where
    Fut: std::future::Future<Output = Result<T>>,
{
    let start = std::time::Instant::now();
    let mut pause = std::time::Duration::from_millis(50);
    loop {
        match f().await {
            Err(e) if e.is_retryable() && start.elapsed() < budget => {
                tracing::debug!("retrying after: {e}");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_secs(1));
            }
            other => return other,
        }
    }
}
