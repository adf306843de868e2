//! A multi-domain model served: the requested domain picks the gates and the tower.

mod common;

use siren_model::train::train;
use siren_serve::{Ranker, ScoreOptions, ServedModel};

#[test]
fn served_crocodile_scores_by_the_requested_domain() {
    let (_dir, db, data) = common::small_from(common::multi());
    let cfg = common::cfg("siren-hard+crocodile-m2");
    let t = train(&cfg, &common::tcfg(1), &data).unwrap();
    let ck = tempfile::tempdir().unwrap();
    t.save(ck.path(), &data.vocabs, data.levels).unwrap();
    let served = ServedModel::load(ck.path()).unwrap();
    let ranker = Ranker::new(&db, Some(served), None).unwrap();
    let m = ranker.model().unwrap();
    // A test impression in a tail domain, its item and twenty others.
    let imp = *data
        .test
        .impressions()
        .iter()
        .find(|i| i.domain == 2)
        .expect("a domain-2 test impression");
    let mut cands = vec![imp.item];
    cands.extend(data.items.ids.iter().step_by(37).take(20));
    let score = |domain: u16| -> Vec<f32> {
        let opts = ScoreOptions {
            at: Some(imp.ts),
            domain,
            ..ScoreOptions::default()
        };
        let got = ranker
            .score(&db.snapshot(), imp.user, &cands, &opts)
            .unwrap();
        got.scores.iter().map(|s| s.score).collect()
    };
    let served_tail = score(2);
    let want = common::reference(&db, &data, &m, imp, &cands);
    assert!(
        common::close(&served_tail, &want),
        "{served_tail:?} vs {want:?}"
    );
    // Another domain picks other gates and another tower; a domain training never saw is
    // scored as the head domain.
    let served_head = score(0);
    assert!(!common::close(&served_tail, &served_head));
    assert_eq!(score(77), served_head);
}
