//! Multi-domain learning: the long-tailed synthetic domains, the covariance penalty, Crocodile
//! and its baselines trained for real on a small planted dataset.

mod common;

use candle_core::{Device, Tensor};
use siren_model::batch::make_batch;
use siren_model::collapse;
use siren_model::metrics::per_domain;
use siren_model::models::domain::cross_covariance_penalty;
use siren_model::models::{DomainMode, ModelConfig};
use siren_model::synth::{Planted, PlantedConfig, DOMAIN_BLOCK};
use siren_model::train::{evaluate, load_checkpoint, train};

#[test]
fn names_parse_and_print_back() {
    for name in [
        "din+shared-bottom",
        "din+mmoe",
        "din+mmoe-m4",
        "din+crocodile",
        "din+crocodile-nocov",
        "siren-hard+crocodile-m2-cov0.5",
    ] {
        assert_eq!(ModelConfig::named(name).unwrap().name(), name);
    }
    let c = ModelConfig::named("din+crocodile-m2-cov0.5").unwrap();
    assert_eq!(
        (c.domain, c.experts, c.cov_weight),
        (DomainMode::Crocodile, 2, 0.5)
    );
    for bad in [
        "din+nope",
        "din+mmoe-cov1",
        "din+shared-bottom-m2",
        "din+crocodile-m0",
        "din+crocodile-m99",
        "din+crocodile-cov-1",
        "din+crocodile-covx",
        "nope+mmoe",
    ] {
        assert!(ModelConfig::named(bad).is_err(), "{bad} was accepted");
    }
}

#[test]
fn synthetic_domains_are_long_tailed_and_differ() {
    let p = Planted::new(PlantedConfig {
        users: 400,
        ..common::multi()
    });
    let mut counts = [0usize; 3];
    let mut events = [0usize; 3];
    let mut mean_p = [0.0f64; 3];
    for u in p.users() {
        let h = p.history(u);
        for e in &h {
            events[usize::from(e.domain)] += 1;
        }
        let imps = p.impressions(u, &h);
        // Blocks of DOMAIN_BLOCK impressions share a domain.
        for block in imps.chunks(DOMAIN_BLOCK) {
            assert!(block
                .iter()
                .all(|t| t.impression.domain == block[0].impression.domain));
        }
        for t in imps {
            counts[usize::from(t.impression.domain)] += 1;
            mean_p[usize::from(t.impression.domain)] += t.p;
        }
    }
    let n: usize = counts.iter().sum();
    let share = |c: usize| c as f64 / n as f64;
    assert!((share(counts[0]) - 0.7).abs() < 0.05, "{counts:?}");
    assert!((share(counts[2]) - 0.1).abs() < 0.04, "{counts:?}");
    let ne: usize = events.iter().sum();
    assert!(
        (events[1] as f64 / ne as f64 - 0.2).abs() < 0.02,
        "{events:?}"
    );
    // The same item is clicked with a different probability in another domain: the tail
    // domains' affinities and per-user interests change the click model.
    let prof = p.profile(1);
    let differs = (0..p.catalog.items.len())
        .filter(|&i| {
            (p.click_probability(&prof, i, 0) - p.click_probability(&prof, i, 1)).abs() > 0.05
        })
        .count();
    assert!(differs > p.catalog.items.len() / 4, "{differs}");
    // A single-domain configuration draws nothing new: all domain 0.
    let single = Planted::new(PlantedConfig {
        users: 3,
        domain_shares: vec![1.0],
        ..common::multi()
    });
    for u in single.users() {
        let h = single.history(u);
        assert!(h.iter().all(|e| e.domain == 0));
        assert!(single
            .impressions(u, &h)
            .iter()
            .all(|t| t.impression.domain == 0));
    }
}

#[test]
fn covariance_penalty_matches_its_definition() {
    let dev = Device::Cpu;
    // Hand-computed: centred A = [[1, 0], [-1, 0]], B = [[0, 1], [0, -1]]; A^T B / 2 =
    // [[0, 1], [0, 0]]; L1 1 over d^2 = 4.
    let a = Tensor::new(&[[2.0f32, 5.0], [0.0, 5.0]], &dev).unwrap();
    let b = Tensor::new(&[[3.0f32, 1.0], [3.0, -1.0]], &dev).unwrap();
    let v = cross_covariance_penalty(&[a.clone(), b.clone()])
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!((v - 0.25).abs() < 1e-6, "{v}");
    // Three experts: the sum over the three unordered pairs, checked by loops.
    let rows = 7;
    let d = 3;
    let gen = |k: usize| -> Vec<f32> {
        (0..rows * d)
            .map(|i| (((i * 31 + k * 17) % 13) as f32 - 6.0) / 4.0)
            .collect()
    };
    let xs: Vec<Vec<f32>> = (0..3).map(gen).collect();
    let ts: Vec<Tensor> = xs
        .iter()
        .map(|x| Tensor::from_vec(x.clone(), (rows, d), &dev).unwrap())
        .collect();
    let centred: Vec<Vec<f64>> = xs
        .iter()
        .map(|x| {
            let mut c: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
            for j in 0..d {
                let m = (0..rows).map(|r| c[r * d + j]).sum::<f64>() / rows as f64;
                for r in 0..rows {
                    c[r * d + j] -= m;
                }
            }
            c
        })
        .collect();
    let mut want = 0.0;
    for i in 0..3 {
        for j in i + 1..3 {
            for p in 0..d {
                for q in 0..d {
                    let cov: f64 = (0..rows)
                        .map(|r| centred[i][r * d + p] * centred[j][r * d + q])
                        .sum::<f64>()
                        / rows as f64;
                    want += cov.abs() / (d * d) as f64;
                }
            }
        }
    }
    let got = f64::from(
        cross_covariance_penalty(&ts)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap(),
    );
    assert!((got - want).abs() < 1e-5, "{got} vs {want}");
    // Uncorrelated experts (one constant over the batch) cost nothing.
    let constant = Tensor::ones((2, 2), candle_core::DType::F32, &dev).unwrap();
    let zero = cross_covariance_penalty(&[a, constant])
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert_eq!(zero, 0.0);
}

