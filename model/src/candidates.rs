//! Samples for one user and many candidate items at one moment: the serving path.
//!
//! Training reads each impression's sequences with one engine call per sequence
//! ([`crate::features::build_samples`]). Serving scores N candidates for one user at once, so it
//! reads the recent behaviours once and runs the GSU as one batched engine call for all
//! candidates (`retrieve_hard_batch`, `retrieve_soft_batch`). The tokens are made by the same
//! [`token`] function from the same catalog rows, so a candidate scored here gets exactly the
//! features training would have given the impression `(user, candidate, at)`; a test checks it.

use std::collections::HashMap;
use std::time::Instant;

use siren_engine::{Event, Item, ReadRange, Snapshot};

use crate::data::Impression;
use crate::error::Result;
use crate::features::{assemble, recent, token, ItemTable, SampleSet, SeqKind, Token, NO_ROW};

/// One behaviour the GSU retrieved for a candidate, with why it was retrieved.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Retrieved {
    pub event: Event,
    /// SemID levels shared with the candidate (hard retrieval).
    pub depth: Option<u8>,
    /// Cosine with the candidate (soft retrieval).
    pub similarity: Option<f32>,
}

/// Where the time of building went, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BuildTimings {
    /// Reading the recent behaviours (and, for category search, the history).
    pub read_us: f64,
    /// The batched GSU call.
    pub retrieve_us: f64,
    /// Catalog lookups and tokens.
    pub tokens_us: f64,
}

/// Samples of `(user, candidate, at)` for every candidate, in candidate order.
pub struct CandidateSamples {
    /// The candidates and every retrieved behaviour's item (the rows tokens refer to).
    pub items: ItemTable,
    pub set: SampleSet,
    /// Per candidate: whether the catalog holds it.
    pub in_catalog: Vec<bool>,
    /// Per candidate: what the GSU sequence of `spec` retrieved (empty without one).
    pub retrieved: Vec<Vec<Retrieved>>,
    /// Events of the user before `at`.
    pub history_len: usize,
    pub timings: BuildTimings,
}

fn micros(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e6
}

