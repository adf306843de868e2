//! The state a node's tasks share: its settings, its held partitions and the handles every
//! task uses (the database, the directory, the backend), with the operations several tasks
//! need (the heartbeat, a compare-and-swap of an assignment).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use siren_engine::{Db, Durability, Options, Snapshot};
use tokio::sync::{watch, Notify, Semaphore};

use crate::config::ClusterConfig;
use crate::directory::Directory;
use crate::error::{Error, Result};
use crate::log::{Backend, Bucket};
use crate::meta::{assignment_key, Assignment, NodeInfo};

/// How a joining replica prefers to catch up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatchUp {
    /// From a checkpoint shipped by a ready replica, when one is live; else by replay.
    Checkpoint,
    /// By replaying the stream from its start, when the stream still holds it; else from a
    /// checkpoint.
    Replay,
}

/// A node's settings.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Unique in the cluster, `[A-Za-z0-9_-]`, at most 64 characters. Keep it across restarts:
    /// it names the node's assignments.
    pub node_id: String,
    /// Where the node serves requests, published for the router (may be empty).
    pub address: String,
    /// The database lives in `<data_dir>/db`; checkpoints in transit in `<data_dir>/tmp`.
    pub data_dir: PathBuf,
    /// Database options; the cluster's [`DbShape`] overrides the fields it fixes.
    pub db_options: Options,
    pub heartbeat: Duration,
    /// Another node is dead once its heartbeat has not changed for this long.
    pub dead_after: Duration,
    /// Durability of applied writes. The log holds every acknowledged write and the position is
    /// stored with the data, so `Buffered` loses nothing that cannot be applied again.
    pub durability: Durability,
    pub catch_up: CatchUp,
    /// Partitions caught up at once (checkpoints and replays are heavy).
    pub max_joins: usize,
    /// Take part in placement decisions.
    pub controller: bool,
    /// Be given partitions. A node without (a router) applies only the catalog and answers
    /// `NotServing` for every partition, so its reads are forwarded.
    pub holds_partitions: bool,
}

impl NodeConfig {
    pub fn new(node_id: &str, data_dir: impl Into<PathBuf>) -> NodeConfig {
        NodeConfig {
            node_id: node_id.to_string(),
            address: String::new(),
            data_dir: data_dir.into(),
            db_options: Options::default(),
            heartbeat: Duration::from_secs(1),
            dead_after: Duration::from_secs(10),
            durability: Durability::Buffered,
            catch_up: CatchUp::Checkpoint,
            max_joins: 4,
            controller: true,
            holds_partitions: true,
        }
    }
}

/// Where a held partition is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Catching up; the text says how.
    Joining(String),
    /// Serves reads.
    Serving,
    /// Applying it would skip or misread messages; the text is the error.
    Refused(String),
}

/// How partitions came and went since the node started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeCounters {
    /// Partitions caught up by replaying their stream from the start.
    pub replays: u64,
    /// Checkpoints imported (partitions caught up from another replica's copy).
    pub checkpoints_imported: u64,
    /// Checkpoints written for joining replicas.
    pub checkpoints_shipped: u64,
    /// Partitions whose data was deleted because they moved away.
    pub partitions_dropped: u64,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub replays: AtomicU64,
    pub checkpoints_imported: AtomicU64,
    pub checkpoints_shipped: AtomicU64,
    pub partitions_dropped: AtomicU64,
}

impl Counters {
    pub fn get(&self) -> NodeCounters {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        NodeCounters {
            replays: load(&self.replays),
            checkpoints_imported: load(&self.checkpoints_imported),
            checkpoints_shipped: load(&self.checkpoints_shipped),
            partitions_dropped: load(&self.partitions_dropped),
        }
    }
}

/// One held partition, shared by its task, the reconciler, the heartbeat and readers.
pub(crate) struct Slot {
    pub partition: u32,
    pub phase: Mutex<Phase>,
    pub applied: watch::Sender<u64>,
    /// Held while a write of this partition is applied, so a checkpoint or a pin reads a
    /// snapshot and a position that belong together.
    pub gate: Mutex<()>,
    pub stop: watch::Sender<bool>,
    pub exporting: AtomicBool,
    /// Positions at which pins wait, and the jobs waiting at each.
    pub wanted_pins: Mutex<BTreeMap<u64, Vec<String>>>,
    pub pinned: Notify,
}

