//! One partition held by a node: acquiring it (resume from the stored position, replay the
//! stream from its start, or import a checkpoint), applying its stream, becoming ready once
//! caught up, shipping checkpoints to joining replicas, and dropping its data when it moves
//! away.
//!
//! The rule that makes this safe: the node never applies a message unless every earlier one is
//! in its database. Its position is stored atomically with the data; a stream that no longer
//! holds the message after that position (purged by retention) is a gap, and the node refuses
//! the partition, says so in its status and heartbeat, and asks for a checkpoint instead.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::SemaphorePermit;

use crate::apply::{apply, plan};
use crate::checkpoint::{drop_partition, import_checkpoint, write_checkpoint, CheckpointHeader};
use crate::directory::Directory;
use crate::error::{Error, Result};
use crate::log::{Backend, Bounds, Log, LogEntry, LogReader, StreamId};
use crate::meta::{CheckpointRef, Replica, ReplicaState};
use crate::runtime::{CatchUp, Inner, Phase, Slot};

/// Most messages read into one batch.
const MAX_BATCH_MESSAGES: usize = 4096;

/// The task of one held partition; ends when the partition is unassigned here (its data is then
/// dropped) or the node shuts down (its data is kept).
pub(crate) async fn run<B: Backend>(inner: Arc<Inner<B>>, slot: Arc<Slot>) {
    let p = slot.partition;
    let mut stop = slot.stop.subscribe();
    loop {
        let result = tokio::select! {
            r = hold(&inner, &slot) => r,
            _ = stop.wait_for(|s| *s) => break,
        };
        let Err(e) = result else { break };
        tracing::warn!("node {} partition {p}: {e}", inner.cfg.node_id);
        let pause = if e.is_retryable() {
            slot.set_phase(Phase::Joining(format!("retrying after: {e}")));
            Duration::from_secs(1)
        } else {
            slot.set_phase(Phase::Refused(e.to_string()));
            Duration::from_secs(5)
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    if !inner.is_shutting_down() {
        let (db, gate_slot, partitions) =
            (inner.db.clone(), slot.clone(), inner.cluster.partitions);
        let dropped = tokio::task::spawn_blocking(move || {
            let _gate = gate_slot.gate.lock();
            drop_partition(&db, p, partitions)
        })
        .await;
        match dropped {
            Ok(Ok(n)) => {
                inner
                    .counters
                    .partitions_dropped
                    .fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    "node {}: dropped partition {p} ({n} users)",
                    inner.cfg.node_id
                )
            }
            Ok(Err(e)) => {
                tracing::error!("node {}: dropping partition {p}: {e}", inner.cfg.node_id)
            }
            Err(e) => tracing::error!("node {}: dropping partition {p}: {e}", inner.cfg.node_id),
        }
    }
    let mut slots = inner.slots.lock();
    if slots.get(&p).is_some_and(|s| Arc::ptr_eq(s, &slot)) {
        slots.remove(&p);
    }
}

fn my_replica(dir: &Directory, p: u32, me: &str) -> Result<Replica> {
    dir.assignment(p)
        .and_then(|(a, _)| a.replica(me).cloned())
        .ok_or_else(|| Error::NotServing {
            node: me.to_string(),
            partition: p,
            reason: "not in the assignment any more".into(),
        })
}

/// Acquires the partition, then applies its stream until an error.
async fn hold<B: Backend>(inner: &Arc<Inner<B>>, slot: &Arc<Slot>) -> Result<()> {
    let p = slot.partition;
    let stream = StreamId::Partition(p);
    let me = inner.cfg.node_id.as_str();
    let mine = my_replica(&inner.dir, p, me)?;
    let joining = mine.state == ReplicaState::Joining || mine.wants_checkpoint;
    let permit = match joining {
        true => {
            slot.set_phase(Phase::Joining("waiting for a join slot".into()));
            Some(inner.joins.acquire().await.map_err(|_| Error::Shutdown)?)
        }
        false => None,
    };
    let bounds = inner.backend.bounds(stream).await?;
    let stored = inner.db.source_position(&stream.source_name());
    tracing::debug!(
        "node {me} partition {p}: stored {stored:?}, stream {bounds:?}, replica {mine:?}, provider {:?}, live {:?}",
        provider(&inner.dir, p),
        inner.dir.live_nodes()
    );
    if mine.state == ReplicaState::Ready && stored.is_none() && bounds.last > 0 {
        // Ready in the assignment but holding nothing (its disk was replaced): it must catch up
        // again before it serves.
        tracing::warn!("node {me} partition {p}: ready but holds nothing; catching up again");
        inner
            .update_assignment(p, |a| match a.replica_mut(me) {
                Some(r) if r.state == ReplicaState::Ready => {
                    r.state = ReplicaState::Joining;
                    true
                }
                _ => false,
            })
            .await?;
    }
    let start = match stored {
        Some(pos) if pos + 1 < bounds.first => {
            let gap = Error::Gap {
                partition: p,
                stored: pos,
                first: bounds.first,
            };
            tracing::error!("node {me}: {gap}");
            slot.set_phase(Phase::Refused(gap.to_string()));
            fetch_checkpoint(inner, slot).await?
        }
        Some(pos) if !mine.wants_checkpoint && mine.checkpoint.is_none() => pos,
        None if bounds.first == 1
            && !mine.wants_checkpoint
            && mine.checkpoint.is_none()
            && (inner.cfg.catch_up == CatchUp::Replay || !ready_elsewhere(&inner.dir, p, me)) =>
        {
            start_replay(inner, slot).await?
        }
        _ => fetch_checkpoint(inner, slot).await?,
    };
    slot.applied.send_replace(start);
    let reader = inner.backend.read_from(stream, start + 1).await?;
    // A ready replica that found a gap has become a joining one by now.
    let target = match my_replica(&inner.dir, p, me)?.state {
        ReplicaState::Joining => Some(inner.backend.bounds(stream).await?.last),
        ReplicaState::Ready => {
            record_position_zero(inner, slot, start).await?;
            slot.set_phase(Phase::Serving);
            None
        }
    };
    apply_stream(inner, slot, reader, start, target, permit).await
}

/// Deletes whatever the node holds of the partition, to apply its stream from the start.
async fn start_replay<B: Backend>(inner: &Arc<Inner<B>>, slot: &Arc<Slot>) -> Result<u64> {
    let (db, gate_slot, p, partitions) = (
        inner.db.clone(),
        slot.clone(),
        slot.partition,
        inner.cluster.partitions,
    );
    blocking(move || {
        let _gate = gate_slot.gate.lock();
        drop_partition(&db, p, partitions)
    })
    .await?;
    inner.counters.replays.fetch_add(1, Ordering::Relaxed);
    Ok(0)
}

/// Applies the stream from `applied + 1` on; becomes ready once `target` is reached.
async fn apply_stream<B: Backend>(
    inner: &Arc<Inner<B>>,
    slot: &Arc<Slot>,
    mut reader: <B as Log>::Reader,
    mut applied: u64,
    mut target: Option<u64>,
    mut permit: Option<SemaphorePermit<'_>>,
) -> Result<()> {
    let mut changes = inner.dir.subscribe();
    let mut tick = tokio::time::interval(inner.cfg.heartbeat);
    let mut last_read = Instant::now();
    loop {
        if let Some(t) = target {
            if applied >= t {
                record_position_zero(inner, slot, applied).await?;
            }
            if applied >= t && become_ready(inner, slot.partition).await? {
                target = None;
                permit.take();
                slot.set_phase(Phase::Serving);
            } else {
                slot.set_phase(Phase::Joining(format!("catching up: {applied} of {t}")));
            }
        }
        tokio::select! {
            entry = reader.next() => {
                let entries = read_batch(entry?, &mut reader, slot, applied)?;
                applied = apply_batch(inner, slot, applied, entries).await?;
                slot.applied.send_replace(applied);
                fulfil_pins(inner, slot, applied);
                last_read = Instant::now();
            }
            _ = changes.changed() => maybe_ship(inner, slot),
            _ = tick.tick() => {
                maybe_ship(inner, slot);
                if last_read.elapsed() >= inner.cfg.dead_after {
                    check_not_stalled(inner, slot.partition, applied).await?;
                    last_read = Instant::now();
                }
            }
        }
    }
}

/// A reader whose JetStream server died for good can wait forever without an error. After a
/// quiet `dead_after`, this asks the stream how far it goes: messages past `applied` mean the
/// reader is stuck, and the retryable error makes the partition's task open a new one.
async fn check_not_stalled<B: Backend>(inner: &Inner<B>, p: u32, applied: u64) -> Result<()> {
    let stream = StreamId::Partition(p);
    let last = inner.backend.bounds(stream).await?.last;
    if last > applied {
        return Err(Error::Log {
            op: "consume",
            target: stream.source_name(),
            detail: format!(
                "nothing read for {:?} while the stream holds {} more messages; re-opening",
                inner.cfg.dead_after,
                last - applied
            ),
            retryable: true,
        });
    }
    Ok(())
}

/// The first message and whatever else has already arrived, stopping at a position a pin
/// waits for so that the pin's snapshot is taken exactly there.
fn read_batch<R: LogReader>(
    first: LogEntry,
    reader: &mut R,
    slot: &Slot,
    applied: u64,
) -> Result<Vec<LogEntry>> {
    let stop_at = slot
        .wanted_pins
        .lock()
        .range(applied + 1..)
        .next()
        .map(|(pos, _)| *pos);
    let mut entries = vec![first];
    while entries.len() < MAX_BATCH_MESSAGES && entries.last().map(|e| e.seq) != stop_at {
        match reader.try_next() {
            Some(e) => entries.push(e?),
            None => break,
        }
    }
    Ok(entries)
}

async fn apply_batch<B: Backend>(
    inner: &Arc<Inner<B>>,
    slot: &Arc<Slot>,
    applied: u64,
    entries: Vec<LogEntry>,
) -> Result<u64> {
    let stream = StreamId::Partition(slot.partition);
    let db = inner.db.clone();
    let ops = plan(
        stream,
        inner.cluster.partitions,
        applied,
        &entries,
        db.options().max_batch_events,
    )?;
    let (slot, durability) = (slot.clone(), inner.cfg.durability);
    blocking(move || {
        let mut pos = applied;
        for op in &ops {
            let _gate = slot.gate.lock();
            // Once stopped, nothing more is written: the drop that follows must see it all.
            if *slot.stop.borrow() {
                return Err(Error::Shutdown);
            }
            pos = apply(&db, stream, op, durability)?;
        }
        Ok(pos)
    })
    .await
}

/// Runs blocking database work off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::invalid(format!("blocking task failed: {e}")))?
}

