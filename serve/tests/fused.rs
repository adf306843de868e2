//! The fused serving forward gives the candle model's click probabilities to 1e-5 on every
//! SIREN variant it covers: random weights from several seeds, real features built by the
//! serving path from a database of the planted synthetic data; and it declines the models it
//! does not cover.

mod common;

use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use siren_engine::Snapshot;
use siren_model::batch::{make_batch, Batch, RowIndex};
use siren_model::labels::{ItemLabels, LabelTime};
use siren_model::models::layers::Params;
use siren_model::models::{build, ModelConfig, Scorer};
use siren_model::train::Prepared;
use siren_model::{Retrieval, SeqKind};
use siren_serve::candidates::candidate_samples;
use siren_serve::forward::weights::Named;
use siren_serve::forward::FusedEsu;
use siren_serve::retrieval::plan;

/// Every parameter of `p` replaced by random values of a scale that keeps the probabilities
/// away from 0 and 1 (so that a difference shows).
fn randomise(p: &Params, seed: u64, dir: &std::path::Path) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut map = std::collections::HashMap::new();
    for (name, t) in p.named_tensors().unwrap() {
        let dims = t.dims().to_vec();
        let bound = match dims.as_slice() {
            [_, cols] => 1.5 / (*cols as f64).sqrt(),
            _ => 0.5,
        };
        let centre = if name.contains("ln") && name.ends_with("weight") {
            1.0
        } else {
            0.0
        };
        let v: Vec<f32> = (0..t.elem_count())
            .map(|_| (centre + rng.random_range(-bound..bound)) as f32)
            .collect();
        map.insert(name, Tensor::from_vec(v, dims, &Device::Cpu).unwrap());
    }
    let path = dir.join(format!("random-{seed}.safetensors"));
    candle_core::safetensors::save(&map, &path).unwrap();
    p.load_buffer(&std::fs::read(&path).unwrap()).unwrap();
}

/// The serving path's batch for `user` and `cands` at `at` (with the served evidence features
/// when `with_evidence`, and the click statistics of `labels` when given).
fn served_batch(
    snap: &Snapshot,
    data: &Prepared,
    cfg: &ModelConfig,
    (user, at): (u64, i64),
    cands: &[u64],
    with_evidence: bool,
    labels: Option<&ItemLabels>,
) -> Batch {
    let retrieval = if cfg.name().starts_with("siren-soft") {
        Retrieval::Soft
    } else {
        Retrieval::Hard
    };
    let (plan, _) = plan(&cfg.sequences(), retrieval);
    let evidence = with_evidence.then_some(data.levels);
    let mut built = candidate_samples(snap, user, at, 0, cands, &plan, evidence, 16).unwrap();
    if let Some(l) = labels {
        l.fill(&mut built.set, LabelTime::Final);
    }
    let rows = RowIndex::new(&data.vocabs, &built.items);
    let kinds: Vec<SeqKind> = plan.iter().map(|p| p.slot).collect();
    let idx: Vec<usize> = (0..cands.len()).collect();
    make_batch(
        &built.set,
        &idx,
        &data.vocabs,
        &rows,
        &built.items,
        &kinds,
        &Device::Cpu,
    )
    .unwrap()
}

/// The largest difference between the two paths' probabilities, and their spread.
fn compare(model: &dyn Scorer, fused: &FusedEsu, b: &Batch) -> (f32, f32) {
    let want = candle_nn::ops::sigmoid(&model.logits(b).unwrap())
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let got = fused.probs(b).unwrap();
    assert_eq!(got.len(), want.len());
    let diff = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    let hi = want.iter().copied().fold(f32::MIN, f32::max);
    let lo = want.iter().copied().fold(f32::MAX, f32::min);
    (diff, hi - lo)
}

