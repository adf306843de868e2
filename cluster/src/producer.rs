//! Writing to the cluster: events and deletes go to their users' partition streams, items to
//! the catalog stream, and a call returns once the log has made every message durable.
//!
//! Idempotency: each message carries a de-duplication id made of the call's idempotency key,
//! the stream and the message's index within the call. A call retried with the same key and the
//! same content, within the cluster's de-duplication window, stores nothing twice and answers
//! with the positions of the first. Without a key the producer draws a random one, which makes
//! its own retries (after a timeout or a lost leader) safe, but not a caller's retry of the
//! whole call. The key names one request: other content sent under a key already used is
//! dropped as a duplicate within the window.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::try_join_all;
use siren_engine::{Event, Item, Options};

use crate::codec::{LogRecord, EVENT_BYTES, HEADER_BYTES, TRAILER_BYTES};
use crate::config::ClusterConfig;
use crate::error::{retrying, Error, Result};
use crate::log::{Log, StreamId};
use crate::partition::partition_of;

/// Room left in a message for JetStream's headers (the de-duplication id).
const HEADER_ROOM: usize = 1024;
/// Longest idempotency key.
pub const MAX_KEY_BYTES: usize = 128;

/// What a write did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Published {
    /// Per stream written, the position of the last message of this call: a read that needs
    /// this write (read-your-writes) asks its partition's replica for at least this position.
    pub positions: BTreeMap<StreamId, u64>,
    /// Messages stored.
    pub messages: usize,
    /// Messages the log had already stored under the same ids (a retried call).
    pub duplicates: usize,
}

impl Published {
    /// The position a read of `user` must wait for to see this write.
    pub fn position_for(&self, user: u64, partitions: u32) -> Option<u64> {
        self.positions
            .get(&StreamId::Partition(partition_of(user, partitions)))
            .copied()
    }
}

/// Publishes writes for Rust services (and for the HTTP API in cluster mode).
#[derive(Clone)]
pub struct Producer<L: Log> {
    log: L,
    config: ClusterConfig,
    items: Options,
    /// How long one message is retried before the call fails.
    pub retry_for: Duration,
}

impl<L: Log> Producer<L> {
    pub fn new(log: L, config: ClusterConfig) -> Producer<L> {
        let items = config.db.apply(Options::default());
        Producer {
            log,
            config,
            items,
            retry_for: Duration::from_secs(30),
        }
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// Appends events; each partition's events keep their order.
    pub async fn append(&self, events: &[Event], key: Option<&str>) -> Result<Published> {
        let messages = self.per_partition(events, |e| e.user, LogRecord::Events);
        self.publish(messages, key).await
    }

    /// Deletes users, in order with the appends of their partitions.
    pub async fn delete_users(&self, users: &[u64], key: Option<&str>) -> Result<Published> {
        let messages = self.per_partition(users, |u| *u, LogRecord::DeleteUsers);
        self.publish(messages, key).await
    }

    /// Groups `values` by their user's partition, in order, into messages that fit the log.
    fn per_partition<T: Clone>(
        &self,
        values: &[T],
        user: impl Fn(&T) -> u64,
        record: impl Fn(Vec<T>) -> LogRecord,
    ) -> Vec<(StreamId, LogRecord)> {
        let mut by_partition: BTreeMap<u32, Vec<T>> = BTreeMap::new();
        for v in values {
            by_partition
                .entry(partition_of(user(v), self.config.partitions))
                .or_default()
                .push(v.clone());
        }
        // An event takes 27 bytes and a user id 8: the event budget fits either.
        let per_message = self.events_per_message();
        by_partition
            .into_iter()
            .flat_map(|(p, vs)| {
                vs.chunks(per_message)
                    .map(|c| (StreamId::Partition(p), record(c.to_vec())))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Inserts or replaces catalog items (every node applies the catalog stream).
    pub async fn upsert_items(&self, items: &[Item], key: Option<&str>) -> Result<Published> {
        for it in items {
            self.items.check_item(it)?;
        }
        let budget = self.message_budget();
        let mut messages = Vec::new();
        let mut chunk: Vec<Item> = Vec::new();
        let mut bytes = 4;
        for it in items {
            let size = 18
                + 2 * it.semid.map_or(0, |s| s.levels())
                + it.embedding.as_ref().map_or(0, |v| 4 + 4 * v.len());
            if !chunk.is_empty() && bytes + size > budget {
                messages.push((
                    StreamId::Catalog,
                    LogRecord::Items(std::mem::take(&mut chunk)),
                ));
                bytes = 4;
            }
            if 4 + size > budget {
                return Err(Error::invalid(format!(
                    "item {} takes {size} bytes, more than a log message holds",
                    it.id
                )));
            }
            chunk.push(it.clone());
            bytes += size;
        }
        if !chunk.is_empty() {
            messages.push((StreamId::Catalog, LogRecord::Items(chunk)));
        }
        self.publish(messages, key).await
    }

    fn message_budget(&self) -> usize {
        self.log
            .max_message_bytes()
            .saturating_sub(HEADER_ROOM + HEADER_BYTES + TRAILER_BYTES)
    }

    fn events_per_message(&self) -> usize {
        ((self.message_budget().saturating_sub(4)) / EVENT_BYTES).max(1)
    }

    async fn publish(
        &self,
        messages: Vec<(StreamId, LogRecord)>,
        key: Option<&str>,
    ) -> Result<Published> {
        let key = match key {
            Some(k) => {
                check_key(k)?;
                k.to_string()
            }
            None => format!("auto-{:032x}", rand::random::<u128>()),
        };
        let mut index: BTreeMap<StreamId, usize> = BTreeMap::new();
        let sends = messages.into_iter().map(|(stream, record)| {
            let i = index.entry(stream).or_default();
            let id = format!("{key}/{}/{i}", stream.source_name());
            *i += 1;
            let payload = Bytes::from(record.encode());
            async move {
                let acked = self.append_with_retry(stream, payload, id).await?;
                Ok::<_, Error>((stream, acked))
            }
        });
        let acks = try_join_all(sends).await?;
        let mut out = Published::default();
        for (stream, ack) in acks {
            let pos = out.positions.entry(stream).or_default();
            *pos = (*pos).max(ack.seq);
            out.messages += 1;
            out.duplicates += usize::from(ack.duplicate);
        }
        Ok(out)
    }

    async fn append_with_retry(
        &self,
        stream: StreamId,
        payload: Bytes,
        id: String,
    ) -> Result<crate::log::Appended> {
        retrying(self.retry_for, || {
            self.log.append(stream, payload.clone(), id.clone())
        })
        .await
    }
}

/// An idempotency key: 1 to [`MAX_KEY_BYTES`] printable ASCII characters without spaces.
pub fn check_key(key: &str) -> Result<()> {
    let ok =
        !key.is_empty() && key.len() <= MAX_KEY_BYTES && key.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "an idempotency key is 1 to {MAX_KEY_BYTES} printable ASCII characters without \
             spaces, got {key:?}"
        )))
    }
}
