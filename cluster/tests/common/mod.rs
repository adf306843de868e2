//! Shared by the cluster tests: real NATS JetStream servers on loopback (started here, stopped by
//! process id), nodes with fast heartbeats, generated catalogs and events, and a single-node
//! reference database to compare against.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use siren_cluster::jetstream::{Connect, JetStream};
use siren_cluster::local::LocalJetStream;
use siren_cluster::{
    partition_of, CatchUp, ClusterConfig, DbShape, Node, NodeConfig, Phase, Producer,
};
use siren_engine::{
    AppendOptions, Db, Durability, Event, Item, Options, ReadRange, SemId, Snapshot,
};

pub const DIM: usize = 8;

/// Starts `n` JetStream servers, or returns `None` (printing why) when no server binary is
/// installed. With `CI` set a missing binary fails the test instead.
pub fn servers(dir: &Path, n: usize) -> Option<LocalJetStream> {
    init_tracing();
    match siren_cluster::local::server_binary() {
        Ok(_) => {}
        Err(e) if std::env::var_os("CI").is_some() => {
            panic!("CI is set and the NATS server is missing: {e}")
        }
        Err(e) => {
            eprintln!("skipped: {e}");
            return None;
        }
    }
    let options = siren_cluster::local::LocalOptions {
        die_with_parent: true,
        sync_always: true,
    };
    Some(LocalJetStream::start(dir, n, options).expect("JetStream servers start"))
}

/// Logs to the test's output, filtered by `RUST_LOG`.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

pub fn db_options() -> Options {
    Options {
        embedding_dim: DIM as u32,
        semid_levels: 3,
        semid_codebook_size: 16,
        max_events_per_user: 500,
        auto_compact: None,
        ..Options::default()
    }
}

pub fn cluster_config(name: &str, partitions: u32, log_replicas: u32) -> ClusterConfig {
    let mut c = ClusterConfig::new(name, DbShape::of(&db_options()));
    c.partitions = partitions;
    c.log_replicas = log_replicas;
    c.duplicate_window_secs = 120;
    c
}

pub async fn create(js: &LocalJetStream, config: &ClusterConfig, client: &str) -> JetStream {
    JetStream::create(&Connect::new(js.urls(), client), config)
        .await
        .expect("cluster created")
}

pub fn node_config(id: &str, dir: &Path, catch_up: CatchUp) -> NodeConfig {
    let mut c = NodeConfig::new(id, dir.join(id));
    c.db_options = db_options();
    c.heartbeat = Duration::from_millis(200);
    c.dead_after = Duration::from_millis(1500);
    c.catch_up = catch_up;
    c
}

pub async fn start_node(
    id: &str,
    dir: &Path,
    js: &LocalJetStream,
    config: &ClusterConfig,
    catch_up: CatchUp,
) -> Node<JetStream> {
    let backend = JetStream::open(&Connect::new(js.urls(), id), &config.name)
        .await
        .expect("cluster opens")
        .0;
    Node::start(node_config(id, dir, catch_up), backend, config.clone())
        .await
        .expect("node starts")
}

pub fn catalog(n: u64, rng: &mut StdRng) -> Vec<Item> {
    (0..n)
        .map(|id| Item {
            id,
            category: (id % 7) as u32,
            semid: Some(
                SemId::new(&[
                    rng.random_range(0..4),
                    rng.random_range(0..16),
                    rng.random_range(0..16),
                ])
                .unwrap(),
            ),
            embedding: Some((0..DIM).map(|_| rng.random_range(-1.0..1.0)).collect()),
        })
        .collect()
}

/// Events with a unique timestamp per (user, event), so that the order in which a reference is
/// fed does not matter.
pub struct EventGen {
    rng: StdRng,
    next_ts: BTreeMap<u64, i64>,
    users: u64,
    items: u64,
}

impl EventGen {
    pub fn new(seed: u64, users: u64, items: u64) -> EventGen {
        EventGen {
            rng: StdRng::seed_from_u64(seed),
            next_ts: BTreeMap::new(),
            users,
            items,
        }
    }