/// After a batch: the pins waiting for exactly this position get a snapshot; pins at positions
/// now passed are dropped (their waiters are told).
fn fulfil_pins<B: Backend>(inner: &Inner<B>, slot: &Slot, applied: u64) {
    let mut wanted = slot.wanted_pins.lock();
    if wanted.range(..=applied).next().is_none() {
        return;
    }
    if let Some(jobs) = wanted.remove(&applied) {
        let snap = inner.db.snapshot();
        let mut pins = inner.pins.lock();
        for job in jobs {
            pins.insert((job, slot.partition), (snap.clone(), applied));
        }
    }
    wanted.retain(|pos, _| *pos > applied);
    drop(wanted);
    slot.pinned.notify_waiters();
}

/// Records position 0 of the partition's stream when the replica serves from there and the
/// node holds no position for the stream. Without it, a replica that became ready before the
/// stream's first message, and was stopped before it applied one, looked once re-opened like
/// one whose disk was replaced (ready, holding nothing, the stream not empty) and went back to
/// catching up, by checkpoint when another replica was ready: a cluster that had converged
/// could then wait on a provider (issue 16's non-convergence after kills).
async fn record_position_zero<B: Backend>(
    inner: &Arc<Inner<B>>,
    slot: &Arc<Slot>,
    position: u64,
) -> Result<()> {
    let source = StreamId::Partition(slot.partition).source_name();
    if position != 0 || inner.db.source_position(&source).is_some() {
        return Ok(());
    }
    let (db, slot, durability) = (inner.db.clone(), slot.clone(), inner.cfg.durability);
    blocking(move || {
        let _gate = slot.gate.lock();
        if *slot.stop.borrow() {
            return Err(Error::Shutdown);
        }
        let opts = siren_engine::AppendOptions {
            durability,
            source: Some((source, 0)),
        };
        db.append(&[], &opts)?;
        Ok(())
    })
    .await
}

