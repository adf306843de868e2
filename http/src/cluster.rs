//! Cluster mode (`docs/CLUSTER.md`): this server is a node of a Siren cluster. Writes are
//! published to the cluster's log and acknowledged once JetStream has them on a quorum; a read
//! of a user is answered here when this node serves the user's partition, and forwarded to a
//! live node that does otherwise. Every node routes, so any node is an entry point.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use siren_cluster::jetstream::{Connect, JetStream};
use siren_cluster::log::StreamId;
use siren_cluster::{partition_of, Node, NodeConfig, Producer, Published};
use siren_engine::{Options, Snapshot};

use crate::config::{ClusterSection, Role};
use crate::error::ApiError;

/// Request header on reads: the `read_after` token of earlier writes. The read waits (up to
/// `cluster.read_wait_ms`) until the replica has applied them, else answers 409.
pub const READ_AFTER: &str = "siren-read-after";
/// Request header on writes: a retry with the same key and content stores nothing twice
/// (within the cluster's de-duplication window).
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Set on a forwarded read, which is then answered where it arrives or not at all: a read is
/// forwarded at most once.
pub const FORWARDED_BY: &str = "siren-forwarded-by";

/// The node, the producer writes go through, and the client reads are forwarded with.
pub struct ClusterMode {
    pub node: Node<JetStream>,
    pub producer: Producer<JetStream>,
    read_wait: Duration,
    client: reqwest::Client,
}

/// Where a read is answered.
pub enum Routed {
    /// Here, from this snapshot.
    Here(Snapshot),
    /// By another node; this is its answer.
    There(Response),
}

impl ClusterMode {
    /// Opens the cluster `section` names (it must exist: `siren cluster create`) and starts
    /// this node on `data_dir`, published to the others at `advertise`.
    pub async fn join(
        section: &ClusterSection,
        data_dir: &Path,
        advertise: String,
        db_options: Options,
        forward_timeout: Duration,
    ) -> Result<ClusterMode, siren_cluster::Error> {
        let connect = Connect::new(section.servers.clone(), &section.node_id);
        let (log, config) = JetStream::open(&connect, &section.name).await?;
        let mut cfg = NodeConfig::new(&section.node_id, data_dir);
        cfg.address = advertise;
        cfg.db_options = db_options;
        cfg.heartbeat = Duration::from_millis(section.heartbeat_ms);
        cfg.dead_after = Duration::from_millis(section.dead_after_ms);
        cfg.holds_partitions = section.role == Role::Node;
        cfg.controller = cfg.holds_partitions;
        let producer = Producer::new(log.clone(), config.clone());
        let node = Node::start(cfg, log, config).await?;
        let client = reqwest::Client::builder()
            .timeout(forward_timeout)
            .build()
            .map_err(|e| siren_cluster::Error::InvalidArgument(format!("HTTP client: {e}")))?;
        Ok(ClusterMode {
            node,
            producer,
            read_wait: Duration::from_millis(section.read_wait_ms),
            client,
        })
    }

    /// Stops the node and deletes its heartbeat, so the others re-place its partitions at once.
    pub async fn leave(self) -> Result<(), siren_cluster::Error> {
        self.node.shutdown(true).await
    }

