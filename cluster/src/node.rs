//! A Siren node: one embedded database holding every partition the node is assigned, each
//! partition's users applied from its stream under the source `p/<partition>`, and the catalog
//! applied from the catalog stream under the source `catalog`.
//!
//! One database per node, not one per partition: the catalog (which every partition's reads
//! score against) is then stored and cached once per node rather than once per partition, and a
//! node with 170 partitions runs one RocksDB, one compactor and one decoded cache instead of
//! 170. What this costs: a partition is not a directory that can be copied, so moving one ships
//! a logical checkpoint (its users' sequences, [`crate::checkpoint`]) and dropping one deletes
//! its users one by one.
//!
//! Tasks of a node: a heartbeat, the catalog applier, one task per held partition
//! ([`crate::replica`]), the reconciler that starts and stops those as assignments change, and
//! the controller, which only the live node with the smallest id runs, and which moves
//! assignments one compare-and-swap at a time ([`crate::placement`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use siren_engine::{Db, Snapshot};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

use crate::apply::{apply, plan};
use crate::config::{check_name, ClusterConfig, DbShape};
use crate::directory::Directory;
use crate::error::{Error, Result};
use crate::log::{Backend, Bucket, LogReader, StreamId};
use crate::meta::{assignment_key, Assignment};
use crate::partition::partition_of;
use crate::placement::next_step;
use crate::runtime::{Counters, Inner, NodeConfig, NodeCounters, Phase, Slot};

/// A held partition as [`Node::status`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionStatus {
    pub phase: Phase,
    /// The stream position the database holds.
    pub applied: u64,
}

/// What a node holds.
#[derive(Debug, Clone)]
pub struct NodeStatus {
    pub node: String,
    pub partitions: BTreeMap<u32, PartitionStatus>,
    pub catalog_applied: u64,
    pub catalog_refused: Option<String>,
    pub counters: NodeCounters,
}

/// Which position a pin takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinAt {
    /// The position the replica has applied now.
    Current,
    /// Exactly this position: now if the replica is there, later if it is behind; refused if it
    /// is past it.
    Exactly(u64),
}

/// A running node.
pub struct Node<B: Backend> {
    inner: Arc<Inner<B>>,
    tasks: Vec<JoinHandle<()>>,
}