/// Marks this node's replica ready, by compare-and-swap. `false` if the assignment no longer
/// lets it (a checkpoint was asked for meanwhile).
async fn become_ready<B: Backend>(inner: &Inner<B>, p: u32) -> Result<bool> {
    let me = inner.cfg.node_id.clone();
    inner
        .update_assignment(p, |a| match a.replica_mut(&me) {
            Some(r) if r.state == ReplicaState::Joining && !r.wants_checkpoint => {
                r.state = ReplicaState::Ready;
                r.checkpoint = None;
                true
            }
            _ => false,
        })
        .await?;
    Ok(my_replica(&inner.dir, p, &me)?.state == ReplicaState::Ready)
}

/// The replica that ships checkpoints of `p`: the first ready one that is live and serving.
pub(crate) fn provider(dir: &Directory, p: u32) -> Option<String> {
    let (a, _) = dir.assignment(p)?;
    a.replicas
        .iter()
        .filter(|r| can_ship(r))
        .find(|r| {
            dir.is_live(&r.node)
                && dir
                    .node(&r.node)
                    .is_some_and(|n| n.info.serving.contains_key(&p))
        })
        .map(|r| r.node.clone())
}

/// Whether another replica of `p` is ready in the assignment, live or not. A joining replica
/// asks for a checkpoint when one is: a provider that merely looks dead for a moment (its
/// heartbeat late on a loaded machine, or not yet seen by a directory that has just started)
/// must not turn a checkpoint catch-up into a replay of the whole stream. `fetch_checkpoint`
/// still falls back to replay when no provider shows up for two `dead_after`.
fn ready_elsewhere(dir: &Directory, p: u32, me: &str) -> bool {
    dir.assignment(p)
        .is_some_and(|(a, _)| a.replicas.iter().any(|r| r.node != me && can_ship(r)))
}