#[test]
fn fused_forward_equals_candle_on_every_covered_variant() {
    let (dir, db, data) = common::small_with_db();
    let snap = db.snapshot();
    let dims = data.dims();
    // Requests: test impressions' users and times; candidates their item, catalog items, an
    // unknown id.
    let requests: Vec<((u64, i64), Vec<u64>)> = [0usize, 17, 40]
        .iter()
        .map(|&i| {
            let imp = data.test.impressions()[i];
            let mut c = vec![imp.item];
            c.extend(data.items.ids.iter().skip(i * 7).step_by(13).take(30));
            c.push(9_999_999_999);
            ((imp.user, imp.ts), c)
        })
        .collect();
    let names = [
        "siren-hard",
        "siren-soft",
        "siren-hard-nosim",
        "siren-soft-noprefix",
        "siren-hard-noprefix",
        "siren-soft-nosim",
    ];
    let labels = ItemLabels::from_impressions(data.train.impressions());
    let mut checked = 0;
    let inputs = [(false, false), (true, false), (true, true)];
    for (with_evidence, with_labels) in inputs {
        for (v, name) in names.iter().enumerate() {
            for recent in [16, 0] {
                for seed in [1u64, 2, 3] {
                    let cfg = ModelConfig {
                        dim: 16,
                        recent,
                        retrieved: 16,
                        layers: 1 + (seed as usize + v) % 2,
                        heads: 2,
                        evidence: with_evidence,
                        item_labels: with_labels,
                        // The behaviours' action and time gap left out in turn, and the
                        // user id and projected multimodal target across the variants.
                        no_action: seed == 2,
                        no_gap: seed == 3,
                        no_user_id: (v + seed as usize).is_multiple_of(3),
                        no_mm_target: (v + recent + seed as usize).is_multiple_of(2),
                        // The target item out of the head on one seed in three.
                        no_head_item: seed == 1,
                        ..ModelConfig::named(name).unwrap()
                    };
                    let p = Params::new(seed, &Device::Cpu);
                    let model = build(&cfg, &dims, &p).unwrap();
                    randomise(&p, seed * 100 + v as u64, dir.path());
                    let weights = Named::new(p.named_tensors().unwrap());
                    assert_eq!(weights.has("evidence.weight"), with_evidence);
                    assert_eq!(weights.has("item_labels.weight"), with_labels);
                    assert_eq!(weights.has("user.weight"), !cfg.no_user_id);
                    assert_eq!(weights.has("mm.weight"), !cfg.no_mm_target);
                    let fused = FusedEsu::load(&cfg, &weights).unwrap().expect("covered");
                    let label = format!("{} recent {recent} seed {seed}", cfg.name());
                    for (req, cands) in &requests {
                        let l = with_labels.then_some(&labels);
                        let b = served_batch(&snap, &data, &cfg, *req, cands, with_evidence, l);
                        let (diff, spread) = compare(model.as_ref(), &fused, &b);
                        assert!(diff < 1e-5, "{label}: differs by {diff}");
                        assert!(spread > 1e-3, "{label}: probabilities barely vary");
                        checked += 1;
                    }
                    if !with_evidence {
                        // A training batch: every sample its own user and recent behaviours.
                        let kinds: Vec<SeqKind> = cfg.sequences().iter().map(|s| s.0).collect();
                        let idx: Vec<usize> = (0..64).collect();
                        let b = make_batch(
                            data.test.held().unwrap(),
                            &idx,
                            &data.vocabs,
                            &data.rows,
                            &data.items,
                            &kinds,
                            &Device::Cpu,
                        )
                        .unwrap();
                        let (diff, _) = compare(model.as_ref(), &fused, &b);
                        assert!(diff < 1e-5, "{label}, training batch: differs by {diff}");
                    }
                }
            }
        }
    }
    assert_eq!(checked, inputs.len() * names.len() * 2 * 3 * requests.len());
}

#[test]
fn models_the_fused_forward_does_not_cover_fall_back() {
    let (_dir, data) = common::small();
    for name in [
        "din",
        "muse",
        "sim-hard",
        "no-seq",
        "siren-hard+crocodile-m2",
    ] {
        let cfg = ModelConfig {
            dim: 16,
            ..ModelConfig::named(name).unwrap()
        };
        let p = Params::new(1, &Device::Cpu);
        build(&cfg, &data.dims(), &p).unwrap();
        let weights = Named::new(p.named_tensors().unwrap());
        assert!(FusedEsu::load(&cfg, &weights).unwrap().is_none(), "{name}");
    }
}

/// A loaded SIREN checkpoint is served by the fused forward, a baseline by candle.
#[test]
fn served_siren_models_use_the_fused_forward() {
    use siren_model::train::{train, TrainConfig};
    let (_dir, data) = common::small();
    for (name, fused) in [("siren-hard", true), ("din", false)] {
        let tc = TrainConfig {
            epochs: 1,
            batch_size: 256,
            ..TrainConfig::default()
        };
        let t = train(&common::cfg(name), &tc, &data).unwrap();
        let ck = tempfile::tempdir().unwrap();
        t.save(ck.path(), &data.vocabs, data.levels).unwrap();
        let m = siren_serve::ServedModel::load(ck.path()).unwrap();
        assert_eq!(m.is_fused(), fused, "{name}");
    }
}
