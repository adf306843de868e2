//! Training samples read through the engine: no sample sees an event at or after its time, and
//! the samples do not depend on the number of threads that read them.

mod common;

use common::fixture;
use siren_engine::{Event, ReadRange};
use siren_model::features::{build_samples, ItemTable, Retrieval, SeqKind, NO_ROW};

#[test]
fn no_sample_sees_an_event_at_or_after_its_time() {
    let (_dir, db, imps) = fixture();
    let snap = db.snapshot();
    let items = ItemTable::from_snapshot(&snap, 4);
    let spec: Vec<(SeqKind, usize)> = SeqKind::ALL.iter().map(|&k| (k, 12)).collect();
    let set = build_samples(&snap, &items, &imps, &spec, 2).unwrap();
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
    let a = build_samples(&snap, &items, &imps, &spec, 1).unwrap();
    let b = build_samples(&snap, &items, &imps, &spec, 3).unwrap();
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
