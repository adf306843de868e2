//! Training samples read through the engine: no sample sees an event at or after its time, and
//! the samples do not depend on the number of threads that read them.

mod common;

use common::fixture;
use siren_engine::{Event, Item, ReadRange, SemId};
use siren_model::batch::SIMTIER_BINS;
use siren_model::features::{
    build_samples, evidence_len, HistorySummary, ItemTable, Retrieval, SeqKind, EVIDENCE_WINDOW,
    NO_ROW,
};

#[test]
fn no_sample_sees_an_event_at_or_after_its_time() {
    let (_dir, db, imps) = fixture();
    let snap = db.snapshot();
    let items = ItemTable::from_snapshot(&snap, 4);
    let spec: Vec<(SeqKind, usize)> = SeqKind::ALL.iter().map(|&k| (k, 12)).collect();
    let set = build_samples(&snap, &items, &imps, &spec, None, 2).unwrap();
    let (mut at, mut after) = (0, 0);
    for (i, imp) in imps.iter().enumerate() {
        // Everything the engine holds for this user, brute force.
        let all = snap.read(imp.user, ReadRange::all()).unwrap();
        let earlier: Vec<&Event> = all.iter().filter(|e| e.ts < imp.ts).collect();
        at += all.iter().filter(|e| e.ts == imp.ts).count();
        after += all.iter().filter(|e| e.ts > imp.ts).count();
        for &(kind, len) in &spec {
            let toks = set.seq(kind, i).unwrap();
            let real = set.lens[spec.iter().position(|s| s.0 == kind).unwrap()][i] as usize;
            assert!(real <= len);
            for t in &toks[..real] {
                assert!(t.age_s >= 1, "{kind:?} token at or after the impression");
            }
            assert!(toks[real..].iter().all(|t| t.row == NO_ROW));
            if kind == SeqKind::Recent {
                // Exactly the newest `len` strictly earlier events, newest first.
                let want: Vec<u32> = earlier
                    .iter()
                    .rev()
                    .take(len)
                    .map(|e| items.row(e.item).unwrap())
                    .collect();
                let got: Vec<u32> = toks[..real].iter().map(|t| t.row).collect();
                assert_eq!(got, want);
            }
        }
    }
    assert!(
        at > 0 && after > 0,
        "the fixture must hold events at and after impression times"
    );
}

#[test]
fn results_do_not_depend_on_thread_count() {
    let (_dir, db, imps) = fixture();
    let snap = db.snapshot();
    let items = ItemTable::from_snapshot(&snap, 4);
    let spec = [
        (SeqKind::Retrieved(Retrieval::Soft), 8),
        (SeqKind::Retrieved(Retrieval::Hard), 8),
        (SeqKind::Retrieved(Retrieval::Category), 5),
        (SeqKind::Recent, 10),
    ];
    let a = build_samples(&snap, &items, &imps, &spec, Some(2), 1).unwrap();
    let b = build_samples(&snap, &items, &imps, &spec, Some(2), 3).unwrap();
    for (x, y) in a.seqs.iter().zip(&b.seqs) {
        assert_eq!(x.0, y.0);
        let same = x.2.iter().zip(&y.2).all(|(p, q)| {
            p.row == q.row
                && p.age_s == q.age_s
                && p.depth == q.depth
                && (p.sim == q.sim || (p.sim.is_nan() && q.sim.is_nan()))
        });
        assert!(same);
    }
    assert_eq!(a.lens, b.lens);
    assert_eq!(a.evidence, b.evidence);
    assert!(!a.evidence.is_empty());
    // Category search returns only the target's category; hard search only shared prefixes.
    for (i, &t) in a.target_row.iter().enumerate() {
        for tok in
            &a.seq(SeqKind::Retrieved(Retrieval::Category), i).unwrap()[..a.lens[2][i] as usize]
        {
            assert_eq!(items.category[tok.row as usize], items.category[t as usize]);
        }
        for tok in &a.seq(SeqKind::Retrieved(Retrieval::Hard), i).unwrap()[..a.lens[1][i] as usize]
        {
            assert!(tok.depth >= 1);
        }
    }
}