impl<B: Backend> Node<B> {
    /// Opens the node's database and starts its tasks. The cluster must exist.
    pub async fn start(cfg: NodeConfig, backend: B, cluster: ClusterConfig) -> Result<Node<B>> {
        check_name("node id", &cfg.node_id, 64)?;
        if cfg.max_joins == 0 {
            return Err(Error::invalid("max_joins must be at least 1"));
        }
        let tmp = cfg.data_dir.join("tmp");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        }
        std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let db = open_db(&cfg, &cluster)?;
        let dir = Directory::start(backend.clone(), cfg.dead_after).await?;
        let catalog_applied = db
            .source_position(&StreamId::Catalog.source_name())
            .unwrap_or(0);
        let inner = Arc::new(Inner {
            joins: Semaphore::new(cfg.max_joins),
            cfg,
            cluster,
            backend,
            db: Arc::new(db),
            dir,
            slots: Mutex::new(BTreeMap::new()),
            pins: Mutex::new(HashMap::new()),
            catalog_applied: watch::channel(catalog_applied).0,
            catalog_refused: Mutex::new(None),
            started_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            beats: AtomicU64::new(0),
            counters: Counters::default(),
            heartbeat_failed: Mutex::new(None),
            shutdown: watch::channel(false).0,
        });
        inner.heartbeat().await?;
        drop_orphans(&inner).await?;
        let tasks = vec![
            tokio::spawn(heartbeat_loop(inner.clone())),
            tokio::spawn(catalog_loop(inner.clone())),
            tokio::spawn(reconcile_loop(inner.clone())),
            tokio::spawn(controller_loop(inner.clone())),
        ];
        Ok(Node { inner, tasks })
    }

    pub fn id(&self) -> &str {
        &self.inner.cfg.node_id
    }

    pub fn db(&self) -> &Arc<Db> {
        &self.inner.db
    }

    pub fn directory(&self) -> &Directory {
        &self.inner.dir
    }

    pub fn cluster(&self) -> &ClusterConfig {
        &self.inner.cluster
    }

    pub fn status(&self) -> NodeStatus {
        let partitions = self
            .inner
            .slots
            .lock()
            .iter()
            .map(|(p, s)| {
                (
                    *p,
                    PartitionStatus {
                        phase: s.phase.lock().clone(),
                        applied: *s.applied.borrow(),
                    },
                )
            })
            .collect();
        NodeStatus {
            node: self.inner.cfg.node_id.clone(),
            partitions,
            catalog_applied: *self.inner.catalog_applied.borrow(),
            catalog_refused: self.inner.catalog_refused.lock().clone(),
            counters: self.inner.counters.get(),
        }
    }

    /// Waits until the catalog has applied at least `position`.
    pub async fn wait_catalog(&self, position: u64, wait: Duration) -> Result<()> {
        let mut rx = self.inner.catalog_applied.subscribe();
        wait_for_position(&mut rx, position, wait, "the catalog").await
    }

    /// A snapshot for reads of `partition`'s users. With `min_position`, waits up to `wait`
    /// for the replica to have applied it (read-your-writes), else
    /// [`Error::NotYetApplied`].
    pub async fn snapshot(
        &self,
        partition: u32,
        min_position: Option<u64>,
        wait: Duration,
    ) -> Result<Snapshot> {
        let slot = self.inner.serving_slot(partition)?;
        if let Some(need) = min_position {
            let mut rx = slot.applied.subscribe();
            if tokio::time::timeout(wait, rx.wait_for(|a| *a >= need))
                .await
                .is_err()
            {
                return Err(Error::NotYetApplied {
                    partition,
                    needed: need,
                    applied: *slot.applied.borrow(),
                });
            }
        }
        Ok(self.inner.db.snapshot())
    }

    /// [`Node::snapshot`] for the partition of `user`.
    pub async fn snapshot_for_user(
        &self,
        user: u64,
        min_position: Option<u64>,
        wait: Duration,
    ) -> Result<Snapshot> {
        let p = partition_of(user, self.inner.cluster.partitions);
        self.snapshot(p, min_position, wait).await
    }

    /// Pins `partition` for `job`: keeps a snapshot that holds exactly the stream's messages up
    /// to the returned position, for reproducible reads across shards. Held until
    /// [`Node::unpin`] (or a restart).
    pub async fn pin(&self, job: &str, partition: u32, at: PinAt, wait: Duration) -> Result<u64> {
        let inner = &self.inner;
        let slot = inner.serving_slot(partition)?;
        let unavailable = |reason: String| Error::PinUnavailable {
            job: job.to_string(),
            partition,
            reason,
        };
        let key = (job.to_string(), partition);
        // Under the partition's gate the applier is between two writes: the position and the
        // snapshot belong together, and a wanted position is registered before it can pass.
        let (db, gate_slot, name) = (inner.db.clone(), slot.clone(), job.to_string());
        let source = StreamId::Partition(partition).source_name();
        let now = tokio::task::spawn_blocking(move || {
            let _gate = gate_slot.gate.lock();
            let position = db.source_position(&source).unwrap_or(0);
            match at {
                PinAt::Current => Ok(Some((db.snapshot(), position))),
                PinAt::Exactly(p) if p == position => Ok(Some((db.snapshot(), position))),
                PinAt::Exactly(p) if p < position => Err(position),
                PinAt::Exactly(p) => {
                    gate_slot
                        .wanted_pins
                        .lock()
                        .entry(p)
                        .or_default()
                        .push(name);
                    Ok(None)
                }
            }
        })
        .await
        .map_err(|e| unavailable(e.to_string()))?;
        let target = match (now, at) {
            (Ok(Some((snap, position))), _) => {
                inner.pins.lock().insert(key, (snap, position));
                return Ok(position);
            }
            (Err(applied), PinAt::Exactly(p)) => {
                return Err(unavailable(format!(
                    "this replica has applied {applied}, past the pinned {p}"
                )))
            }
            (_, PinAt::Exactly(p)) => p,
            (_, PinAt::Current) => unreachable!("a current pin is taken at once"),
        };
        let waiting = |slot: &Slot| {
            slot.wanted_pins
                .lock()
                .get(&target)
                .is_some_and(|jobs| jobs.iter().any(|j| j == job))
        };
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = slot.pinned.notified();
            if let Some((_, pos)) = inner.pins.lock().get(&key) {
                return Ok(*pos);
            }
            if !waiting(&slot) {
                // The applier went past the position within one batch.
                return Err(unavailable(format!(
                    "this replica applied past {target} before the pin could be taken"
                )));
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                slot.wanted_pins.lock().retain(|_, jobs| {
                    jobs.retain(|j| j != job);
                    !jobs.is_empty()
                });
                return Err(unavailable(format!(
                    "position {target} not reached within {:.1} s (applied {})",
                    wait.as_secs_f64(),
                    *slot.applied.borrow()
                )));
            }
        }
    }

    /// The snapshot pinned for `job` on `partition`, and its position.
    pub fn pinned(&self, job: &str, partition: u32) -> Result<(Snapshot, u64)> {
        self.inner
            .pins
            .lock()
            .get(&(job.to_string(), partition))
            .cloned()
            .ok_or_else(|| Error::PinUnavailable {
                job: job.to_string(),
                partition,
                reason: "not pinned on this node".into(),
            })
    }

    /// Releases every pin of `job`.
    pub fn unpin(&self, job: &str) {
        self.inner.pins.lock().retain(|(j, _), _| j != job);
    }

    /// Stops the node: its tasks end, the database is closed. With `leave`, the heartbeat
    /// record is deleted so the others re-place its partitions at once; without, they wait
    /// for `dead_after` (a restart within it moves nothing).
    pub async fn shutdown(mut self, leave: bool) -> Result<()> {
        let inner = self.inner.clone();
        inner.shutdown.send_replace(true);
        for slot in inner.slots.lock().values() {
            slot.stop.send_replace(true);
        }
        for t in self.tasks.drain(..) {
            t.abort();
            let _ = t.await;
        }
        // Partition tasks end at their next await, blocking writes when they finish: wait for
        // all of them to let go, so that the database is closed when this returns.
        let deadline = Instant::now() + Duration::from_secs(30);
        while (Arc::strong_count(&inner) > 2 || Arc::strong_count(&inner.db) > 1)
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if leave {
            inner
                .backend
                .delete(Bucket::Nodes, &inner.cfg.node_id)
                .await?;
        }
        inner.db.flush()?;
        Ok(())
    }
}