    /// Where a read of `user` is answered: here if this node serves the user's partition (after
    /// waiting for the request's `Siren-Read-After`), else by a live node that serves it, to
    /// which the request (`method`, `uri`, `body`) is forwarded.
    pub async fn route<B: Serialize>(
        &self,
        user: u64,
        method: Method,
        uri: &Uri,
        headers: &HeaderMap,
        body: Option<&B>,
    ) -> Result<Routed, ApiError> {
        let partition = partition_of(user, self.node.cluster().partitions);
        let after = ReadAfter::from_headers(headers)?;
        if let Some(catalog) = after.catalog {
            self.node.wait_catalog(catalog, self.read_wait).await?;
        }
        let need = after.partitions.get(&partition).copied();
        match self.node.snapshot(partition, need, self.read_wait).await {
            Ok(snap) => Ok(Routed::Here(snap)),
            Err(siren_cluster::Error::NotServing { .. }) if !headers.contains_key(FORWARDED_BY) => {
                let forward = Forward {
                    method,
                    uri,
                    headers,
                    body,
                };
                self.forward(partition, forward).await.map(Routed::There)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Sends the request to the live nodes serving `partition`, most advanced first, until one
    /// answers with anything but 503.
    async fn forward<B: Serialize>(
        &self,
        partition: u32,
        f: Forward<'_, B>,
    ) -> Result<Response, ApiError> {
        let path = f.uri.path_and_query().map_or("/", |p| p.as_str());
        let owners = self.node.directory().serving(partition);
        let mut unavailable = None;
        for (owner, _) in owners
            .iter()
            .filter(|(n, _)| n.node != self.node.id() && !n.address.is_empty())
        {
            let url = format!("{}{path}", owner.address.trim_end_matches('/'));
            let mut req = self
                .client
                .request(f.method.clone(), url)
                .header(FORWARDED_BY, self.node.id());
            for name in [
                header::AUTHORIZATION,
                header::HeaderName::from_static(READ_AFTER),
            ] {
                if let Some(v) = f.headers.get(&name) {
                    req = req.header(name, v);
                }
            }
            if let Some(b) = f.body {
                req = req.json(b);
            }
            match req.send().await {
                Ok(resp) if resp.status() != StatusCode::SERVICE_UNAVAILABLE => {
                    return relay(resp).await;
                }
                Ok(resp) => unavailable = Some(relay(resp).await?),
                Err(e) => tracing::warn!(node = %owner.node, error = %e, "forwarding failed"),
            }
        }
        match unavailable {
            Some(resp) => Ok(resp),
            None => Err(siren_cluster::Error::NoLiveOwner { partition }.into()),
        }
    }
}

struct Forward<'a, B> {
    method: Method,
    uri: &'a Uri,
    headers: &'a HeaderMap,
    body: Option<&'a B>,
}

/// Another node's answer, passed on as it came.
async fn relay(resp: reqwest::Response) -> Result<Response, ApiError> {
    let status = resp.status();
    let mut headers = HeaderMap::new();
    for name in [header::CONTENT_TYPE, header::RETRY_AFTER] {
        if let Some(v) = resp.headers().get(&name) {
            headers.insert(name, v.clone());
        }
    }
    let body = resp
        .bytes()
        .await
        .map_err(|e| ApiError::internal(format!("reading a forwarded answer: {e}")))?;
    Ok((status, headers, body).into_response())
}

/// The positions a read must see: `<partition>:<position>` per partition and
/// `catalog:<position>`, comma-separated, as a write's `read_after` gives them.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReadAfter {
    pub partitions: BTreeMap<u32, u64>,
    pub catalog: Option<u64>,
}

impl ReadAfter {
    /// What a write published must be waited for.
    pub fn of(published: &Published) -> ReadAfter {
        let mut out = ReadAfter::default();
        for (stream, &pos) in &published.positions {
            match stream {
                StreamId::Partition(p) => {
                    out.partitions.insert(*p, pos);
                }
                StreamId::Catalog => out.catalog = Some(pos),
            }
        }
        out
    }

    pub fn token(&self) -> String {
        let parts = self.partitions.iter().map(|(p, s)| format!("{p}:{s}"));
        let catalog = self.catalog.map(|s| format!("catalog:{s}"));
        parts.chain(catalog).collect::<Vec<_>>().join(",")
    }

    pub fn parse(token: &str) -> Result<ReadAfter, ApiError> {
        let bad = || {
            ApiError::invalid(format!(
                "{READ_AFTER} is a write's read_after token (`<partition>:<position>,...`), \
                 not {token:?}"
            ))
        };
        let mut out = ReadAfter::default();
        for part in token.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (stream, pos) = part.split_once(':').ok_or_else(bad)?;
            let pos: u64 = pos.parse().map_err(|_| bad())?;
            if stream == "catalog" {
                out.catalog = Some(pos);
            } else {
                out.partitions
                    .insert(stream.parse().map_err(|_| bad())?, pos);
            }
        }
        Ok(out)
    }

    fn from_headers(headers: &HeaderMap) -> Result<ReadAfter, ApiError> {
        match headers.get(READ_AFTER) {
            None => Ok(ReadAfter::default()),
            Some(v) => ReadAfter::parse(
                v.to_str()
                    .map_err(|_| ApiError::invalid(format!("{READ_AFTER} must be ASCII")))?,
            ),
        }
    }
}

/// The request's idempotency key, if any.
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    headers
        .get(IDEMPOTENCY_KEY)
        .map(HeaderValue::to_str)
        .transpose()
        .map_err(|_| ApiError::invalid(format!("{IDEMPOTENCY_KEY} must be ASCII")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_after_tokens_round_trip_and_bad_ones_are_refused() {
        let r = ReadAfter {
            partitions: [(3, 17), (250, 1)].into_iter().collect(),
            catalog: Some(9),
        };
        assert_eq!(r.token(), "3:17,250:1,catalog:9");
        assert_eq!(ReadAfter::parse(&r.token()).unwrap(), r);
        assert_eq!(ReadAfter::parse("").unwrap(), ReadAfter::default());
        for bad in ["3", "x:1", "3:-1", "catalog:y", "3:1;4:2"] {
            let e = ReadAfter::parse(bad).unwrap_err();
            assert_eq!(e.code, "invalid_argument", "{bad}");
        }
    }
}