impl Slot {
    pub fn new(partition: u32, applied: u64) -> Slot {
        Slot {
            partition,
            phase: Mutex::new(Phase::Joining("starting".into())),
            applied: watch::channel(applied).0,
            gate: Mutex::new(()),
            stop: watch::channel(false).0,
            exporting: AtomicBool::new(false),
            wanted_pins: Mutex::new(BTreeMap::new()),
            pinned: Notify::new(),
        }
    }

    pub fn set_phase(&self, phase: Phase) {
        *self.phase.lock() = phase;
    }
}

pub(crate) struct Inner<B: Backend> {
    pub cfg: NodeConfig,
    pub cluster: ClusterConfig,
    pub backend: B,
    pub db: Arc<Db>,
    pub dir: Directory,
    pub slots: Mutex<BTreeMap<u32, Arc<Slot>>>,
    pub joins: Semaphore,
    pub pins: Mutex<HashMap<(String, u32), (Snapshot, u64)>>,
    pub catalog_applied: watch::Sender<u64>,
    pub catalog_refused: Mutex<Option<String>>,
    pub started_ms: u64,
    pub beats: AtomicU64,
    pub counters: Counters,
    /// When a heartbeat last failed (the controller waits for a clean stretch).
    pub heartbeat_failed: Mutex<Option<Instant>>,
    pub shutdown: watch::Sender<bool>,
}

impl<B: Backend> Inner<B> {
    pub fn serving_slot(&self, partition: u32) -> Result<Arc<Slot>> {
        let not = |reason: String| Error::NotServing {
            node: self.cfg.node_id.clone(),
            partition,
            reason,
        };
        let slot = self
            .slots
            .lock()
            .get(&partition)
            .cloned()
            .ok_or_else(|| not("not a replica".into()))?;
        let phase = slot.phase.lock().clone();
        match phase {
            Phase::Serving => Ok(slot),
            Phase::Joining(how) => Err(not(format!("joining: {how}"))),
            Phase::Refused(why) => Err(not(format!("refused: {why}"))),
        }
    }

    pub fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    pub async fn heartbeat(&self) -> Result<()> {
        let mut serving = BTreeMap::new();
        let mut refused = BTreeMap::new();
        for (p, s) in self.slots.lock().iter() {
            match &*s.phase.lock() {
                Phase::Serving => {
                    serving.insert(*p, *s.applied.borrow());
                }
                Phase::Refused(why) => {
                    refused.insert(*p, why.clone());
                }
                Phase::Joining(_) => {}
            }
        }
        let info = NodeInfo {
            node: self.cfg.node_id.clone(),
            address: self.cfg.address.clone(),
            started_ms: self.started_ms,
            beat: self.beats.fetch_add(1, Ordering::Relaxed),
            serving,
            holds_partitions: self.cfg.holds_partitions,
            refused,
        };
        let result = self
            .backend
            .put(Bucket::Nodes, &self.cfg.node_id, info.encode())
            .await;
        if result.is_err() {
            *self.heartbeat_failed.lock() = Some(Instant::now());
        }
        result.map(drop)
    }

    /// Changes this partition's assignment by compare-and-swap, retrying on conflicts with a
    /// fresh read. `change` returns `false` when no change is needed any more.
    pub async fn update_assignment(
        &self,
        partition: u32,
        mut change: impl FnMut(&mut Assignment) -> bool,
    ) -> Result<bool> {
        let key = assignment_key(partition);
        for _ in 0..20 {
            let Some(v) = self.backend.get(Bucket::Meta, &key).await? else {
                return Ok(false);
            };
            let mut a = Assignment::decode(&v.value, &key)?;
            if !change(&mut a) {
                return Ok(false);
            }
            a.epoch += 1;
            match self
                .backend
                .update(Bucket::Meta, &key, a.encode(), v.revision)
                .await
            {
                Ok(rev) => {
                    self.dir.note_assignment(a, rev);
                    return Ok(true);
                }
                Err(Error::Conflict { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(Error::Conflict { key })
    }
}
