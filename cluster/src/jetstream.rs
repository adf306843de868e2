//! The log, the metadata store and the checkpoint store on NATS JetStream.
//!
//! Per cluster `C` (see `docs/CLUSTER.md`, "On JetStream"):
//!
//! | what | JetStream object | settings |
//! |---|---|---|
//! | partition `p` | stream `SIREN_C_P<p>`, subject `siren.C.p.<p>` | file storage, `log_replicas` copies, de-duplication window, optional age limit |
//! | catalog | stream `SIREN_C_CATALOG`, subject `siren.C.catalog` | file storage, `log_replicas` copies, kept forever |
//! | configuration, assignments | key-value bucket `SIREN_C_META` | file storage, compare-and-swap on revisions |
//! | liveness | key-value bucket `SIREN_C_NODES` | memory storage (heartbeats need no disk) |
//! | checkpoints in transit | object store `SIREN_C_CKPT` | file storage |
//!
//! The servers must run with `jetstream { sync_interval: always }`: JetStream's default fsyncs
//! every two minutes, so an acknowledged message could be lost on power failure.

use std::path::Path;
use std::time::Duration;

use async_nats::jetstream::consumer::pull::{Ordered, OrderedConfig};
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::kv::{self, Operation};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::object_store::{self, ObjectStore};
use async_nats::jetstream::stream::{self, StorageType};
use async_nats::jetstream::{self, Context};
use bytes::Bytes;
use futures_util::{FutureExt, StreamExt, TryStreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::codec::{decode_json, encode_json, Kind};
use crate::config::ClusterConfig;
use crate::error::{retrying, Error, Result};
use crate::log::{
    Appended, BlobStore, Bounds, Bucket, Log, LogEntry, LogReader, MetaChange, MetaStore,
    MetaWatch, StreamId, Versioned,
};

/// A reader's pull requests expire after this, and the server sends an idle heartbeat every
/// half of it; two missed heartbeats make the reader re-create its consumer on a live server.
/// The client's default (30 s) would leave a partition unapplied for 30 s after the server
/// holding its consumer dies.
const READER_PULL_EXPIRES: Duration = Duration::from_secs(4);

/// How long creating the cluster's streams and buckets is retried.
const CREATE_BUDGET: Duration = Duration::from_secs(30);

/// The key of the cluster's configuration in [`Bucket::Meta`].
pub const CONFIG_KEY: &str = "config";

/// The names of a cluster's streams, subjects and buckets.
#[derive(Debug, Clone)]
pub struct Names {
    cluster: String,
}

impl Names {
    pub fn new(cluster: &str) -> Names {
        Names {
            cluster: cluster.to_string(),
        }
    }

    pub fn stream(&self, s: StreamId) -> String {
        match s {
            StreamId::Partition(p) => format!("SIREN_{}_P{p}", self.cluster),
            StreamId::Catalog => format!("SIREN_{}_CATALOG", self.cluster),
        }
    }

    pub fn subject(&self, s: StreamId) -> String {
        match s {
            StreamId::Partition(p) => format!("siren.{}.p.{p}", self.cluster),
            StreamId::Catalog => format!("siren.{}.catalog", self.cluster),
        }
    }

    pub fn bucket(&self, b: Bucket) -> String {
        match b {
            Bucket::Meta => format!("SIREN_{}_META", self.cluster),
            Bucket::Nodes => format!("SIREN_{}_NODES", self.cluster),
        }
    }

    pub fn blobs(&self) -> String {
        format!("SIREN_{}_CKPT", self.cluster)
    }
}

/// A connection to a JetStream deployment, bound to one cluster's streams and buckets.
#[derive(Clone)]
pub struct JetStream {
    js: Context,
    names: Names,
    meta: kv::Store,
    nodes: kv::Store,
    blobs: ObjectStore,
    max_payload: usize,
}

/// How to reach the JetStream servers.
#[derive(Debug, Clone)]
pub struct Connect {
    /// `nats://host:port` of one or more servers; the client learns the rest of the cluster.
    pub servers: Vec<String>,
    /// The name this client shows in the servers' monitoring.
    pub client_name: String,
    /// How long one JetStream request may take before it fails (and is retried by the caller).
    pub request_timeout: Duration,
}

impl Connect {
    pub fn new(servers: Vec<String>, client_name: &str) -> Connect {
        Connect {
            servers,
            client_name: client_name.to_string(),
            request_timeout: Duration::from_secs(5),
        }
    }
}

async fn connect_context(c: &Connect) -> Result<(Context, usize)> {
    let addrs = c
        .servers
        .iter()
        .map(|s| s.parse::<async_nats::ServerAddr>())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::invalid(format!("server address: {e}")))?;
    let client = async_nats::ConnectOptions::new()
        .name(&c.client_name)
        .connection_timeout(Duration::from_secs(5))
        .ping_interval(Duration::from_secs(5))
        .connect(addrs)
        .await
        .map_err(|e| log_err("connect", c.servers.join(","), e, true))?;
    let max_payload = client.server_info().max_payload;
    let js = jetstream::ContextBuilder::new()
        .timeout(c.request_timeout)
        .build(client);
    Ok((js, max_payload))
}

