//! Cluster throughput on this machine: ingest (published and acknowledged by a 3-server
//! JetStream cluster, then applied by every replica) and routed reads, with 1, 2 and 3 Siren
//! nodes, against a single embedded database fed the same batches in the same run. Also the
//! publish rate with JetStream's default fsync interval, to show what `sync_interval: always`
//! costs.
//!
//! ```sh
//! cargo bench -p siren-cluster --bench throughput             # 200,000 events
//! SIREN_BENCH_EVENTS=1000000 cargo bench -p siren-cluster --bench throughput
//! ```
//!
//! All servers and nodes share this machine's cores, so more nodes add replicas and failover,
//! not CPU: the figures are per-machine costs, which `docs/CLUSTER.md` uses for its projection.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::try_join_all;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use siren_cluster::apply::{apply, plan, Op};
use siren_cluster::checkpoint::{import_checkpoint, write_checkpoint, CheckpointHeader};
use siren_cluster::jetstream::{Connect, JetStream};
use siren_cluster::local::{LocalJetStream, LocalOptions};
use siren_cluster::log::{Log, LogReader, StreamId};
use siren_cluster::{
    partition_of, CatchUp, ClusterConfig, DbShape, Node, NodeConfig, Phase, Producer,
};
use siren_engine::{AppendOptions, Db, Durability, Event, Item, Options, SemId};

const PARTITIONS: u32 = 12;
const USERS: u64 = 5_000;
const BATCH: usize = 500;
const PUBLISHERS: usize = 4;
const ITEMS: u64 = 20_000;

fn options() -> Options {
    Options {
        embedding_dim: 0,
        ..Options::default()
    }
}

fn batches(total: usize) -> Vec<Vec<Event>> {
    let mut rng = StdRng::seed_from_u64(9);
    let mut ts = vec![1_700_000_000_000i64; USERS as usize];
    (0..total / BATCH)
        .map(|_| {
            (0..BATCH)
                .map(|_| {
                    let user = rng.random_range(0..USERS);
                    ts[user as usize] += rng.random_range(1..60_000);
                    Event {
                        user,
                        ts: ts[user as usize],
                        item: rng.random_range(0..ITEMS),
                        action: rng.random_range(0..4),
                        domain: 0,
                    }
                })
                .collect()
        })
        .collect()
}

/// The single-node path: each batch one fsynced append. Run right before each cluster row,
/// because fsync times on a shared machine drift.
fn baseline(batches: &[Vec<Event>]) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path().join("db"), options()).unwrap();
    let start = Instant::now();
    for b in batches {
        db.append(b, &AppendOptions::default()).unwrap();
    }
    events(batches) as f64 / start.elapsed().as_secs_f64()
}

/// What a node does when it catches up by replay, alone: read every partition's stream from
/// its start and apply it to a fresh database (buffered writes, the node's default).
async fn replay_rate(backend: &JetStream, last: &BTreeMap<u32, u64>) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path().join("db"), options()).unwrap();
    let start = Instant::now();
    let mut applied_events = 0usize;
    for (&p, &end) in last {
        let stream = StreamId::Partition(p);
        let mut reader = backend.read_from(stream, 1).await.unwrap();
        let mut applied = 0;
        while applied < end {
            let mut entries = vec![reader.next().await.unwrap()];
            while let Some(e) = reader.try_next() {
                entries.push(e.unwrap());
                if entries.len() == 4096 {
                    break;
                }
            }
            let ops = plan(stream, PARTITIONS, applied, &entries, 1_000_000).unwrap();
            for op in &ops {
                if let Op::Append { events, .. } = op {
                    applied_events += events.len();
                }
                applied = apply(&db, stream, op, Durability::Buffered).unwrap();
            }
        }
    }
    applied_events as f64 / start.elapsed().as_secs_f64()
}

/// Writing and importing checkpoints of every partition of `db`: events/s each way, and the
/// checkpoint's bytes per event.
fn checkpoint_rates(db: &Db, name: &str, last: &BTreeMap<u32, u64>) -> (f64, f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let into = Db::open(dir.path().join("db"), options()).unwrap();
    let snap = db.snapshot();
    let (mut write_s, mut import_s, mut bytes, mut n) = (0.0, 0.0, 0u64, 0u64);
    for (&p, &position) in last {
        let header = CheckpointHeader {
            cluster: name.to_string(),
            partition: p,
            partitions: PARTITIONS,
            position,
        };
        let path = dir.path().join(format!("p{p}"));
        let start = Instant::now();
        let summary = write_checkpoint(&snap, &header, &path).unwrap();
        write_s += start.elapsed().as_secs_f64();
        bytes += std::fs::metadata(&path).unwrap().len();
        n += summary.events;
        let start = Instant::now();
        import_checkpoint(&into, &path, &header, Durability::Buffered, &|| false).unwrap();
        import_s += start.elapsed().as_secs_f64();
    }
    (
        n as f64 / write_s,
        n as f64 / import_s,
        bytes as f64 / n as f64,
    )
}

