//! In-database scoring: the ranker's scores equal the training path's predictions for the same
//! impressions; edge cases have their documented answers; a model swap under load never mixes
//! models within an answer.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::{cfg, close, reference, small_with_db};
use siren_engine::{Item, SemId};
use siren_model::data::Impression;
use siren_model::models::{ModelConfig, ModelKind};
use siren_model::semid::{Codebook, RqKmeansConfig};
use siren_model::train::{train, Prepared, TrainConfig};
use siren_serve::{Ranker, Retrieval, ScoreOptions, ServeError, ServedModel};

fn trained(data: &Prepared, name: &str, seed: u64, dir: &std::path::Path) -> ServedModel {
    trained_as(data, cfg(name), seed, dir)
}

fn trained_as(data: &Prepared, c: ModelConfig, seed: u64, dir: &std::path::Path) -> ServedModel {
    let tc = TrainConfig {
        epochs: 1,
        batch_size: 64,
        seed,
        ..TrainConfig::default()
    };
    let t = train(&c, &tc, data).unwrap();
    t.save(dir, &data.vocabs, data.levels).unwrap();
    ServedModel::load(dir).unwrap()
}

/// Candidates for one test impression: its item, 20 other catalog items and an unknown id.
fn candidates(data: &Prepared, i: usize) -> (Impression, Vec<u64>) {
    let imp = data.test.impressions()[i];
    let mut c = vec![imp.item];
    c.extend(data.items.ids.iter().skip(i * 7).step_by(13).take(20));
    c.push(9_999_999_999);
    (imp, c)
}

#[test]
fn ranker_scores_equal_training_predictions() {
    let (_dir, db, data) = small_with_db();
    // Without the user id and the projected multimodal target (`--no-user-id`,
    // `--no-mm-target`): the fused forward, then candle.
    let switched = |name| ModelConfig {
        no_user_id: true,
        no_mm_target: true,
        ..cfg(name)
    };
    for (c, gsu) in [
        (cfg("siren-hard"), Retrieval::Hard),
        (cfg("siren-soft"), Retrieval::Soft),
        (cfg("muse"), Retrieval::Soft),
        (cfg("sim-hard"), Retrieval::Hard),
        (cfg("din"), Retrieval::Hard),
        // With the target's click statistics: the fused forward, then candle.
        (cfg("siren-hard-ctr"), Retrieval::Hard),
        (cfg("sim-hard-ctr"), Retrieval::Hard),
        (switched("siren-soft"), Retrieval::Soft),
        (switched("muse"), Retrieval::Soft),
        // MUSE's reference network (`reference_net`): candle, never the fused forward.
        (cfg("muse").with_reference_net(), Retrieval::Soft),
        (cfg("sim-hard").with_reference_net(), Retrieval::Hard),
        (cfg("din").with_reference_net(), Retrieval::Soft),
    ] {
        let name = c.name();
        let name = name.as_str();
        let siren = matches!(c.kind, ModelKind::SirenSoft | ModelKind::SirenHard);
        let ck = tempfile::tempdir().unwrap();
        let ranker = Ranker::new(&db, Some(trained_as(&data, c, 1, ck.path())), None).unwrap();
        let m = ranker.model().unwrap();
        assert_eq!(m.is_fused(), siren, "{name}");
        for i in [0, 17, 40] {
            let (imp, cands) = candidates(&data, i);
            let opts = ScoreOptions {
                retrieval: gsu,
                at: Some(imp.ts),
                explain: true,
                domain: imp.domain,
            };
            let got = ranker
                .score(&db.snapshot(), imp.user, &cands, &opts)
                .unwrap();
            assert_eq!(got.model_version, m.version());
            assert_eq!(got.scores.len(), cands.len());
            let scores: Vec<f32> = got.scores.iter().map(|s| s.score).collect();
            let want = reference(&db, &data, &m, imp, &cands);
            assert!(close(&scores, &want), "{name}: {scores:?} vs {want:?}");
            let last = got.scores.last().unwrap();
            assert!(!last.in_catalog && last.retrieved.as_ref().unwrap().is_empty());
            assert!(got.scores[0].in_catalog);
            assert!(got.history_events > 0);
            // Explanations: what the GSU found, all before `at`, with the retrieval's reason.
            for s in &got.scores {
                for r in s.retrieved.as_ref().unwrap() {
                    assert!(r.event.ts < imp.ts && r.event.user == imp.user);
                    match (name, gsu) {
                        ("din", _)
                        | ("sim-hard" | "sim-hard-ctr", _)
                        | (_, Retrieval::Category) => {}
                        (_, Retrieval::Hard) => assert!(r.depth.unwrap() >= 1),
                        (_, Retrieval::Soft) => assert!(r.similarity.unwrap().is_finite()),
                    }
                }
            }
        }
    }
}