    pub fn batches(&mut self, count: usize, size: usize) -> Vec<Vec<Event>> {
        (0..count).map(|_| self.batch(size)).collect()
    }

    pub fn batch(&mut self, n: usize) -> Vec<Event> {
        (0..n)
            .map(|_| {
                let user = self.rng.random_range(0..self.users);
                let ts = self.next_ts.entry(user).or_insert(1_000);
                // Mostly in order, sometimes late (placed by time on both sides).
                let t = if self.rng.random_bool(0.1) && *ts > 10_000 {
                    *ts - self.rng.random_range(1..5_000) * 1_000 - 1
                } else {
                    *ts += 1_000 + self.rng.random_range(0..500);
                    *ts
                };
                Event {
                    user,
                    ts: t * 1_000 + (user % 1_000) as i64,
                    item: self.rng.random_range(0..self.items),
                    action: self.rng.random_range(0..3),
                    domain: 0,
                }
            })
            .collect()
    }
}

/// A single database fed every acknowledged write directly.
pub struct Reference {
    pub db: Db,
    _dir: tempfile::TempDir,
}

impl Reference {
    pub fn new() -> Reference {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path().join("ref"), db_options()).unwrap();
        Reference { db, _dir: dir }
    }

    pub fn items(&self, items: &[Item]) {
        self.db.upsert_items(items, Durability::Buffered).unwrap();
    }

    pub fn append(&self, events: &[Event]) {
        self.db
            .append(
                events,
                &AppendOptions {
                    durability: Durability::Buffered,
                    source: None,
                },
            )
            .unwrap();
    }

    pub fn delete(&self, users: &[u64]) {
        for u in users {
            self.db.delete_user(*u, Durability::Buffered).unwrap();
        }
    }
}

/// Every read the ranker makes for a user, as comparable values: the whole history, hard
/// retrieval for a few targets, soft retrieval for a few embeddings, each at a few `as_of`s.
pub fn fingerprint(snap: &Snapshot, user: u64, items: &[Item]) -> String {
    let mut out = format!("{:?}", snap.read(user, ReadRange::all()).unwrap());
    for (i, it) in items.iter().take(3).enumerate() {
        let as_of = [None, Some(50_000_000i64), Some(200_000_000)][i];
        let hard = snap
            .retrieve_hard(user, it.semid.as_ref().unwrap(), 10, as_of)
            .unwrap();
        let soft = snap
            .retrieve_soft(user, it.embedding.as_ref().unwrap(), 10, as_of)
            .unwrap();
        out.push_str(&format!("|{hard:?}|{soft:?}"));
    }
    out
}

/// Waits until `cond` holds, or panics with `what` after `timeout`.
pub async fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether every partition is served by `replicas` nodes of `nodes` that have applied the
/// stream up to `positions` (the last position each partition's stream was written at).
pub fn converged(
    nodes: &[&Node<JetStream>],
    partitions: u32,
    replicas: usize,
    positions: &BTreeMap<u32, u64>,
) -> bool {
    (0..partitions).all(|p| {
        let serving = nodes
            .iter()
            .filter(|n| {
                n.status().partitions.get(&p).is_some_and(|s| {
                    s.phase == Phase::Serving
                        && s.applied >= positions.get(&p).copied().unwrap_or(0)
                })
            })
            .count();
        serving == replicas
    })
}

/// Checks that every user of `users` reads the same on every node serving its partition as on
/// the reference, and that nodes hold no user of a partition they do not hold.
pub async fn assert_matches_reference(
    nodes: &[&Node<JetStream>],
    reference: &Reference,
    users: &BTreeSet<u64>,
    items: &[Item],
    partitions: u32,
) {
    let want = reference.db.snapshot();
    let mut checked = 0;
    for n in nodes {
        let status = n.status();
        let snap = n.db().snapshot();
        for u in snap.users() {
            let p = partition_of(u, partitions);
            assert!(
                status.partitions.contains_key(&p),
                "node {} holds user {u} of partition {p}, which it does not hold",
                n.id()
            );
        }
        for &u in users {
            let p = partition_of(u, partitions);
            if status.partitions.get(&p).map(|s| &s.phase) != Some(&Phase::Serving) {
                continue;
            }
            assert_eq!(
                fingerprint(&snap, u, items),
                fingerprint(&want, u, items),
                "node {} user {u} (partition {p})",
                n.id()
            );
            checked += 1;
        }
    }
    assert!(checked >= users.len(), "checked {checked} user copies");
}

