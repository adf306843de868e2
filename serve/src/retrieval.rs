//! The retrieval choice of a scoring call, and the batched engine calls that carry it out.
//!
//! A model reads its sequences in fixed slots (`ModelConfig::sequences`): the recent behaviours
//! and, for SIM, MUSE and SIREN, one GSU sequence. A request picks which retrieval fills a soft
//! or hard GSU slot ([`plan`]), so a model trained on soft retrieval can be served with hard
//! retrieval (SIREN's cheap serving path) and the reverse; a category slot (SIM) is always read
//! by category. The samples are built with the slot's kind from the start.
//!
//! Each candidate is looked up in the catalog once ([`Targets`]): its unit-length embedding
//! for soft retrieval, its SemID for hard retrieval, its category for category search. Then
//! each sequence is one engine call for all candidates ([`retrieve`]).

use std::collections::HashMap;
use std::time::Instant;

use siren_engine::{Event, ReadRange, SemId, Snapshot};
use siren_model::features::{recent, ItemTable, NO_ROW};
use siren_model::{Retrieval, SeqKind};

use crate::error::Result;

/// One sequence a call reads: the slot the model reads it in, how it is read, and its length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqPlan {
    pub slot: SeqKind,
    pub read: SeqKind,
    pub len: usize,
}

/// The sequences to read for a model whose slots are `sequences` when `requested` feeds its
/// GSU, and the retrieval that fed a soft or hard GSU slot (`None` when the model has none).
pub fn plan(
    sequences: &[(SeqKind, usize)],
    requested: Retrieval,
) -> (Vec<SeqPlan>, Option<Retrieval>) {
    let mut fed = None;
    let plans = sequences
        .iter()
        .map(|&(slot, len)| {
            let read = match slot {
                SeqKind::Retrieved(Retrieval::Soft | Retrieval::Hard) => {
                    fed = Some(requested);
                    SeqKind::Retrieved(requested)
                }
                other => other,
            };
            SeqPlan { slot, read, len }
        })
        .collect();
    (plans, fed)
}

/// One behaviour the GSU retrieved for a candidate, with why it was retrieved.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Retrieved {
    pub event: Event,
    /// SemID levels shared with the candidate (hard retrieval).
    pub depth: Option<u8>,
    /// Cosine with the candidate (soft retrieval).
    pub similarity: Option<f32>,
}

impl Retrieved {
    fn plain(event: Event) -> Retrieved {
        Retrieved {
            event,
            depth: None,
            similarity: None,
        }
    }
}

/// Where the time of reading went, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ReadTimings {
    /// Reading the recent behaviours (and, for category search, the history).
    pub read_us: f64,
    /// The batched GSU call.
    pub retrieve_us: f64,
}

pub(crate) fn micros(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e6
}

/// The candidates as retrieval targets: each one's catalog row, normalised exactly as
/// training sees targets, in a table the request's other items are then added to.
pub struct Targets {
    table: ItemTable,
    /// Per candidate, its row in `table` or [`NO_ROW`] (the catalog lacks it).
    rows: Vec<u32>,
}

impl Targets {
    /// One catalog look-up per distinct candidate; the candidates' rows come first, in order.
    pub fn look_up(snap: &Snapshot, candidates: &[u64], dim: usize) -> Targets {
        let mut table = ItemTable::new(dim);
        let rows = candidates
            .iter()
            .map(|&id| table.row_or_add(snap, id))
            .collect();
        Targets { table, rows }
    }

    /// Per candidate, whether the catalog holds it.
    pub fn in_catalog(&self) -> Vec<bool> {
        self.rows.iter().map(|&r| r != NO_ROW).collect()
    }

    /// The table of the candidates' rows (the request's other items are added to a copy).
    pub fn table(&self) -> &ItemTable {
        &self.table
    }

