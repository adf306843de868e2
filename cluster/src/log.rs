//! What cluster mode needs from a replicated log and a metadata store, as traits, so that a log
//! other than NATS JetStream (Kafka, say) can be adapted without touching the nodes. Only the
//! JetStream implementation ([`crate::jetstream::JetStream`]) ships.
//!
//! A log here is a set of streams ([`StreamId`]): one per partition and one for the catalog. Each
//! stream numbers its messages 1, 2, 3, ... without holes while nothing is purged; a message once
//! acknowledged is durable (replicated and fsynced) and keeps its number forever, and the
//! numbers are what nodes store as their `(source, seq)` positions.

use std::future::Future;
use std::path::Path;

use bytes::Bytes;

use crate::error::Result;

/// One stream of the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StreamId {
    Partition(u32),
    Catalog,
}

impl StreamId {
    /// The engine source name under which a node stores its position in this stream.
    pub fn source_name(self) -> String {
        match self {
            StreamId::Partition(p) => format!("p/{p}"),
            StreamId::Catalog => "catalog".to_string(),
        }
    }

    /// The partition of a source name written by [`StreamId::source_name`].
    pub fn partition_of_source(name: &str) -> Option<u32> {
        name.strip_prefix("p/")?.parse().ok()
    }
}

impl std::fmt::Display for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StreamId::Partition(p) => write!(f, "partition {p}"),
            StreamId::Catalog => f.write_str("catalog"),
        }
    }
}

/// The log's answer to an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The message's number in its stream. For a duplicate, the number of the message stored
    /// under the same de-duplication id.
    pub seq: u64,
    /// The de-duplication id had been seen within the log's window: nothing new was stored.
    pub duplicate: bool,
}

/// Which messages a stream still holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// The first number still stored; `last + 1` when the stream holds nothing.
    pub first: u64,
    /// The number of the last message ever stored (0 for a stream never written).
    pub last: u64,
}

/// One message read from a stream.
#[derive(Debug, Clone)]
pub struct LogEntry {
    pub seq: u64,
    pub payload: Bytes,
}

/// The replicated log.
pub trait Log: Clone + Send + Sync + 'static {
    type Reader: LogReader;

    /// Appends `payload` to `stream` and returns once the log has made it durable. A second
    /// append with the same `dedup_id` within the log's de-duplication window stores nothing
    /// and answers `duplicate` with the first message's number.
    fn append(
        &self,
        stream: StreamId,
        payload: Bytes,
        dedup_id: String,
    ) -> impl Future<Output = Result<Appended>> + Send;

    /// The numbers `stream` holds now.
    fn bounds(&self, stream: StreamId) -> impl Future<Output = Result<Bounds>> + Send;

    /// Reads `stream` in order from message `start` on (or from the first message still stored,
    /// if `start` was purged: the reader does not hide that, the caller checks the numbers).
    fn read_from(
        &self,
        stream: StreamId,
        start: u64,
    ) -> impl Future<Output = Result<Self::Reader>> + Send;

    /// The largest message the log accepts, in bytes.
    fn max_message_bytes(&self) -> usize;
}

/// An ordered reader of one stream.
pub trait LogReader: Send + 'static {
    /// The next message, waiting for one to be appended if need be.
    fn next(&mut self) -> impl Future<Output = Result<LogEntry>> + Send;

    /// The next message if one has already arrived, without waiting.
    fn try_next(&mut self) -> Option<Result<LogEntry>>;
}

/// A key-value bucket of the metadata store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bucket {
    /// The cluster's configuration and the partition assignments.
    Meta,
    /// Node liveness: one key per node, rewritten on every heartbeat.
    Nodes,
}

/// A value with the revision that compare-and-swap checks.
#[derive(Debug, Clone)]
pub struct Versioned {
    pub value: Bytes,
    pub revision: u64,
}

/// A change seen by a watch.
#[derive(Debug, Clone)]
pub enum MetaChange {
    Put {
        key: String,
        value: Bytes,
        revision: u64,
    },
    Deleted {
        key: String,
        revision: u64,
    },
}

/// The metadata store: small values changed by compare-and-swap, and watched.
pub trait MetaStore: Clone + Send + Sync + 'static {
    type Watch: MetaWatch;

    fn get(
        &self,
        bucket: Bucket,
        key: &str,
    ) -> impl Future<Output = Result<Option<Versioned>>> + Send;

    /// Creates `key`; [`crate::Error::Conflict`] if it exists.
    fn create(
        &self,
        bucket: Bucket,
        key: &str,
        value: Bytes,
    ) -> impl Future<Output = Result<u64>> + Send;

    /// Replaces `key` if its revision is still `revision`; [`crate::Error::Conflict`] if not.
    fn update(
        &self,
        bucket: Bucket,
        key: &str,
        value: Bytes,
        revision: u64,
    ) -> impl Future<Output = Result<u64>> + Send;

    /// Writes `key` whatever it holds.
    fn put(
        &self,
        bucket: Bucket,
        key: &str,
        value: Bytes,
    ) -> impl Future<Output = Result<u64>> + Send;

    fn delete(&self, bucket: Bucket, key: &str) -> impl Future<Output = Result<()>> + Send;

    /// Every key that holds a value now.
    fn keys(&self, bucket: Bucket) -> impl Future<Output = Result<Vec<String>>> + Send;

    /// Every key's current value, then every change, in order.
    fn watch(&self, bucket: Bucket) -> impl Future<Output = Result<Self::Watch>> + Send;
}

/// A watch of a bucket.
pub trait MetaWatch: Send + 'static {
    fn next(&mut self) -> impl Future<Output = Result<MetaChange>> + Send;
}

/// Large objects: partition checkpoints on their way from one node to another.
pub trait BlobStore: Clone + Send + Sync + 'static {
    /// Stores the file at `path` under `name`, replacing any object of that name.
    fn put_blob(&self, name: &str, path: &Path) -> impl Future<Output = Result<u64>> + Send;
    /// Writes the object `name` to the new file `dest`.
    fn get_blob(&self, name: &str, dest: &Path) -> impl Future<Output = Result<u64>> + Send;
    fn delete_blob(&self, name: &str) -> impl Future<Output = Result<()>> + Send;
}

/// Everything a node needs from the outside world.
pub trait Backend: Log + MetaStore + BlobStore {}
impl<T: Log + MetaStore + BlobStore> Backend for T {}