fn log_err(
    op: &'static str,
    target: impl Into<String>,
    e: impl std::fmt::Display,
    retryable: bool,
) -> Error {
    Error::Log {
        op,
        target: target.into(),
        detail: e.to_string(),
        retryable,
    }
}

impl JetStream {
    /// Creates the cluster's streams and buckets, or checks that the existing ones were created
    /// with `config`. Safe to call again and from several processes.
    pub async fn create(c: &Connect, config: &ClusterConfig) -> Result<JetStream> {
        config.validate()?;
        let (js, max_payload) = connect_context(c).await?;
        let names = Names::new(&config.name);
        let replicas = config.log_replicas as usize;
        // A cluster that has just elected its leader may not place replicated streams yet.
        let kv = |bucket: Bucket, storage| {
            let (js, name) = (&js, names.bucket(bucket));
            retrying(CREATE_BUDGET, move || {
                let name = name.clone();
                async move { ensure_kv(js, &name, replicas, storage).await }
            })
        };
        let meta = kv(Bucket::Meta, StorageType::File).await?;
        let nodes = kv(Bucket::Nodes, StorageType::Memory).await?;
        let blobs = retrying(CREATE_BUDGET, || async {
            js.create_object_store(object_store::Config {
                bucket: names.blobs(),
                storage: StorageType::File,
                num_replicas: replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| log_err("create object store", names.blobs(), e, true))
        })
        .await?;
        let me = JetStream {
            js,
            names,
            meta,
            nodes,
            blobs,
            max_payload,
        };
        retrying(CREATE_BUDGET, || me.ensure_config(config)).await?;
        let streams = (0..config.partitions)
            .map(StreamId::Partition)
            .chain([StreamId::Catalog]);
        for s in streams {
            retrying(CREATE_BUDGET, || me.ensure_stream(config, s)).await?;
        }
        Ok(me)
    }

    /// Connects to an existing cluster and returns its configuration.
    pub async fn open(c: &Connect, cluster: &str) -> Result<(JetStream, ClusterConfig)> {
        crate::config::check_name("cluster name", cluster, 32)?;
        let (js, max_payload) = connect_context(c).await?;
        let names = Names::new(cluster);
        let missing = |what: String, e: &dyn std::fmt::Display| {
            log_err(
                "open",
                what,
                format!("{e} (was the cluster created?)"),
                false,
            )
        };
        let meta = js
            .get_key_value(names.bucket(Bucket::Meta))
            .await
            .map_err(|e| missing(names.bucket(Bucket::Meta), &e))?;
        let nodes = js
            .get_key_value(names.bucket(Bucket::Nodes))
            .await
            .map_err(|e| missing(names.bucket(Bucket::Nodes), &e))?;
        let blobs = js
            .get_object_store(names.blobs())
            .await
            .map_err(|e| missing(names.blobs(), &e))?;
        let me = JetStream {
            js,
            names,
            meta,
            nodes,
            blobs,
            max_payload,
        };
        let config = me
            .get(Bucket::Meta, CONFIG_KEY)
            .await?
            .ok_or_else(|| missing(CONFIG_KEY.to_string(), &"no configuration"))?;
        let config: ClusterConfig =
            decode_json(&config.value, Kind::ClusterConfig, "cluster configuration")?;
        Ok((me, config))
    }

    pub fn names(&self) -> &Names {
        &self.names
    }

    /// The underlying JetStream context, for operations cluster mode does not wrap.
    pub fn context(&self) -> &Context {
        &self.js
    }

    /// Removes every message of a partition stream before `keep_from` (an operator's retention
    /// action, and the tests' way of making a stream start after a node's position).
    pub async fn purge_before(&self, s: StreamId, keep_from: u64) -> Result<u64> {
        let name = self.names.stream(s);
        let stream = self
            .js
            .get_stream_no_info(&name)
            .await
            .map_err(|e| log_err("get stream", &name, e, true))?;
        let done = stream
            .purge()
            .sequence(keep_from)
            .await
            .map_err(|e| log_err("purge", &name, e, true))?;
        Ok(done.purged)
    }

    async fn ensure_config(&self, config: &ClusterConfig) -> Result<()> {
        let bytes = Bytes::from(encode_json(Kind::ClusterConfig, config));
        match self.create(Bucket::Meta, CONFIG_KEY, bytes).await {
            Ok(_) => return Ok(()),
            Err(Error::Conflict { .. }) => {}
            Err(e) => return Err(e),
        }
        let stored = self
            .get(Bucket::Meta, CONFIG_KEY)
            .await?
            .ok_or_else(|| Error::Conflict {
                key: CONFIG_KEY.to_string(),
            })?;
        let stored: ClusterConfig =
            decode_json(&stored.value, Kind::ClusterConfig, "cluster configuration")?;
        if &stored != config {
            return Err(Error::ConfigMismatch {
                cluster: config.name.clone(),
                field: "configuration",
                cluster_value: format!("{stored:?}"),
                node_value: format!("{config:?}"),
            });
        }
        Ok(())
    }

    async fn ensure_stream(&self, config: &ClusterConfig, s: StreamId) -> Result<()> {
        let name = self.names.stream(s);
        let max_age = match s {
            StreamId::Partition(_) => Duration::from_secs(config.retention_secs),
            StreamId::Catalog => Duration::ZERO,
        };
        let want = stream::Config {
            name: name.clone(),
            subjects: vec![self.names.subject(s)],
            storage: StorageType::File,
            num_replicas: config.log_replicas as usize,
            duplicate_window: config.duplicate_window(),
            max_age,
            // A message is the record of a write: it is never replaced or deleted one by one.
            deny_delete: true,
            ..Default::default()
        };
        let stream = self
            .js
            .get_or_create_stream(want.clone())
            .await
            .map_err(|e| log_err("create stream", &name, e, true))?;
        let have = &stream.cached_info().config;
        if have.num_replicas != want.num_replicas
            || have.subjects != want.subjects
            || have.storage != want.storage
        {
            return Err(Error::ConfigMismatch {
                cluster: config.name.clone(),
                field: "stream",
                cluster_value: format!(
                    "{name}: {} replicas, {:?}, {:?}",
                    have.num_replicas, have.storage, have.subjects
                ),
                node_value: format!(
                    "{} replicas, {:?}, {:?}",
                    want.num_replicas, want.storage, want.subjects
                ),
            });
        }
        Ok(())
    }

    fn kv(&self, b: Bucket) -> &kv::Store {
        match b {
            Bucket::Meta => &self.meta,
            Bucket::Nodes => &self.nodes,
        }
    }

    fn key_name(&self, b: Bucket, key: &str) -> String {
        format!("{}/{key}", self.names.bucket(b))
    }
}

async fn ensure_kv(
    js: &Context,
    bucket: &str,
    replicas: usize,
    storage: StorageType,
) -> Result<kv::Store> {
    if let Ok(kv) = js.get_key_value(bucket).await {
        return Ok(kv);
    }
    js.create_key_value(kv::Config {
        bucket: bucket.to_string(),
        history: 1,
        storage,
        num_replicas: replicas,
        ..Default::default()
    })
    .await
    .map_err(|e| log_err("create key-value bucket", bucket, e, true))
}

/// Whether an error was JetStream's answer to a compare-and-swap that lost. The client maps
/// only the older error code (10071) to its kind; servers since 2.11 also answer 10164.
fn wrong_last_sequence(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(js) = err.downcast_ref::<async_nats::jetstream::Error>() {
            if matches!(js.error_code().0, 10071 | 10164) {
                return true;
            }
        }
        cur = err.source();
    }
    false
}