impl<B: Backend> Drop for Node<B> {
    fn drop(&mut self) {
        self.inner.shutdown.send_replace(true);
        for slot in self.inner.slots.lock().values() {
            slot.stop.send_replace(true);
        }
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn open_db(cfg: &NodeConfig, cluster: &ClusterConfig) -> Result<Db> {
    let opts = cluster.db.apply(cfg.db_options.clone());
    let path = cfg.data_dir.join("db");
    if path.exists() {
        let created = Db::created_with(&path)?;
        let stored = DbShape::of(&created.apply(opts.clone()));
        cluster.db.check(&cluster.name, &stored)?;
    }
    Ok(Db::open(&path, opts)?)
}

async fn wait_for_position(
    rx: &mut watch::Receiver<u64>,
    position: u64,
    wait: Duration,
    what: &str,
) -> Result<()> {
    match tokio::time::timeout(wait, rx.wait_for(|a| *a >= position)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(_)) => Err(Error::Shutdown),
        Err(_) => Err(Error::timeout(format!("{what} to reach {position}"), wait)),
    }
}

async fn heartbeat_loop<B: Backend>(inner: Arc<Inner<B>>) {
    let mut tick = tokio::time::interval(inner.cfg.heartbeat);
    loop {
        tick.tick().await;
        if let Err(e) = inner.heartbeat().await {
            tracing::warn!("node {}: heartbeat failed: {e}", inner.cfg.node_id);
        }
    }
}

/// Partitions this node holds data of, from its positions and its users.
fn held_partitions(db: &Db, partitions: u32) -> BTreeSet<u32> {
    let mut held: BTreeSet<u32> = db
        .sources()
        .iter()
        .filter_map(|(name, _)| StreamId::partition_of_source(name))
        .collect();
    held.extend(
        db.snapshot()
            .users()
            .into_iter()
            .map(|u| partition_of(u, partitions)),
    );
    held
}

/// At start: data of partitions no longer assigned here (moved away while the node was down,
/// or left by a drop or an import that a crash interrupted) is deleted.
async fn drop_orphans<B: Backend>(inner: &Arc<Inner<B>>) -> Result<()> {
    let me = &inner.cfg.node_id;
    let held = held_partitions(&inner.db, inner.cluster.partitions);
    for p in held {
        let mine = inner
            .dir
            .assignment(p)
            .is_some_and(|(a, _)| a.replica(me).is_some());
        if !mine {
            let db = inner.db.clone();
            let partitions = inner.cluster.partitions;
            tokio::task::spawn_blocking(move || {
                crate::checkpoint::drop_partition(&db, p, partitions)
            })
            .await
            .map_err(|e| Error::invalid(e.to_string()))??;
        }
    }
    Ok(())
}

/// Starts a task for every partition assigned here and stops the tasks of partitions that are
/// not any more.
async fn reconcile_loop<B: Backend>(inner: Arc<Inner<B>>) {
    let mut changes = inner.dir.subscribe();
    loop {
        reconcile(&inner);
        tokio::select! {
            _ = changes.changed() => {}
            _ = tokio::time::sleep(inner.cfg.heartbeat) => {}
        }
    }
}

fn reconcile<B: Backend>(inner: &Arc<Inner<B>>) {
    let me = inner.cfg.node_id.as_str();
    let assigned: BTreeSet<u32> = inner
        .dir
        .assignments()
        .into_iter()
        .filter(|(_, (a, _))| a.replica(me).is_some())
        .map(|(p, _)| p)
        .collect();
    let mut slots = inner.slots.lock();
    for (p, slot) in slots.iter() {
        if !assigned.contains(p) {
            slot.stop.send_replace(true);
        }
    }
    for p in assigned {
        if slots.contains_key(&p) {
            continue;
        }
        let applied = inner
            .db
            .source_position(&StreamId::Partition(p).source_name())
            .unwrap_or(0);
        let slot = Arc::new(Slot::new(p, applied));
        slots.insert(p, slot.clone());
        tokio::spawn(crate::replica::run(inner.clone(), slot));
    }
}

/// Applies the catalog stream, forever.
async fn catalog_loop<B: Backend>(inner: Arc<Inner<B>>) {
    loop {
        let err = match apply_catalog(&inner).await {
            Ok(()) => return,
            Err(e) => e,
        };
        tracing::error!("node {}: catalog: {err}", inner.cfg.node_id);
        if !err.is_retryable() {
            *inner.catalog_refused.lock() = Some(err.to_string());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn apply_catalog<B: Backend>(inner: &Arc<Inner<B>>) -> Result<()> {
    let stream = StreamId::Catalog;
    let mut applied = *inner.catalog_applied.borrow();
    let bounds = inner.backend.bounds(stream).await?;
    if applied + 1 < bounds.first {
        return Err(Error::corrupt(
            "catalog stream",
            format!(
                "this node applied up to {applied}, the stream starts at {}: items are missing",
                bounds.first
            ),
        ));
    }
    let mut reader = inner.backend.read_from(stream, applied + 1).await?;
    loop {
        let mut entries = vec![reader.next().await?];
        while entries.len() < 1024 {
            match reader.try_next() {
                Some(e) => entries.push(e?),
                None => break,
            }
        }
        let ops = plan(
            stream,
            inner.cluster.partitions,
            applied,
            &entries,
            usize::MAX,
        )?;
        let (db, durability) = (inner.db.clone(), inner.cfg.durability);
        applied = tokio::task::spawn_blocking(move || {
            ops.iter()
                .try_fold(applied, |_, op| apply(&db, stream, op, durability))
        })
        .await
        .map_err(|e| Error::invalid(e.to_string()))??;
        inner.catalog_applied.send_replace(applied);
        *inner.catalog_refused.lock() = None;
    }
}

/// Places partitions: run by the live node with the smallest id, once it has watched liveness
/// long enough and its own heartbeats have gone through for a while.
async fn controller_loop<B: Backend>(inner: Arc<Inner<B>>) {
    if !inner.cfg.controller {
        return;
    }
    let mut changes = inner.dir.subscribe();
    loop {
        tokio::select! {
            _ = changes.changed() => {}
            _ = tokio::time::sleep(inner.cfg.heartbeat) => {}
        }
        if let Err(e) = control_once(&inner).await {
            tracing::warn!("node {}: controller: {e}", inner.cfg.node_id);
        }
    }
}

/// Reads partition `p`'s assignment from the store into the directory.
async fn refresh_assignment<B: Backend>(inner: &Inner<B>, p: u32) -> Result<()> {
    let key = assignment_key(p);
    if let Some(v) = inner.backend.get(Bucket::Meta, &key).await? {
        inner
            .dir
            .note_assignment(Assignment::decode(&v.value, &key)?, v.revision);
    }
    Ok(())
}

async fn control_once<B: Backend>(inner: &Arc<Inner<B>>) -> Result<()> {
    let dir = &inner.dir;
    // Routers hold nothing: they neither get partitions nor run the controller.
    let live = dir.live_holders();
    let me = &inner.cfg.node_id;
    let steady = inner
        .heartbeat_failed
        .lock()
        .is_none_or(|t| t.elapsed() > dir.dead_after());
    if !dir.settled() || !steady || live.iter().next() != Some(me) {
        return Ok(());
    }
    let replicas = inner.cluster.replicas as usize;
    for p in 0..inner.cluster.partitions {
        let current = dir.assignment(p);
        let Some(next) = next_step(p, current.as_ref().map(|(a, _)| a), &live, replicas) else {
            continue;
        };
        let key = assignment_key(p);
        let written = match &current {
            None => {
                inner
                    .backend
                    .create(Bucket::Meta, &key, next.encode())
                    .await
            }
            Some((_, rev)) => {
                inner
                    .backend
                    .update(Bucket::Meta, &key, next.encode(), *rev)
                    .await
            }
        };
        match written {
            Ok(rev) => {
                tracing::info!("partition {p}: {:?}", next.replicas);
                dir.note_assignment(next, rev);
            }
            // Someone else changed it: the next round decides on the new value, read here
            // rather than left to the watch, which may be the one that fell behind.
            Err(Error::Conflict { .. }) => refresh_assignment(inner, p).await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
