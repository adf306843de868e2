//! Every model trains on a small planted dataset read through the engine; training is
//! deterministic; checkpoints round-trip.

mod common;

use common::{cfg, small};
use siren_model::models::ModelConfig;
use siren_model::train::{evaluate, load_checkpoint, predict, train, TrainConfig};

#[test]
fn every_model_trains_deterministically_and_round_trips() {
    let (_dir, data) = small();
    let tc = TrainConfig {
        epochs: 2,
        batch_size: 64,
        seed: 3,
        ..TrainConfig::default()
    };
    for name in ModelConfig::NAMES {
        let c = cfg(name);
        let t = train(&c, &tc, &data).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(!t.history.is_empty());
        assert!(t.history.iter().all(|h| h.train_loss.is_finite()), "{name}");
        let (m, p) = evaluate(t.model.as_ref(), &c, &data, &data.test).unwrap();
        assert!(m.auc.is_some(), "{name}: {m:?}");
        assert!(p.iter().all(|x| (0.0..=1.0).contains(x)));
        // Same seed, same model.
        let again = train(&c, &tc, &data).unwrap();
        let q = predict(again.model.as_ref(), &c, &data, &data.test, 1024).unwrap();
        assert_eq!(p, q, "{name}: training is not deterministic");
        // Checkpoint round trip.
        let ck = tempfile::tempdir().unwrap();
        t.save(ck.path(), &data.vocabs, data.levels).unwrap();
        let loaded = load_checkpoint(ck.path()).unwrap();
        let r = predict(
            loaded.model.as_ref(),
            &loaded.cfg.model,
            &data,
            &data.test,
            1024,
        )
        .unwrap();
        assert_eq!(p, r, "{name}: checkpoint changes predictions");
    }
}

#[test]
fn sequence_models_learn_the_planted_signal() {
    let (_dir, data) = small();
    let tc = TrainConfig {
        epochs: 4,
        batch_size: 64,
        seed: 1,
        ..TrainConfig::default()
    };
    let gauc = |name: &str| {
        let c = cfg(name);
        let t = train(&c, &tc, &data).unwrap();
        evaluate(t.model.as_ref(), &c, &data, &data.test)
            .unwrap()
            .0
            .auc
            .unwrap()
    };
    let soft = gauc("siren-soft");
    assert!(soft > 0.6, "siren-soft AUC {soft}");
}

#[test]
fn a_damaged_checkpoint_is_refused() {
    let (_dir, data) = small();
    let c = cfg("din");
    let t = train(
        &c,
        &TrainConfig {
            epochs: 1,
            batch_size: 64,
            ..TrainConfig::default()
        },
        &data,
    )
    .unwrap();
    let ck = tempfile::tempdir().unwrap();
    t.save(ck.path(), &data.vocabs, data.levels).unwrap();
    let w = ck.path().join("model.safetensors");
    let mut b = std::fs::read(&w).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 1;
    std::fs::write(&w, b).unwrap();
    assert!(matches!(
        load_checkpoint(ck.path()),
        Err(siren_model::ModelError::DataCorruption { .. })
    ));
}