/// Whether a failed publish may succeed if sent again with the same message id.
fn publish_retryable(kind: PublishErrorKind) -> bool {
    !matches!(
        kind,
        PublishErrorKind::MaxPayloadExceeded
            | PublishErrorKind::WrongLastMessageId
            | PublishErrorKind::WrongLastSequence
    )
}

impl Log for JetStream {
    type Reader = JetStreamReader;

    async fn append(&self, s: StreamId, payload: Bytes, dedup_id: String) -> Result<Appended> {
        let subject = self.names.subject(s);
        let publish = PublishMessage::build()
            .payload(payload)
            .message_id(dedup_id);
        let fail = |e: async_nats::jetstream::context::PublishError| {
            let retryable = publish_retryable(e.kind());
            log_err("publish", &subject, e, retryable)
        };
        let ack = self
            .js
            .send_publish(subject.clone(), publish)
            .await
            .map_err(fail)?
            .await
            .map_err(fail)?;
        Ok(Appended {
            seq: ack.sequence,
            duplicate: ack.duplicate,
        })
    }

    async fn bounds(&self, s: StreamId) -> Result<Bounds> {
        let name = self.names.stream(s);
        let stream = self
            .js
            .get_stream(&name)
            .await
            .map_err(|e| log_err("stream info", &name, e, true))?;
        let state = &stream.cached_info().state;
        // JetStream reports first = 0 for a stream never written, and first = last + 1 once
        // everything was purged.
        let first = if state.messages == 0 {
            state.last_sequence + 1
        } else {
            state.first_sequence
        };
        Ok(Bounds {
            first,
            last: state.last_sequence,
        })
    }