/// Read the sequences `spec` for `user` and each of `candidates` as of `at` (events strictly
/// before `at`), with one engine call per sequence kind.
pub fn candidate_samples(
    snap: &Snapshot,
    user: u64,
    at: i64,
    domain: u16,
    candidates: &[u64],
    spec: &[(SeqKind, usize)],
    dim: usize,
) -> Result<CandidateSamples> {
    let mut timings = BuildTimings::default();
    let t = Instant::now();
    let cand_items: Vec<Option<Item>> = candidates.iter().map(|&id| snap.item(id)).collect();
    // Normalised embeddings and SemIDs of the candidates, exactly as training sees targets.
    let targets = ItemTable::from_items(cand_items.iter().flatten().cloned(), dim);
    let target_rows: Vec<u32> = candidates
        .iter()
        .map(|&id| targets.row(id).unwrap_or(NO_ROW))
        .collect();
    timings.tokens_us += micros(t);

    let as_of = Some(at);
    let history_len = snap.user_len(user, as_of)?;
    // Per sequence of spec: per candidate, its events (and what retrieval said of them).
    let mut per_kind: Vec<Vec<Vec<Retrieved>>> = Vec::with_capacity(spec.len());
    let mut gsu_slot = None;
    for (s, &(kind, len)) in spec.iter().enumerate() {
        let plain = |e: Event| Retrieved {
            event: e,
            depth: None,
            similarity: None,
        };
        let lists: Vec<Vec<Retrieved>> = match kind {
            SeqKind::Recent => {
                let t = Instant::now();
                let v = recent(snap, user, len, as_of)?;
                timings.read_us += micros(t);
                let one: Vec<Retrieved> = v.into_iter().map(plain).collect();
                vec![one; candidates.len()]
            }
            SeqKind::Soft => {
                gsu_slot = Some(s);
                let asked: Vec<usize> = (0..candidates.len())
                    .filter(|&c| {
                        target_rows[c] != NO_ROW && targets.has_emb[target_rows[c] as usize]
                    })
                    .collect();
                let queries: Vec<&[f32]> = asked
                    .iter()
                    .map(|&c| targets.embedding(target_rows[c]))
                    .collect();
                let t = Instant::now();
                let hits = if queries.is_empty() {
                    Vec::new()
                } else {
                    snap.retrieve_soft_batch(user, &queries, len, as_of)?
                };
                timings.retrieve_us += micros(t);
                let mut out = vec![Vec::new(); candidates.len()];
                for (c, h) in asked.into_iter().zip(hits) {
                    out[c] = h
                        .into_iter()
                        .map(|h| Retrieved {
                            event: h.event,
                            depth: None,
                            similarity: Some(h.similarity),
                        })
                        .collect();
                }
                out
            }
            SeqKind::Hard => {
                gsu_slot = Some(s);
                let asked: Vec<(usize, siren_engine::SemId)> = (0..candidates.len())
                    .filter_map(|c| {
                        let r = target_rows[c];
                        (r != NO_ROW)
                            .then(|| targets.semid[r as usize])
                            .flatten()
                            .map(|sid| (c, sid))
                    })
                    .collect();
                let semids: Vec<_> = asked.iter().map(|(_, s)| *s).collect();
                let t = Instant::now();
                let hits = if semids.is_empty() {
                    Vec::new()
                } else {
                    snap.retrieve_hard_batch(user, &semids, len, as_of)?
                };
                timings.retrieve_us += micros(t);
                let mut out = vec![Vec::new(); candidates.len()];
                for ((c, _), h) in asked.into_iter().zip(hits) {
                    out[c] = h
                        .into_iter()
                        .map(|h| Retrieved {
                            event: h.event,
                            depth: Some(h.depth),
                            similarity: None,
                        })
                        .collect();
                }
                out
            }
            SeqKind::Category => {
                gsu_slot = Some(s);
                let t = Instant::now();
                let history = snap.read(user, ReadRange::as_of(at))?;
                timings.read_us += micros(t);
                let t = Instant::now();
                let mut category: HashMap<u64, Option<u32>> = HashMap::new();
                for e in &history {
                    category
                        .entry(e.item)
                        .or_insert_with(|| snap.item(e.item).map(|i| i.category));
                }
                let out = target_rows
                    .iter()
                    .map(|&r| {
                        if r == NO_ROW {
                            return Vec::new();
                        }
                        let cat = targets.category[r as usize];
                        history
                            .iter()
                            .rev()
                            .filter(|e| category[&e.item] == Some(cat))
                            .take(len)
                            .map(|&e| plain(e))
                            .collect()
                    })
                    .collect();
                timings.retrieve_us += micros(t);
                out
            }
        };
        per_kind.push(lists);
    }

    let t = Instant::now();
    // Every item a token refers to: the candidates, then the behaviours' items.
    let mut seen: HashMap<u64, ()> = HashMap::new();
    let mut rows: Vec<Item> = cand_items.iter().flatten().cloned().collect();
    for it in &rows {
        seen.insert(it.id, ());
    }
    for lists in &per_kind {
        for list in lists {
            for r in list {
                if seen.insert(r.event.item, ()).is_none() {
                    if let Some(it) = snap.item(r.event.item) {
                        rows.push(it);
                    }
                }
            }
        }
    }
    let items = ItemTable::from_items(rows, dim);
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
    let mut tokens = Vec::with_capacity(candidates.len());
    for (c, imp) in imps.iter().enumerate() {
        let target = items.row(imp.item).unwrap_or(NO_ROW);
        let seqs = per_kind
            .iter()
            .map(|lists| {
                lists[c]
                    .iter()
                    .map(|r| token(&items, target, imp, &r.event))
                    .collect::<Result<Vec<Token>>>()
            })
            .collect::<Result<Vec<_>>>()?;
        tokens.push((c, seqs));
    }
    let set = assemble(&items, &imps, spec, tokens);
    let retrieved = match gsu_slot {
        Some(s) => per_kind.swap_remove(s),
        None => vec![Vec::new(); candidates.len()],
    };
    timings.tokens_us += micros(t);
    Ok(CandidateSamples {
        items,
        set,
        in_catalog: cand_items.iter().map(Option::is_some).collect(),
        retrieved,
        history_len,
        timings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::build_samples;
    use siren_engine::{AppendOptions, Durability};

    /// The serving path gives each candidate the tokens training gives the same impression.
    #[test]
    fn serving_samples_equal_training_samples() {
        let (_dir, db, _) = crate::features::tests::fixture();
        // Item 19 loses its embedding, item 18 its SemID; item 500 is only seen in events.
        let mut changed: Vec<Item> = [18u64, 19]
            .iter()
            .map(|&id| db.snapshot().item(id).unwrap())
            .collect();
        changed[0].semid = None;
        changed[1].embedding = None;
        db.upsert_items(&changed, Durability::Sync).unwrap();
        let stubs: Vec<Event> = (0..10)
            .map(|k| Event {
                user: 2,
                ts: 40_000 + k * 3_000,
                item: 500,
                action: 2,
                domain: 0,
            })
            .collect();
        db.append(&stubs, &AppendOptions::default()).unwrap();

        let snap = db.snapshot();
        let all = ItemTable::from_snapshot(&snap, 4);
        let spec: Vec<(SeqKind, usize)> = SeqKind::ALL.iter().map(|&k| (k, 9)).collect();
        // Candidates: known items, items without embedding or SemID, an unknown id, a repeat.
        let cands = [3u64, 18, 19, 12345, 3, 0, 7];
        for (user, at) in [
            (2u64, 500i64),
            (2, 57_000),
            (2, 150_000),
            (1, 1_000_000),
            (9, 5),
        ] {
            let served = candidate_samples(&snap, user, at, 0, &cands, &spec, 4).unwrap();
            let imps: Vec<Impression> = cands
                .iter()
                .map(|&item| Impression {
                    user,
                    item,
                    ts: at,
                    label: 0.0,
                    domain: 0,
                })
                .collect();
            let trained = build_samples(&snap, &all, &imps, &spec, 1).unwrap();
            assert_eq!(served.set.lens, trained.lens, "at {at}");
            assert_eq!(served.history_len, snap.user_len(user, Some(at)).unwrap());
            let id = |t: &ItemTable, row: u32| (row != NO_ROW).then(|| t.ids[row as usize]);
            for (c, _) in cands.iter().enumerate() {
                assert_eq!(
                    id(&served.items, served.set.target_row[c]),
                    id(&all, trained.target_row[c])
                );
                for &(kind, _) in &spec {
                    let a = served.set.seq(kind, c).unwrap();
                    let b = trained.seq(kind, c).unwrap();
                    for (x, y) in a.iter().zip(b) {
                        assert_eq!(id(&served.items, x.row), id(&all, y.row), "{kind:?}");
                        assert_eq!((x.action, x.age_s, x.depth), (y.action, y.age_s, y.depth));
                        assert!(x.sim == y.sim || (x.sim.is_nan() && y.sim.is_nan()));
                    }
                }
            }
            assert_eq!(
                served.in_catalog,
                vec![true, true, true, false, true, true, true]
            );
        }
    }
}
