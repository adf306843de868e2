//! The serving path gives each candidate the tokens training gives the same impression.

#[path = "../../model/tests/common/mod.rs"]
mod common;

use siren_engine::{AppendOptions, Durability, Event, Item};
use siren_model::data::Impression;
use siren_model::features::{build_samples, evidence_len, ItemTable, NO_ROW};
use siren_model::SeqKind;
use siren_serve::candidates::candidate_samples;
use siren_serve::retrieval::SeqPlan;

/// The serving path gives each candidate the tokens and evidence features training gives the
/// same impression.
#[test]
fn serving_samples_equal_training_samples() {
    let (_dir, db, _) = common::fixture();
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
        let plan: Vec<SeqPlan> = spec
            .iter()
            .map(|&(slot, len)| SeqPlan {
                slot,
                read: slot,
                len,
            })
            .collect();
        let levels = 2;
        let served = candidate_samples(&snap, user, at, 0, &cands, &plan, Some(levels), 4).unwrap();
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
        let trained = build_samples(&snap, &all, &imps, &spec, Some(levels), 1).unwrap();
        assert_eq!(served.set.lens, trained.lens, "at {at}");
        assert_eq!(
            served.set.evidence.len(),
            cands.len() * evidence_len(levels)
        );
        assert_eq!(served.set.evidence, trained.evidence, "evidence at {at}");
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