    async fn read_from(&self, s: StreamId, start: u64) -> Result<JetStreamReader> {
        let name = self.names.stream(s);
        let stream = self
            .js
            .get_stream_no_info(&name)
            .await
            .map_err(|e| log_err("get stream", &name, e, true))?;
        let consumer = stream
            .create_consumer(OrderedConfig {
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: start.max(1),
                },
                max_expires: READER_PULL_EXPIRES,
                ..Default::default()
            })
            .await
            .map_err(|e| log_err("create consumer", &name, e, true))?;
        let messages = consumer
            .messages()
            .await
            .map_err(|e| log_err("consume", &name, e, true))?;
        Ok(JetStreamReader { name, messages })
    }

    fn max_message_bytes(&self) -> usize {
        self.max_payload
    }
}

/// An ordered consumer: JetStream's ephemeral, unacknowledged consumer that re-creates itself
/// after the message it last delivered when a server or the connection fails.
pub struct JetStreamReader {
    name: String,
    messages: Ordered,
}

impl JetStreamReader {
    fn entry(
        &self,
        item: Option<
            std::result::Result<jetstream::Message, jetstream::consumer::pull::OrderedError>,
        >,
    ) -> Result<LogEntry> {
        let m = item
            .ok_or_else(|| log_err("consume", &self.name, "the consumer ended", true))?
            .map_err(|e| log_err("consume", &self.name, e, true))?;
        let seq = m
            .info()
            .map_err(|e| log_err("consume", &self.name, e, false))?
            .stream_sequence;
        Ok(LogEntry {
            seq,
            payload: m.message.payload.clone(),
        })
    }
}

impl LogReader for JetStreamReader {
    async fn next(&mut self) -> Result<LogEntry> {
        let item = self.messages.next().await;
        self.entry(item)
    }

    fn try_next(&mut self) -> Option<Result<LogEntry>> {
        let item = self.messages.next().now_or_never()?;
        Some(self.entry(item))
    }
}

impl MetaStore for JetStream {
    type Watch = JetStreamWatch;

    async fn get(&self, b: Bucket, key: &str) -> Result<Option<Versioned>> {
        let entry = self
            .kv(b)
            .entry(key)
            .await
            .map_err(|e| log_err("get", self.key_name(b, key), e, true))?;
        Ok(entry.and_then(|e| {
            (e.operation == Operation::Put).then_some(Versioned {
                value: e.value,
                revision: e.revision,
            })
        }))
    }

    async fn create(&self, b: Bucket, key: &str, value: Bytes) -> Result<u64> {
        self.kv(b)
            .create(key, value)
            .await
            .map_err(|e| match e.kind() {
                kv::CreateErrorKind::AlreadyExists => Error::Conflict {
                    key: self.key_name(b, key),
                },
                _ => log_err("create", self.key_name(b, key), e, true),
            })
    }

    async fn update(&self, b: Bucket, key: &str, value: Bytes, revision: u64) -> Result<u64> {
        self.kv(b).update(key, value, revision).await.map_err(|e| {
            if e.kind() == kv::UpdateErrorKind::WrongLastRevision || wrong_last_sequence(&e) {
                Error::Conflict {
                    key: self.key_name(b, key),
                }
            } else {
                log_err("update", self.key_name(b, key), e, true)
            }
        })
    }