#[test]
fn edge_cases_have_defined_answers() {
    let (_dir, db, data) = small_with_db();
    let ck = tempfile::tempdir().unwrap();
    let served = trained(&data, "siren-hard", 1, ck.path());
    let version = served.version().to_string();

    let no_model = Ranker::new(&db, None, None).unwrap();
    assert!(matches!(
        no_model.score(&db.snapshot(), 1, &[1], &ScoreOptions::default()),
        Err(ServeError::NoModel)
    ));

    let ranker = Ranker::new(&db, Some(served), None).unwrap();
    let imp = data.test.impressions()[0];
    // No candidates: no scores.
    let r = ranker
        .score(&db.snapshot(), imp.user, &[], &ScoreOptions::default())
        .unwrap();
    assert!(r.scores.is_empty());
    assert_eq!(r.model_version, version);
    // A user with no history, and a time before a known user's first event: finite scores.
    let items: Vec<u64> = data.items.ids[..5].to_vec();
    for (user, at) in [(424_242u64, None), (imp.user, Some(0))] {
        let r = ranker
            .score(
                &db.snapshot(),
                user,
                &items,
                &ScoreOptions {
                    at,
                    explain: true,
                    ..ScoreOptions::default()
                },
            )
            .unwrap();
        assert_eq!(r.history_events, 0);
        assert_eq!(r.scores.len(), 5);
        for s in &r.scores {
            assert!(s.score.is_finite() && (0.0..=1.0).contains(&s.score));
            assert!(s.in_catalog && s.retrieved.as_ref().unwrap().is_empty());
        }
    }
    // Without explain, nothing is retrieved into the answer.
    let r = ranker
        .score(&db.snapshot(), imp.user, &items, &ScoreOptions::default())
        .unwrap();
    assert!(r.scores.iter().all(|s| s.retrieved.is_none()));
    assert_eq!(r.retrieval, Some(Retrieval::Hard));
}

#[test]
fn a_model_that_does_not_fit_the_database_is_refused() {
    let (_dir, db, data) = small_with_db();
    let ck = tempfile::tempdir().unwrap();
    let served = trained(&data, "din", 1, ck.path());
    // A database of another embedding dimension.
    let other_dir = tempfile::tempdir().unwrap();
    let other = siren_engine::Db::open(
        other_dir.path(),
        siren_engine::Options {
            embedding_dim: 8,
            auto_compact: None,
            ..siren_engine::Options::default()
        },
    )
    .unwrap();
    let err = Ranker::new(&other, Some(served), None).unwrap_err();
    assert!(err.to_string().contains("16-dimensional"), "{err}");
    // A codebook of the wrong shape is refused too; a fitting one assigns SemIDs.
    let ranker = Ranker::new(&db, None, None).unwrap();
    let x: Vec<f32> = data.items.emb.clone();
    let fit = |levels| {
        Codebook::fit(
            &x,
            16,
            &RqKmeansConfig {
                levels,
                codebook_size: 256,
                ..RqKmeansConfig::default()
            },
        )
        .unwrap()
    };
    assert!(ranker.set_codebook(fit(2)).is_err());
    ranker.set_codebook(fit(3)).unwrap();
    let mut items = vec![
        Item {
            id: 1,
            category: 0,
            semid: None,
            embedding: Some(data.items.embedding(0).iter().map(|v| v * 3.0).collect()),
        },
        Item {
            id: 2,
            category: 0,
            semid: Some(SemId::new(&[1, 2, 3]).unwrap()),
            embedding: Some(vec![0.5; 16]),
        },
        Item {
            id: 3,
            category: 0,
            semid: None,
            embedding: None,
        },
    ];
    assert_eq!(ranker.assign_semids(&mut items), 1);
    // Scale does not change a SemID: assignment is on unit-length embeddings.
    let cb = ranker.codebook().unwrap();
    assert_eq!(items[0].semid, Some(cb.assign(data.items.embedding(0))));
    assert_eq!(items[1].semid, Some(SemId::new(&[1, 2, 3]).unwrap()));
    assert_eq!(items[2].semid, None);
}

#[test]
fn swapping_models_under_load_never_mixes_them() {
    let (_dir, db, data) = small_with_db();
    let (ck1, ck2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let m1 = trained(&data, "siren-hard", 1, ck1.path());
    let m2 = trained(&data, "siren-hard", 2, ck2.path());
    assert_ne!(m1.version(), m2.version());
    let (imp, cands) = candidates(&data, 5);
    let opts = ScoreOptions {
        at: Some(imp.ts),
        ..ScoreOptions::default()
    };
    let expect = |m: &ServedModel| {
        let r = Ranker::new(&db, Some(ServedModel::load(m.source()).unwrap()), None).unwrap();
        let s = r.score(&db.snapshot(), imp.user, &cands, &opts).unwrap();
        (
            s.model_version,
            s.scores.iter().map(|s| s.score).collect::<Vec<f32>>(),
        )
    };
    let (e1, e2) = (expect(&m1), expect(&m2));
    let ranker = Arc::new(Ranker::new(&db, Some(m1), None).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let (ranker, db, stop, cands, opts) = (
                ranker.clone(),
                db.clone(),
                stop.clone(),
                cands.clone(),
                opts.clone(),
            );
            let (e1, e2) = (e1.clone(), e2.clone());
            std::thread::spawn(move || {
                let mut seen = [0usize; 2];
                while !stop.load(Ordering::Relaxed) {
                    let s = ranker
                        .score(&db.snapshot(), imp.user, &cands, &opts)
                        .unwrap();
                    let scores: Vec<f32> = s.scores.iter().map(|s| s.score).collect();
                    if s.model_version == e1.0 {
                        assert!(close(&scores, &e1.1));
                        seen[0] += 1;
                    } else {
                        assert_eq!(s.model_version, e2.0);
                        assert!(close(&scores, &e2.1));
                        seen[1] += 1;
                    }
                }
                seen
            })
        })
        .collect();
    for k in 0..20 {
        let src = if k % 2 == 0 { ck2.path() } else { ck1.path() };
        ranker.swap_model(ServedModel::load(src).unwrap()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    let total: usize = workers
        .into_iter()
        .map(|w| w.join().unwrap().iter().sum::<usize>())
        .sum();
    assert!(total > 0);
}

#[test]
fn the_ranker_is_shareable() {
    fn shareable<T: Send + Sync>() {}
    shareable::<Ranker>();
}