/// The evidence features of a small history, counted by hand.
#[test]
fn evidence_counts_what_the_history_holds() {
    let item = |id: u64, category: u32, semid: &[u16], e: [f32; 2]| Item {
        id,
        category,
        semid: Some(SemId::new(semid).unwrap()),
        embedding: Some(e.to_vec()),
    };
    // Target 1: category 7, SemID (1, 2). Item 2 shares both levels, item 3 the first level
    // only and the category, item 4 nothing; item 9 is not in the catalog.
    let items = ItemTable::from_items(
        [
            item(1, 7, &[1, 2], [1.0, 0.0]),
            item(2, 5, &[1, 2], [1.0, 0.0]),
            item(3, 7, &[1, 3], [0.55, 0.835]),
            item(4, 6, &[2, 0], [-1.0, 0.0]),
        ],
        2,
    );
    let ev = |item: u64| Event {
        user: 1,
        ts: 0,
        item,
        action: 0,
        domain: 0,
    };
    // Oldest first: 60 of item 4 push the two item-2 events out of the recent window.
    let mut hist = vec![ev(2), ev(2), ev(3)];
    hist.extend((0..EVIDENCE_WINDOW + 10).map(|_| ev(4)));
    hist.push(ev(9));
    let n = hist.len();
    let summary = HistorySummary::new(&items, &hist);
    let target = items.row(1).unwrap();
    let got = summary.evidence(&items, target, 2);
    assert_eq!(got.len(), evidence_len(2));
    let l = |x: usize| (x as f32).ln_1p();
    // Category 7: item 3 once, 61 behaviours newer than it.
    assert_eq!(&got[0..3], &[l(1), 0.0, l(61)]);
    // Depth 1: items 2 and 3; depth 2: item 2 twice, 62 newer.
    assert_eq!(&got[3..6], &[l(3), 0.0, l(61)]);
    assert_eq!(&got[6..9], &[l(2), 0.0, l(62)]);
    // Cosine 1 (item 2), 0.55 (item 3), -1 (item 4): bins 20, 15 and 0.
    let hist_bins = &got[9..9 + SIMTIER_BINS];
    assert_eq!(hist_bins[20], l(2));
    assert_eq!(hist_bins[15], l(1));
    assert_eq!(hist_bins[0], l(EVIDENCE_WINDOW + 10));
    assert_eq!(got[9 + SIMTIER_BINS], l(n));
    // A target outside the catalog: no matches, "newest" past the end.
    let none = summary.evidence(&items, NO_ROW, 2);
    assert_eq!(none[2], ((n + 1) as f32).ln_1p());
    assert_eq!(none[0], 0.0);
}

/// The evidence of many targets at once (serving's form) is each target's own, bit for bit,
/// over a history of more distinct items than one cache block holds; its cosine histogram
/// equals a plain count over every behaviour.
#[test]
fn evidence_of_many_targets_is_each_targets_own() {
    let dim = 12; // one whole chunk of eight and a tail of four
    let catalog: Vec<Item> = (0..1_500u64)
        .map(|id| Item {
            id,
            category: (id % 13) as u32,
            semid: (id % 11 != 0).then(|| SemId::new(&[(id % 7) as u16, (id % 5) as u16]).unwrap()),
            embedding: (id % 17 != 0).then(|| {
                (0..dim)
                    .map(|j| ((id * 31 + j as u64 * 7) as f32).sin())
                    .collect()
            }),
        })
        .collect();
    let items = ItemTable::from_items(catalog, dim);
    let hist: Vec<Event> = (0..6_000u64)
        .map(|i| Event {
            user: 1,
            ts: i as i64,
            item: (i * i + 3 * i) % 1_400 + u64::from(i % 97 == 0) * 10_000,
            action: 0,
            domain: 0,
        })
        .collect();
    let summary = HistorySummary::new(&items, &hist);
    let mut targets: Vec<u32> = (0..1_500u64)
        .step_by(37)
        .map(|id| items.row(id).unwrap())
        .collect();
    targets.push(NO_ROW);
    let all = summary.evidence_of(&items, &targets, 2);
    let width = evidence_len(2);
    assert_eq!(all.len(), targets.len() * width);
    for (row, &t) in all.chunks_exact(width).zip(&targets) {
        let one = summary.evidence(&items, t, 2);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(row), bits(&one), "target row {t}");
        let mut plain = [0f32; SIMTIER_BINS];
        if t != NO_ROW {
            for e in &hist {
                if let Some(c) = items.row(e.item).and_then(|r| items.cosine(r, t)) {
                    plain[siren_model::features::simtier_bin(c)] += 1.0;
                }
            }
        }
        let plain: Vec<f32> = plain.iter().map(|x| x.ln_1p()).collect();
        assert_eq!(
            bits(&row[9..9 + SIMTIER_BINS]),
            bits(&plain),
            "target row {t}"
        );
    }
}

/// A row added with its codes only (serving's behaviours) is the same row, for every feature,
/// as one added with its values: category, SemID, codes, whether it has an embedding, every
/// cosine and the evidence of a history.
#[test]
fn rows_without_values_give_the_same_features() {
    let (_dir, db, _) = fixture();
    let snap = db.snapshot();
    let full = ItemTable::from_snapshot(&snap, 4);
    let mut lean = ItemTable::new(4);
    for it in snap.item_refs() {
        lean.push_codes_ref(&it);
    }
    assert_eq!(full.ids, lean.ids);
    assert_eq!(full.category, lean.category);
    assert_eq!(full.semid, lean.semid);
    assert_eq!(full.has_emb, lean.has_emb);
    assert!(lean.emb.is_empty(), "no values kept");
    for a in 0..full.len() as u32 {
        assert_eq!(full.codes(a), lean.codes(a));
        for b in 0..full.len() as u32 {
            assert_eq!(
                full.cosine(a, b).map(f32::to_bits),
                lean.cosine(a, b).map(f32::to_bits)
            );
        }
    }
    let hist = snap.read(2, ReadRange::all()).unwrap();
    let targets: Vec<u32> = (0..full.len() as u32).chain([NO_ROW]).collect();
    let of = |t: &ItemTable| HistorySummary::new(t, &hist).evidence_of(t, &targets, 2);
    assert_eq!(of(&full), of(&lean));
}

/// Reading the values of a row added without them is a caller's bug, not a silent zero.
#[test]
#[should_panic(expected = "added without its values")]
fn a_row_without_values_has_no_embedding_to_read() {
    let (_dir, db, _) = fixture();
    let snap = db.snapshot();
    let mut lean = ItemTable::new(4);
    let row = lean.push_codes_ref(&snap.item_ref(3).unwrap());
    let _ = lean.embedding(row);
}