#[test]
fn every_multi_domain_model_trains_scores_per_domain_and_round_trips() {
    let (_dir, _db, data) = common::small_from(common::multi());
    assert_eq!(data.vocabs.domain.ids, vec![0, 1, 2], "most frequent first");
    let dev = Device::Cpu;
    let imps = data.test.impressions();
    for name in [
        "din+shared-bottom",
        "din+mmoe-m2",
        "din+crocodile-m2",
        "siren-hard+crocodile-m2",
    ] {
        let cfg = common::cfg(name);
        let t = train(&cfg, &common::tcfg(1), &data).unwrap();
        let penalty = t.history[0].train_penalty;
        assert_eq!(
            penalty.is_some(),
            cfg.domain == DomainMode::Crocodile,
            "{name}: {penalty:?}"
        );
        let (m, scores) = evaluate(t.model.as_ref(), &cfg, &data, &data.test).unwrap();
        assert!(m.gauc.unwrap() > 0.5, "{name}: {m:?}");
        let (each, tail) = per_domain(
            &imps.iter().map(|i| i.user).collect::<Vec<_>>(),
            &imps.iter().map(|i| i.domain).collect::<Vec<_>>(),
            &scores,
            &imps.iter().map(|i| i.label).collect::<Vec<_>>(),
            0,
        );
        assert_eq!(each.iter().map(|d| d.domain).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(
            each.iter().map(|d| d.metrics.n).sum::<usize>() - each[0].metrics.n,
            tail.as_ref().unwrap().n
        );
        assert!(each.iter().all(|d| d.metrics.gauc.is_some()), "{each:?}");
        // Crocodile keeps one set of ID tables per expert, others one.
        let tables = collapse::tables(&t.params).unwrap();
        let want = if cfg.domain == DomainMode::Crocodile {
            6
        } else {
            3
        };
        assert_eq!(tables.len(), want, "{name}: {tables:?}");
        assert!(tables
            .iter()
            .all(|c| c.sum_over_max >= 1.0 && c.sum_over_max <= c.dim as f64));
        // The domain changes the score: same samples, every domain swapped for another.
        let idx: Vec<usize> = (0..64.min(data.test.len())).collect();
        let ks: Vec<_> = cfg.sequences().into_iter().map(|(k, _)| k).collect();
        let mut b = make_batch(
            data.test.held().unwrap(),
            &idx,
            &data.vocabs,
            &data.rows,
            &data.items,
            &ks,
            &dev,
        )
        .unwrap();
        let before = t.model.logits(&b).unwrap().to_vec1::<f32>().unwrap();
        let swapped: Vec<u32> = b
            .domain
            .to_vec1::<u32>()
            .unwrap()
            .iter()
            .map(|&d| 3 - d)
            .collect();
        b.domain = Tensor::from_vec(swapped, b.size, &dev).unwrap();
        let after = t.model.logits(&b).unwrap().to_vec1::<f32>().unwrap();
        assert!(
            before.iter().zip(&after).any(|(x, y)| (x - y).abs() > 1e-4),
            "{name} ignores the domain"
        );
        // A checkpoint scores exactly as the trained model.
        let ck = tempfile::tempdir().unwrap();
        t.save(ck.path(), &data.vocabs, data.levels).unwrap();
        let loaded = load_checkpoint(ck.path()).unwrap();
        assert_eq!(loaded.cfg.model, cfg);
        let (m2, scores2) = evaluate(loaded.model.as_ref(), &cfg, &data, &data.test).unwrap();
        assert_eq!(scores, scores2, "{name}");
        assert_eq!(m, m2);
    }
}

#[test]
fn covariance_weight_decorrelates_the_experts() {
    let (_dir, _db, data) = common::small_from(common::multi());
    let run = |name: &str| {
        let t = train(&common::cfg(name), &common::tcfg(2), &data).unwrap();
        t.history.last().unwrap().train_penalty.unwrap()
    };
    let free = run("din+crocodile-m2-nocov");
    let held = run("din+crocodile-m2-cov5");
    assert!(
        held < 0.5 * free,
        "penalty {held} with weight 5 vs {free} without"
    );
}
