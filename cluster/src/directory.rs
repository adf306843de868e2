//! The cluster as one process sees it: every partition's assignment and which nodes are live,
//! kept current by watching the metadata store. Nodes, the router and Rust clients share it.
//!
//! Liveness is judged on this process's own clock, not on times written by others: a node is
//! live while its heartbeat record keeps changing, and dead once it has not changed for
//! `dead_after` (or was deleted by a clean shutdown). So nodes need no synchronised clocks.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::Result;
use crate::log::{Bucket, MetaChange, MetaStore, MetaWatch};
use crate::meta::{partition_of_key, Assignment, NodeInfo, ReplicaState};

/// A node's last heartbeat as seen here.
#[derive(Debug, Clone)]
pub struct SeenNode {
    pub info: NodeInfo,
    pub revision: u64,
    /// When this process saw the record change.
    pub changed_at: Instant,
}

#[derive(Default)]
struct State {
    assignments: BTreeMap<u32, (Assignment, u64)>,
    nodes: HashMap<String, SeenNode>,
    /// The last records that could not be decoded, for the status page.
    problems: Vec<String>,
}

/// How many undecodable records [`Directory::problems`] remembers.
const MAX_PROBLEMS: usize = 32;

impl State {
    fn problem(&mut self, e: crate::Error) {
        if self.problems.len() == MAX_PROBLEMS {
            self.problems.remove(0);
        }
        self.problems.push(e.to_string());
    }
}

/// A live view of assignments and liveness.
#[derive(Clone)]
pub struct Directory {
    state: Arc<RwLock<State>>,
    changed: watch::Sender<u64>,
    dead_after: Duration,
    started: Instant,
    /// The watch tasks; they stop when the last clone is dropped.
    _tasks: Arc<WatchTasks>,
}

struct WatchTasks(Vec<JoinHandle<()>>);

impl Drop for WatchTasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

impl Directory {
    /// Loads every assignment and heartbeat, then follows both buckets until the last clone is
    /// dropped.
    pub async fn start<M: MetaStore>(meta: M, dead_after: Duration) -> Result<Directory> {
        let state = Arc::new(RwLock::new(State::default()));
        for bucket in [Bucket::Meta, Bucket::Nodes] {
            for key in meta.keys(bucket).await? {
                if let Some(v) = meta.get(bucket, &key).await? {
                    let change = MetaChange::Put {
                        key,
                        value: v.value,
                        revision: v.revision,
                    };
                    apply_change(&state, bucket, change);
                }
            }
        }
        let (changed, _) = watch::channel(0u64);
        let (reopen, _) = watch::channel(0u64);
        let tasks = [Bucket::Meta, Bucket::Nodes]
            .into_iter()
            .map(|b| {
                let shared = Shared {
                    state: state.clone(),
                    changed: changed.clone(),
                    reopen: reopen.clone(),
                };
                tokio::spawn(follow(meta.clone(), b, shared, dead_after))
            })
            .collect();
        Ok(Directory {
            state,
            changed,
            dead_after,
            started: Instant::now(),
            _tasks: Arc::new(WatchTasks(tasks)),
        })
    }

    /// Wakes on every change seen.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    pub fn assignment(&self, p: u32) -> Option<(Assignment, u64)> {
        self.state.read().assignments.get(&p).cloned()
    }

    pub fn assignments(&self) -> BTreeMap<u32, (Assignment, u64)> {
        self.state.read().assignments.clone()
    }

    /// Records an assignment this process has just written, so it acts on it before the watch
    /// delivers it.
    pub fn note_assignment(&self, a: Assignment, revision: u64) {
        note_assignment(&self.state, a, revision);
        self.changed.send_modify(|v| *v += 1);
    }

    pub fn dead_after(&self) -> Duration {
        self.dead_after
    }

    /// Whether this process has watched long enough to judge liveness at all.
    pub fn settled(&self) -> bool {
        self.started.elapsed() >= self.dead_after
    }

    pub fn is_live(&self, node: &str) -> bool {
        self.state
            .read()
            .nodes
            .get(node)
            .is_some_and(|n| n.changed_at.elapsed() < self.dead_after)
    }

    pub fn live_nodes(&self) -> BTreeSet<String> {
        self.live_where(|_| true)
    }

    /// The live nodes that placement may give partitions to (not routers).
    pub fn live_holders(&self) -> BTreeSet<String> {
        self.live_where(|n| n.info.holds_partitions)
    }

    fn live_where(&self, keep: impl Fn(&SeenNode) -> bool) -> BTreeSet<String> {
        let st = self.state.read();
        st.nodes
            .iter()
            .filter(|(_, n)| n.changed_at.elapsed() < self.dead_after && keep(n))
            .map(|(id, _)| id.clone())
            .collect()
    }

    pub fn node(&self, id: &str) -> Option<SeenNode> {
        self.state.read().nodes.get(id).cloned()
    }

    /// The live nodes that serve `partition` (ready in its assignment and reporting it in their
    /// heartbeat), most advanced first: where a read should go.
    pub fn serving(&self, partition: u32) -> Vec<(NodeInfo, u64)> {
        let st = self.state.read();
        let Some((a, _)) = st.assignments.get(&partition) else {
            return Vec::new();
        };
        let mut out: Vec<(NodeInfo, u64)> = a
            .replicas
            .iter()
            .filter(|r| r.state == ReplicaState::Ready)
            .filter_map(|r| st.nodes.get(&r.node))
            .filter(|n| n.changed_at.elapsed() < self.dead_after)
            .filter_map(|n| Some((n.info.clone(), *n.info.serving.get(&partition)?)))
            .collect();
        out.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.node.cmp(&b.0.node)));
        out
    }

    /// Records that could not be decoded (they are skipped, and listed here).
    pub fn problems(&self) -> Vec<String> {
        self.state.read().problems.clone()
    }
}