/// Items with 3-level SemIDs, so that hard retrieval has prefixes to match.
fn catalog() -> Vec<Item> {
    let mut rng = StdRng::seed_from_u64(10);
    (0..ITEMS)
        .map(|id| Item {
            id,
            category: 0,
            semid: Some(
                SemId::new(&[
                    rng.random_range(0..4),
                    rng.random_range(0..16),
                    rng.random_range(0..256),
                ])
                .unwrap(),
            ),
            embedding: None,
        })
        .collect()
}

fn events(batches: &[Vec<Event>]) -> usize {
    batches.iter().map(Vec::len).sum()
}

/// Publishes every batch with `PUBLISHERS` concurrent callers; returns events/s acknowledged and
/// the last position per partition.
async fn publish(
    producer: &Producer<JetStream>,
    batches: &[Vec<Event>],
) -> (f64, BTreeMap<u32, u64>) {
    let start = Instant::now();
    let shares = (0..PUBLISHERS).map(|w| {
        let producer = producer.clone();
        let mine: Vec<(usize, Vec<Event>)> = batches
            .iter()
            .cloned()
            .enumerate()
            .filter(|(i, _)| i % PUBLISHERS == w)
            .collect();
        async move {
            let mut last = BTreeMap::new();
            for (i, b) in mine {
                let done = producer.append(&b, Some(&format!("b{i}"))).await?;
                for (s, pos) in done.positions {
                    if let StreamId::Partition(p) = s {
                        let e = last.entry(p).or_insert(0u64);
                        *e = (*e).max(pos);
                    }
                }
            }
            Ok::<_, siren_cluster::Error>(last)
        }
    });
    let parts = try_join_all(shares).await.unwrap();
    let rate = events(batches) as f64 / start.elapsed().as_secs_f64();
    let mut last = BTreeMap::new();
    for part in parts {
        for (p, pos) in part {
            let e = last.entry(p).or_insert(0);
            *e = pos.max(*e);
        }
    }
    (rate, last)
}

fn config(name: &str, replicas: u32) -> ClusterConfig {
    let mut c = ClusterConfig::new(name, DbShape::of(&options()));
    c.partitions = PARTITIONS;
    c.replicas = replicas;
    c
}

async fn wait_for(mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < Duration::from_secs(600), "timed out");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn serving_everything(nodes: &[Node<JetStream>], replicas: usize, at: &BTreeMap<u32, u64>) -> bool {
    (0..PARTITIONS).all(|p| {
        nodes
            .iter()
            .filter(|n| {
                n.status().partitions.get(&p).is_some_and(|s| {
                    s.phase == Phase::Serving && s.applied >= at.get(&p).copied().unwrap_or(0)
                })
            })
            .count()
            == replicas
    })
}

/// Reads for `secs` from `readers` tasks, each routing a user's read to a serving replica:
/// the user's last 100 events and a hard retrieval of 50.
async fn routed_reads(nodes: Arc<Vec<Node<JetStream>>>, secs: f64, readers: usize) -> f64 {
    let target = SemId::new(&[1, 2, 3]).unwrap();
    // Reads see the catalog the nodes applied from the catalog stream.
    let tasks = (0..readers).map(|r| {
        let nodes = nodes.clone();
        tokio::spawn(async move {
            let mut n = 0u64;
            let mut user = r as u64;
            let start = Instant::now();
            while start.elapsed().as_secs_f64() < secs {
                user = (user + 7919) % USERS;
                let p = partition_of(user, PARTITIONS);
                // A replica that does not serve the partition answers at once; try the next.
                let mut snap = None;
                for k in 0..nodes.len() {
                    let node = &nodes[(user as usize + k) % nodes.len()];
                    if let Ok(s) = node.snapshot(p, None, Duration::ZERO).await {
                        snap = Some(s);
                        break;
                    }
                }
                let snap = snap.expect("a serving replica");
                let recent = snap
                    .read(
                        user,
                        siren_engine::ReadRange {
                            last: Some(100),
                            ..Default::default()
                        },
                    )
                    .unwrap();
                let hits = snap.retrieve_hard(user, &target, 50, None).unwrap();
                std::hint::black_box((recent, hits));
                n += 1;
            }
            n
        })
    });
    let total: u64 = try_join_all(tasks).await.unwrap().into_iter().sum();
    total as f64 / secs
}

