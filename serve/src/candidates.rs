//! The ESU inputs of one user and many candidate items at one moment: the serving path.
//!
//! Training reads each impression's sequences with one engine call per sequence
//! (`siren_model::features::build_samples`). Serving scores N candidates for one user at once,
//! so it reads the recent behaviours once and runs the GSU as one batched engine call for all
//! candidates ([`crate::retrieval`]), while a second thread computes the evidence features,
//! which need only the candidates and the user's history summary. The tokens are made by the same `token` function from the
//! same catalog rows, so a candidate scored here gets exactly the features training would have
//! given the impression `(user, candidate, at)`; a test checks it.

use std::time::Instant;

use siren_engine::Snapshot;
use siren_model::data::Impression;
use siren_model::features::{assemble, token, ItemTable, SampleSet, Token, NO_ROW};
use siren_model::SeqKind;

use crate::error::Result;
use crate::retrieval::{micros, retrieve, ReadTimings, Retrieved, SeqPlan, Targets};
use crate::summaries::SummaryCache;

/// Where the time of building went, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BuildTimings {
    /// Reading the recent behaviours (and, for category search, the history).
    pub read_us: f64,
    /// The batched GSU call.
    pub retrieve_us: f64,
    /// Catalog look-ups, tokens and the evidence features (the user's history summary
    /// included: read, on a miss of the summary cache, or found in it).
    pub tokens_us: f64,
}

/// Samples of `(user, candidate, at)` for every candidate, in candidate order.
pub struct CandidateSamples {
    /// The candidates and every retrieved behaviour's item (the rows tokens refer to).
    pub items: ItemTable,
    /// Sequences in the slots of the plan.
    pub set: SampleSet,
    /// Per candidate: whether the catalog holds it.
    pub in_catalog: Vec<bool>,
    /// Per candidate: what the GSU sequence retrieved (empty without one).
    pub retrieved: Vec<Vec<Retrieved>>,
    /// Events of the user before `at`.
    pub history_len: usize,
    pub timings: BuildTimings,
}

/// Read the sequences of `plan` for `user` and each of `candidates` as of `at` (events
/// strictly before `at`), with one engine call per sequence, and the evidence features over
/// `evidence` SemID levels when given (from one read of the whole as-of history).
#[allow(clippy::too_many_arguments)]
pub fn candidate_samples(
    snap: &Snapshot,
    user: u64,
    at: i64,
    domain: u16,
    candidates: &[u64],
    plan: &[SeqPlan],
    evidence: Option<usize>,
    dim: usize,
) -> Result<CandidateSamples> {
    let no_cache = SummaryCache::new(0);
    candidate_samples_cached(
        snap, user, at, domain, candidates, plan, evidence, dim, &no_cache,
    )
}