/// A replica whose data is whole: ready and not waiting for a checkpoint of its own.
fn can_ship(r: &Replica) -> bool {
    r.state == ReplicaState::Ready && !r.wants_checkpoint
}

/// If this node is the provider and a replica waits for a checkpoint, ships one (in the
/// background; one at a time per partition).
fn maybe_ship<B: Backend>(inner: &Arc<Inner<B>>, slot: &Arc<Slot>) {
    let p = slot.partition;
    if *slot.phase.lock() != Phase::Serving
        || provider(&inner.dir, p).as_deref() != Some(inner.cfg.node_id.as_str())
    {
        return;
    }
    let Some((a, _)) = inner.dir.assignment(p) else {
        return;
    };
    let Some(joiner) = a
        .replicas
        .iter()
        .find(|r| r.wants_checkpoint && r.checkpoint.is_none() && inner.dir.is_live(&r.node))
        .map(|r| r.node.clone())
    else {
        return;
    };
    if slot.exporting.swap(true, Ordering::AcqRel) {
        return;
    }
    let (inner, slot) = (inner.clone(), slot.clone());
    tokio::spawn(async move {
        if let Err(e) = ship_checkpoint(&inner, &slot, &joiner).await {
            tracing::warn!(
                "node {}: checkpoint of partition {} for {joiner}: {e}",
                inner.cfg.node_id,
                slot.partition
            );
        }
        slot.exporting.store(false, Ordering::Release);
    });
}

/// Writes a checkpoint of this partition, puts it in the blob store and tells the joiner.
async fn ship_checkpoint<B: Backend>(
    inner: &Arc<Inner<B>>,
    slot: &Arc<Slot>,
    joiner: &str,
) -> Result<()> {
    let p = slot.partition;
    let (db, gate_slot) = (inner.db.clone(), slot.clone());
    let source = StreamId::Partition(p).source_name();
    let (snap, position) = blocking(move || {
        let _gate = gate_slot.gate.lock();
        Ok((db.snapshot(), db.source_position(&source).unwrap_or(0)))
    })
    .await?;
    let header = CheckpointHeader {
        cluster: inner.cluster.name.clone(),
        partition: p,
        partitions: inner.cluster.partitions,
        position,
    };
    let path = inner
        .cfg
        .data_dir
        .join("tmp")
        .join(format!("ship-p{p}-{joiner}-{position}"));
    let (h, file) = (header.clone(), path.clone());
    let summary = blocking(move || write_checkpoint(&snap, &h, &file)).await?;
    let object = format!("p{p}.{joiner}.{position}");
    let shipped = inner.backend.put_blob(&object, &path).await;
    let _ = std::fs::remove_file(&path);
    let bytes = shipped?;
    let me = inner.cfg.node_id.clone();
    let reference = CheckpointRef {
        object: object.clone(),
        position,
        from: me.clone(),
    };
    let told = inner
        .update_assignment(p, |a| match a.replica_mut(joiner) {
            Some(r) if r.wants_checkpoint && r.checkpoint.is_none() => {
                r.checkpoint = Some(reference.clone());
                true
            }
            _ => false,
        })
        .await?;
    if told {
        inner
            .counters
            .checkpoints_shipped
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            "node {me}: shipped partition {p} at {position} to {joiner}: {} users, {} events, {bytes} bytes",
            summary.users,
            summary.events
        );
    } else {
        let _ = inner.backend.delete_blob(&object).await;
    }
    Ok(())
}