fn main() {
    let total: usize = std::env::var("SIREN_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(total));
}

async fn run(total: usize) {
    let dir = tempfile::tempdir().unwrap();
    let batches = batches(total);
    println!("workload: {} events in batches of {BATCH}, {USERS} users, {PARTITIONS} partitions, {PUBLISHERS} concurrent publishers", events(&batches));
    println!("baseline (measured before each row): one embedded database, one fsynced append per batch\n");

    let synced =
        LocalJetStream::start(&dir.path().join("sync"), 3, LocalOptions::default()).unwrap();
    let connect = |name: &str| Connect::new(synced.urls(), name);
    println!("| nodes | Siren replicas | baseline events/s | published (acknowledged) events/s | applied by every replica, events/s | applied x baseline | routed reads/s (last 100 + hard top-50) |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    let mut single = None;
    for n in 1..=3usize {
        let replicas = n.min(2);
        let cfg = config(&format!("bench{n}"), replicas as u32);
        let backend = JetStream::create(&connect("bench"), &cfg).await.unwrap();
        let producer = Producer::new(backend, cfg.clone());
        producer.upsert_items(&catalog(), None).await.unwrap();
        let mut nodes = Vec::new();
        for i in 0..n {
            let id = format!("n{i}");
            let mut nc = NodeConfig::new(&id, dir.path().join(format!("b{n}-{id}")));
            nc.db_options = options();
            nc.heartbeat = Duration::from_millis(200);
            nc.dead_after = Duration::from_millis(1000);
            nc.catch_up = CatchUp::Replay;
            let b = JetStream::open(&connect(&id), &cfg.name).await.unwrap().0;
            nodes.push(Node::start(nc, b, cfg.clone()).await.unwrap());
        }
        wait_for(|| serving_everything(&nodes, replicas, &BTreeMap::new())).await;
        wait_for(|| nodes.iter().all(|n| n.status().catalog_applied >= 1)).await;
        let base = baseline(&batches);
        let start = Instant::now();
        let (acked, last) = publish(&producer, &batches).await;
        wait_for(|| serving_everything(&nodes, replicas, &last)).await;
        let applied = events(&batches) as f64 / start.elapsed().as_secs_f64();
        if n == 1 {
            let backend = JetStream::open(&connect("replay"), &cfg.name)
                .await
                .unwrap()
                .0;
            single = Some((
                base,
                replay_rate(&backend, &last).await,
                checkpoint_rates(nodes[0].db(), &cfg.name, &last),
            ));
        }
        let nodes = Arc::new(nodes);
        let reads = routed_reads(nodes.clone(), 3.0, 4).await;
        println!(
            "| {n} | {replicas} | {base:.0} | {acked:.0} | {applied:.0} | {:.2} | {reads:.0} |",
            applied / base
        );
        for node in Arc::try_unwrap(nodes).ok().unwrap() {
            node.shutdown(true).await.unwrap();
        }
    }

    let (base, replay, (ck_write, ck_import, ck_bytes)) = single.unwrap();
    println!("\ncatching up, one node, every partition: replay from the log {replay:.0} events/s ({:.2}x the first row's baseline); checkpoint written {ck_write:.0} events/s, imported {ck_import:.0} events/s, {ck_bytes:.2} bytes/event", replay / base);

    // What fsync before every acknowledgement costs: the same publishes, no nodes, on servers
    // with JetStream's default two-minute sync interval, against the synced servers.
    let cfg = config("publish", 2);
    let on_synced = Producer::new(
        JetStream::create(&connect("p"), &cfg).await.unwrap(),
        cfg.clone(),
    );
    let (rate_synced, _) = publish(&on_synced, &batches).await;
    let lazy = LocalJetStream::start(
        &dir.path().join("lazy"),
        3,
        LocalOptions {
            sync_always: false,
            ..LocalOptions::default()
        },
    )
    .unwrap();
    let on_lazy = Producer::new(
        JetStream::create(&Connect::new(lazy.urls(), "p"), &cfg)
            .await
            .unwrap(),
        cfg.clone(),
    );
    let (rate_lazy, _) = publish(&on_lazy, &batches).await;
    println!(
        "\npublish only: sync_interval always {rate_synced:.0} events/s, default interval {rate_lazy:.0} events/s ({:.2}x)",
        rate_synced / rate_lazy
    );
}