/// [`candidate_samples`] with the user's history summary taken from `summaries` (read and
/// kept there on a miss): the same samples, as the cache hands out only the summary of the
/// same events.
#[allow(clippy::too_many_arguments)]
pub fn candidate_samples_cached(
    snap: &Snapshot,
    user: u64,
    at: i64,
    domain: u16,
    candidates: &[u64],
    plan: &[SeqPlan],
    evidence: Option<usize>,
    dim: usize,
    summaries: &SummaryCache,
) -> Result<CandidateSamples> {
    let t = Instant::now();
    let targets = Targets::look_up(snap, candidates, dim);
    let lookup_us = micros(t);
    let history_len = snap.user_len(user, Some(at))?;
    // The evidence features need the candidates and the user's history summary only, so they
    // are computed on a second thread while this one reads the sequences and makes the tokens.
    let t = Instant::now();
    let evidence_of = || -> Result<Vec<f32>> {
        let Some(levels) = evidence else {
            return Ok(Vec::new());
        };
        let summary = summaries.get(snap, user, at, dim)?;
        Ok(summary.evidence_of(targets.table(), targets.rows(), levels))
    };
    let sequences = || {
        let imps: Vec<Impression> = candidates
            .iter()
            .map(|&item| Impression {
                user,
                item,
                ts: at,
                label: 0.0,
                domain,
            })
            .collect();
        sequences(snap, user, at, &targets, plan, &imps)
    };
    let (evidence, built) = rayon::join(evidence_of, sequences);
    let Sequences {
        mut set,
        items,
        mut per_seq,
        read,
    } = built?;
    set.evidence = evidence?;
    let retrieved = match plan
        .iter()
        .position(|p| matches!(p.slot, SeqKind::Retrieved(_)))
    {
        Some(s) => per_seq.swap_remove(s),
        None => vec![Vec::new(); candidates.len()],
    };
    // What of the two threads' time was not reading: catalog look-ups, tokens and evidence.
    let features_us = (micros(t) - read.read_us - read.retrieve_us).max(0.0);
    Ok(CandidateSamples {
        items,
        set,
        in_catalog: targets.in_catalog(),
        retrieved,
        history_len,
        timings: BuildTimings {
            read_us: read.read_us,
            retrieve_us: read.retrieve_us,
            tokens_us: lookup_us + features_us,
        },
    })
}

/// What [`sequences`] read and made.
struct Sequences {
    set: SampleSet,
    items: ItemTable,
    /// Per sequence of the plan: per candidate, its events (and what retrieval said of them).
    per_seq: Vec<Vec<Vec<Retrieved>>>,
    read: ReadTimings,
}

/// The sequences of `plan` for the impressions `imps` (one per candidate), read with one
/// engine call each, and their tokens over the item table they refer to.
fn sequences(
    snap: &Snapshot,
    user: u64,
    at: i64,
    targets: &Targets,
    plan: &[SeqPlan],
    imps: &[Impression],
) -> Result<Sequences> {
    let mut read = ReadTimings::default();
    let per_seq: Vec<Vec<Vec<Retrieved>>> = plan
        .iter()
        .map(|p| retrieve(snap, user, at, p.read, p.len, targets, &mut read))
        .collect::<Result<_>>()?;
    let items = item_table(snap, targets, &per_seq);
    let tokens = tokens(&items, imps, &per_seq)?;
    let spec: Vec<(SeqKind, usize)> = plan.iter().map(|p| (p.slot, p.len)).collect();
    let set = assemble(&items, imps, &spec, tokens);
    Ok(Sequences {
        set,
        items,
        per_seq,
        read,
    })
}

/// Every item a token refers to: the candidates, then the retrieved behaviours' items, read
/// from the catalog as stored (no copies; f32 values for the candidates only).
fn item_table(snap: &Snapshot, targets: &Targets, per_seq: &[Vec<Vec<Retrieved>>]) -> ItemTable {
    // The candidates have their f32 values (the model's multimodal input reads them); the
    // behaviours get their codes only (cosines, categories and SemIDs are all they need).
    let mut table = targets.table().clone();
    for r in per_seq.iter().flatten().flatten() {
        table.row_or_add_codes(snap, r.event.item);
    }
    table
}

/// Per impression, one token list per sequence.
fn tokens(
    items: &ItemTable,
    imps: &[Impression],
    per_seq: &[Vec<Vec<Retrieved>>],
) -> Result<Vec<(usize, Vec<Vec<Token>>)>> {
    let mut out = Vec::with_capacity(imps.len());
    for (c, imp) in imps.iter().enumerate() {
        let target = items.row(imp.item).unwrap_or(NO_ROW);
        let seqs = per_seq
            .iter()
            .map(|lists| {
                lists[c]
                    .iter()
                    .map(|r| token(items, target, imp, &r.event))
                    .collect::<siren_model::Result<Vec<Token>>>()
            })
            .collect::<siren_model::Result<Vec<_>>>()?;
        out.push((c, seqs));
    }
    Ok(out)
}