    /// Per candidate, its row in [`Self::table`] or [`NO_ROW`] (the catalog lacks it).
    pub fn rows(&self) -> &[u32] {
        &self.rows
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    fn row(&self, c: usize) -> Option<usize> {
        (self.rows[c] != NO_ROW).then_some(self.rows[c] as usize)
    }

    /// The candidate's unit-length embedding, if it has one.
    pub fn embedding(&self, c: usize) -> Option<&[f32]> {
        self.row(c)
            .filter(|&r| self.table.has_emb[r])
            .map(|r| self.table.embedding(r as u32))
    }

    pub fn semid(&self, c: usize) -> Option<SemId> {
        self.row(c).and_then(|r| self.table.semid[r])
    }

    pub fn category(&self, c: usize) -> Option<u32> {
        self.row(c).map(|r| self.table.category[r])
    }
}

/// Per candidate, the behaviours of `user` before `at` that the sequence `read` holds (at most
/// `len`, best first), with one engine call for all candidates.
pub fn retrieve(
    snap: &Snapshot,
    user: u64,
    at: i64,
    read: SeqKind,
    len: usize,
    targets: &Targets,
    timings: &mut ReadTimings,
) -> Result<Vec<Vec<Retrieved>>> {
    match read {
        SeqKind::Recent => {
            let t = Instant::now();
            let v = recent(snap, user, len, Some(at))?;
            timings.read_us += micros(t);
            let one: Vec<Retrieved> = v.into_iter().map(Retrieved::plain).collect();
            Ok(vec![one; targets.len()])
        }
        SeqKind::Retrieved(Retrieval::Soft) => batched(
            targets,
            |c| targets.embedding(c),
            |q| snap.retrieve_soft_batch(user, q, len, Some(at)),
            |h| Retrieved {
                event: h.event,
                depth: None,
                similarity: Some(h.similarity),
            },
            timings,
        ),
        SeqKind::Retrieved(Retrieval::Hard) => batched(
            targets,
            |c| targets.semid(c),
            |q| snap.retrieve_hard_batch(user, q, len, Some(at)),
            |h| Retrieved {
                event: h.event,
                depth: Some(h.depth),
                similarity: None,
            },
            timings,
        ),
        SeqKind::Retrieved(Retrieval::Category) => category(snap, user, at, len, targets, timings),
    }
}

/// One batched engine call for the candidates `query` gives a target; the others retrieve
/// nothing. Answers are in candidate order.
fn batched<Q, H>(
    targets: &Targets,
    query: impl Fn(usize) -> Option<Q>,
    call: impl FnOnce(&[Q]) -> siren_engine::Result<Vec<Vec<H>>>,
    hit: impl Fn(H) -> Retrieved,
    timings: &mut ReadTimings,
) -> Result<Vec<Vec<Retrieved>>> {
    let (asked, queries): (Vec<usize>, Vec<Q>) = (0..targets.len())
        .filter_map(|c| query(c).map(|q| (c, q)))
        .unzip();
    let t = Instant::now();
    let hits = if queries.is_empty() {
        Vec::new()
    } else {
        call(&queries)?
    };
    timings.retrieve_us += micros(t);
    let mut out = vec![Vec::new(); targets.len()];
    for (c, h) in asked.into_iter().zip(hits) {
        out[c] = h.into_iter().map(&hit).collect();
    }
    Ok(out)
}

/// SIM's category search: the engine has no category index, so the history is read once and
/// filtered per candidate.
fn category(
    snap: &Snapshot,
    user: u64,
    at: i64,
    len: usize,
    targets: &Targets,
    timings: &mut ReadTimings,
) -> Result<Vec<Vec<Retrieved>>> {
    let t = Instant::now();
    let history = snap.read(user, ReadRange::as_of(at))?;
    timings.read_us += micros(t);
    let t = Instant::now();
    let mut of_item: HashMap<u64, Option<u32>> = HashMap::new();
    for e in &history {
        of_item
            .entry(e.item)
            .or_insert_with(|| snap.item_ref(e.item).map(|i| i.category));
    }
    let out = (0..targets.len())
        .map(|c| match targets.category(c) {
            None => Vec::new(),
            Some(cat) => history
                .iter()
                .rev()
                .filter(|e| of_item[&e.item] == Some(cat))
                .take(len)
                .map(|&e| Retrieved::plain(e))
                .collect(),
        })
        .collect();
    timings.retrieve_us += micros(t);
    Ok(out)
}