/// Publishes `batches` of events through the producer with idempotency keys, feeding the
/// reference with each acknowledged batch; returns the highest position per partition.
pub async fn publish_all(
    producer: &Producer<JetStream>,
    reference: &Reference,
    batches: &[Vec<Event>],
    key_prefix: &str,
    positions: &mut BTreeMap<u32, u64>,
) {
    publish_paced(
        producer,
        reference,
        batches,
        key_prefix,
        Duration::ZERO,
        positions,
    )
    .await
}

/// [`publish_all`] with a pause after each batch.
pub async fn publish_paced(
    producer: &Producer<JetStream>,
    reference: &Reference,
    batches: &[Vec<Event>],
    key_prefix: &str,
    pause: Duration,
    positions: &mut BTreeMap<u32, u64>,
) {
    for (i, b) in batches.iter().enumerate() {
        let key = format!("{key_prefix}-{i}");
        let published = producer.append(b, Some(&key)).await.expect("published");
        reference.append(b);
        note_positions(&published, positions);
        tokio::time::sleep(pause).await;
    }
}

/// Publishes `batches` in the background, one every `pause`, feeding the reference with each
/// acknowledged one. Returns the positions written.
pub fn background_appends(
    producer: Producer<JetStream>,
    reference: std::sync::Arc<Reference>,
    batches: Vec<Vec<Event>>,
    pause: Duration,
    key: String,
) -> tokio::task::JoinHandle<BTreeMap<u32, u64>> {
    tokio::spawn(async move {
        let mut positions = BTreeMap::new();
        publish_paced(&producer, &reference, &batches, &key, pause, &mut positions).await;
        positions
    })
}

/// Raises each partition's position in `into` to the one in `from`.
pub fn merge_positions(into: &mut BTreeMap<u32, u64>, from: BTreeMap<u32, u64>) {
    for (p, pos) in from {
        let e = into.entry(p).or_default();
        *e = (*e).max(pos);
    }
}

pub fn note_positions(published: &siren_cluster::Published, positions: &mut BTreeMap<u32, u64>) {
    for (s, pos) in &published.positions {
        if let siren_cluster::log::StreamId::Partition(p) = s {
            let e = positions.entry(*p).or_default();
            *e = (*e).max(*pos);
        }
    }
}

/// What most cluster tests start from: servers, a created cluster, a producer, a reference
/// holding the catalog that was published.
pub struct Setup {
    pub js: LocalJetStream,
    pub config: ClusterConfig,
    pub backend: JetStream,
    pub producer: Producer<JetStream>,
    pub reference: std::sync::Arc<Reference>,
    pub items: Vec<Item>,
}

/// `None` (the test is skipped) when no server binary is installed.
pub async fn setup(
    dir: &Path,
    servers_n: usize,
    name: &str,
    partitions: u32,
    seed: u64,
) -> Option<Setup> {
    let js = servers(dir, servers_n)?;
    let config = cluster_config(name, partitions, servers_n as u32);
    let backend = create(&js, &config, "test-producer").await;
    let producer = Producer::new(backend.clone(), config.clone());
    let reference = std::sync::Arc::new(Reference::new());
    let items = catalog(60, &mut StdRng::seed_from_u64(seed));
    producer.upsert_items(&items, None).await.unwrap();
    reference.items(&items);
    Some(Setup {
        js,
        config,
        backend,
        producer,
        reference,
        items,
    })
}

/// Held by each multi-node test for its whole run: they start JetStream servers and several
/// nodes each, and run one at a time so that their failure detectors and timeouts are not
/// judged on a machine oversubscribed by their neighbours.
#[allow(dead_code)]
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