    async fn put(&self, b: Bucket, key: &str, value: Bytes) -> Result<u64> {
        self.kv(b)
            .put(key, value)
            .await
            .map_err(|e| log_err("put", self.key_name(b, key), e, true))
    }

    async fn delete(&self, b: Bucket, key: &str) -> Result<()> {
        self.kv(b)
            .delete(key)
            .await
            .map_err(|e| log_err("delete", self.key_name(b, key), e, true))
    }

    async fn keys(&self, b: Bucket) -> Result<Vec<String>> {
        let name = self.names.bucket(b);
        let fail = |e: &dyn std::fmt::Display| log_err("list keys", &name, e, true);
        let keys = self.kv(b).keys().await.map_err(|e| fail(&e))?;
        keys.try_collect().await.map_err(|e| fail(&e))
    }

    async fn watch(&self, b: Bucket) -> Result<JetStreamWatch> {
        let name = self.names.bucket(b);
        let watch = self
            .kv(b)
            .watch_all()
            .await
            .map_err(|e| log_err("watch", &name, e, true))?;
        Ok(JetStreamWatch { name, watch })
    }
}

/// A watch of a key-value bucket.
pub struct JetStreamWatch {
    name: String,
    watch: kv::Watch,
}

impl MetaWatch for JetStreamWatch {
    async fn next(&mut self) -> Result<MetaChange> {
        let entry = self
            .watch
            .next()
            .await
            .ok_or_else(|| log_err("watch", &self.name, "the watch ended", true))?
            .map_err(|e| log_err("watch", &self.name, e, true))?;
        Ok(match entry.operation {
            Operation::Put => MetaChange::Put {
                key: entry.key,
                value: entry.value,
                revision: entry.revision,
            },
            Operation::Delete | Operation::Purge => MetaChange::Deleted {
                key: entry.key,
                revision: entry.revision,
            },
        })
    }
}

/// A checkpoint transfer that moves no data for this long has stalled (a JetStream server it
/// depended on died) and fails, retryably, rather than wait forever: the joiner asks again.
const BLOB_IDLE: Duration = Duration::from_secs(10);
/// The slowest upload rate a checkpoint's put is allowed before it counts as stalled.
const BLOB_MIN_BYTES_PER_SEC: u64 = 4 << 20;

impl BlobStore for JetStream {
    async fn put_blob(&self, name: &str, path: &Path) -> Result<u64> {
        let mut file = tokio::fs::File::open(path)
            .await
            .map_err(|e| Error::io(path, e))?;
        let size = file.metadata().await.map_err(|e| Error::io(path, e))?.len();
        let limit = BLOB_IDLE + Duration::from_secs(size / BLOB_MIN_BYTES_PER_SEC);
        let info = tokio::time::timeout(limit, self.blobs.put(name, &mut file))
            .await
            .map_err(|_| log_err("put object", name, format!("not done in {limit:?}"), true))?
            .map_err(|e| log_err("put object", name, e, true))?;
        Ok(info.size as u64)
    }

    async fn get_blob(&self, name: &str, dest: &Path) -> Result<u64> {
        let stalled = || {
            log_err(
                "get object",
                name,
                format!("no data for {BLOB_IDLE:?}"),
                true,
            )
        };
        let mut object = tokio::time::timeout(BLOB_IDLE, self.blobs.get(name))
            .await
            .map_err(|_| stalled())?
            .map_err(|e| log_err("get object", name, e, true))?;
        let mut file = tokio::fs::File::create_new(dest)
            .await
            .map_err(|e| Error::io(dest, e))?;
        // The object store checks the object's SHA-256 digest as it reads the last chunk.
        let mut buf = vec![0u8; 1 << 20];
        let mut n = 0u64;
        loop {
            let read = tokio::time::timeout(BLOB_IDLE, object.read(&mut buf))
                .await
                .map_err(|_| stalled())?
                .map_err(|e| log_err("read object", name, e, true))?;
            if read == 0 {
                break;
            }
            file.write_all(&buf[..read])
                .await
                .map_err(|e| Error::io(dest, e))?;
            n += read as u64;
        }
        file.sync_all().await.map_err(|e| Error::io(dest, e))?;
        Ok(n)
    }

    async fn delete_blob(&self, name: &str) -> Result<()> {
        self.blobs
            .delete(name)
            .await
            .map_err(|e| log_err("delete object", name, e, true))
    }
}