/// Asks for a checkpoint (by compare-and-swap on this node's replica entry), waits for a ready
/// replica to ship one, imports it, and returns its position.
async fn fetch_checkpoint<B: Backend>(inner: &Arc<Inner<B>>, slot: &Arc<Slot>) -> Result<u64> {
    let p = slot.partition;
    let me = inner.cfg.node_id.clone();
    let mut changes = inner.dir.subscribe();
    let mut no_provider_since: Option<Instant> = None;
    loop {
        let mine = my_replica(&inner.dir, p, &me)?;
        if let Some(reference) = mine.checkpoint.clone() {
            let bounds = inner.backend.bounds(StreamId::Partition(p)).await?;
            let imported = import_shipped(inner, slot, &reference, bounds).await;
            inner
                .update_assignment(p, |a| match a.replica_mut(&me) {
                    Some(r) if r.checkpoint.as_ref() == Some(&reference) => {
                        r.checkpoint = None;
                        r.wants_checkpoint = imported.is_err();
                        r.state = ReplicaState::Joining;
                        true
                    }
                    _ => false,
                })
                .await?;
            let _ = inner.backend.delete_blob(&reference.object).await;
            match imported {
                Ok(position) => return Ok(position),
                Err(e) if e.is_retryable() => return Err(e),
                Err(e) => {
                    tracing::error!(
                        "node {me}: checkpoint {}: {e}; asking again",
                        reference.object
                    );
                    continue;
                }
            }
        }
        if !mine.wants_checkpoint {
            inner
                .update_assignment(p, |a| match a.replica_mut(&me) {
                    Some(r) if !r.wants_checkpoint => {
                        r.wants_checkpoint = true;
                        r.state = ReplicaState::Joining;
                        true
                    }
                    _ => false,
                })
                .await?;
        }
        let from = provider(&inner.dir, p);
        if from.is_some() {
            no_provider_since = None;
        }
        let alone_for = no_provider_since.get_or_insert_with(Instant::now).elapsed();
        if from.is_none() && alone_for > 2 * inner.dir.dead_after() {
            // Nobody can ship one; if the stream still holds its start, replay it instead.
            let bounds = inner.backend.bounds(StreamId::Partition(p)).await?;
            if bounds.first == 1 {
                inner
                    .update_assignment(p, |a| match a.replica_mut(&me) {
                        Some(r) if r.wants_checkpoint && r.checkpoint.is_none() => {
                            r.wants_checkpoint = false;
                            true
                        }
                        _ => false,
                    })
                    .await?;
                return start_replay(inner, slot).await;
            }
        }
        if !matches!(*slot.phase.lock(), Phase::Refused(_)) {
            let from = from.unwrap_or_else(|| "no live ready replica yet".into());
            slot.set_phase(Phase::Joining(format!("waiting for a checkpoint ({from})")));
        }
        tokio::select! {
            _ = changes.changed() => {}
            _ = tokio::time::sleep(inner.cfg.heartbeat) => {}
        }
    }
}

/// Downloads and imports a shipped checkpoint; its position must leave no gap before the
/// stream's first message.
async fn import_shipped<B: Backend>(
    inner: &Arc<Inner<B>>,
    slot: &Arc<Slot>,
    reference: &CheckpointRef,
    bounds: Bounds,
) -> Result<u64> {
    let p = slot.partition;
    if reference.position + 1 < bounds.first {
        return Err(Error::Gap {
            partition: p,
            stored: reference.position,
            first: bounds.first,
        });
    }
    slot.set_phase(Phase::Joining(format!(
        "importing a checkpoint at {} from {}",
        reference.position, reference.from
    )));
    let path = inner
        .cfg
        .data_dir
        .join("tmp")
        .join(format!("fetch-{}", reference.object));
    let _ = std::fs::remove_file(&path);
    inner.backend.get_blob(&reference.object, &path).await?;
    let expect = CheckpointHeader {
        cluster: inner.cluster.name.clone(),
        partition: p,
        partitions: inner.cluster.partitions,
        position: reference.position,
    };
    let (db, gate_slot, file, durability) = (
        inner.db.clone(),
        slot.clone(),
        path.clone(),
        inner.cfg.durability,
    );
    let imported = blocking(move || {
        let _gate = gate_slot.gate.lock();
        // Once stopped, the import ends: the drop that follows must see everything written.
        let stopped = || *gate_slot.stop.borrow();
        import_checkpoint(&db, &file, &expect, durability, &stopped)
    })
    .await;
    let _ = std::fs::remove_file(&path);
    let summary = imported?;
    inner
        .counters
        .checkpoints_imported
        .fetch_add(1, Ordering::Relaxed);
    tracing::info!(
        "node {}: imported partition {p} at {}: {} users, {} events",
        inner.cfg.node_id,
        reference.position,
        summary.users,
        summary.events
    );
    Ok(reference.position)
}