fn note_assignment(state: &RwLock<State>, a: Assignment, revision: u64) {
    let mut st = state.write();
    let newer = st
        .assignments
        .get(&a.partition)
        .is_none_or(|(_, r)| *r < revision);
    if newer {
        st.assignments.insert(a.partition, (a, revision));
    }
}

/// Follows one bucket, re-opening the watch after a failure, and when it has been quiet for
/// `stale_after`. A watch whose JetStream server died can go quiet rather than fail; the
/// heartbeats of live nodes change the nodes bucket every heartbeat, so a quiet nodes watch is a
/// dead one, and the assignments watch (quiet by nature) is re-opened with it, and on its own
/// after [`META_QUIET_FACTOR`] times as long. A re-opened watch delivers every key again;
/// values already seen (same revision) change nothing.
async fn follow<M: MetaStore>(meta: M, bucket: Bucket, shared: Shared, stale_after: Duration) {
    let mut reopen = shared.reopen.subscribe();
    let quiet = match bucket {
        Bucket::Nodes => stale_after,
        Bucket::Meta => stale_after * META_QUIET_FACTOR,
    };
    loop {
        let mut w = match meta.watch(bucket).await {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!("watch of {bucket:?}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        loop {
            let next = tokio::select! {
                r = tokio::time::timeout(quiet, w.next()) => r,
                _ = reopen.changed(), if bucket == Bucket::Meta => break,
            };
            match next {
                Ok(Ok(change)) => {
                    apply_change(&shared.state, bucket, change);
                    shared.changed.send_modify(|v| *v += 1);
                }
                Ok(Err(e)) => {
                    tracing::warn!("watch of {bucket:?} ended: {e}; re-opening");
                    break;
                }
                Err(_) if bucket == Bucket::Nodes => {
                    tracing::warn!("watch of {bucket:?} quiet for {stale_after:?}; re-opening");
                    shared.reopen.send_modify(|v| *v += 1);
                    break;
                }
                Err(_) => {
                    tracing::debug!("watch of {bucket:?} quiet for {quiet:?}; re-opening");
                    break;
                }
            }
        }
    }
}

/// How many times longer than the nodes watch the assignments watch may stay quiet before it
/// is re-opened on its own: assignments rarely change, and each re-open delivers every one.
const META_QUIET_FACTOR: u32 = 10;

/// What the watch tasks share.
#[derive(Clone)]
struct Shared {
    state: Arc<RwLock<State>>,
    changed: watch::Sender<u64>,
    /// Bumped when the nodes watch was found quiet: the assignments watch re-opens too.
    reopen: watch::Sender<u64>,
}

fn apply_change(state: &RwLock<State>, bucket: Bucket, change: MetaChange) {
    match (bucket, change) {
        (
            Bucket::Meta,
            MetaChange::Put {
                key,
                value,
                revision,
            },
        ) => {
            if partition_of_key(&key).is_none() {
                return;
            }
            match Assignment::decode(&value, &key) {
                Ok(a) => note_assignment(state, a, revision),
                Err(e) => state.write().problem(e),
            }
        }
        (Bucket::Meta, MetaChange::Deleted { key, .. }) => {
            if let Some(p) = partition_of_key(&key) {
                state.write().assignments.remove(&p);
            }
        }
        (
            Bucket::Nodes,
            MetaChange::Put {
                key,
                value,
                revision,
            },
        ) => match NodeInfo::decode(&value, &key) {
            Ok(info) => {
                let mut st = state.write();
                let fresh = st.nodes.get(&key).is_none_or(|n| n.revision < revision);
                if fresh {
                    st.nodes.insert(
                        key,
                        SeenNode {
                            info,
                            revision,
                            changed_at: Instant::now(),
                        },
                    );
                }
            }
            Err(e) => state.write().problem(e),
        },
        (Bucket::Nodes, MetaChange::Deleted { key, .. }) => {
            state.write().nodes.remove(&key);
        }
    }
}
