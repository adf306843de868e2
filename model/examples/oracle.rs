//! Research: GAUC of oracles that know part of the planted click model.
use siren_model::dataset::DatasetDir;
use siren_model::metrics::gauc;
use siren_model::synth::{Planted, PlantedConfig};

fn main() {
    let dir = DatasetDir::new(std::env::args().nth(1).expect("dataset dir"));
    let meta = dir.read_meta().unwrap();
    let cfg: PlantedConfig = serde_json::from_value(meta.details["config"].clone()).unwrap();
    let splits = dir.read_splits(&meta).unwrap();
    let p = Planted::new(cfg.clone());
    let pos: std::collections::HashMap<u64, usize> =
        p.catalog.items.iter().enumerate().map(|(i, it)| (it.id, i)).collect();
    let imps = &splits.valid;
    let users: Vec<u64> = imps.iter().map(|i| i.user).collect();
    let labels: Vec<f32> = imps.iter().map(|i| i.label).collect();
    let score = |f: &dyn Fn(&siren_model::synth::Profile, usize) -> f64| -> f64 {
        let s: Vec<f32> = imps.iter().map(|i| { let prof = p.profile(i.user); f(&prof, pos[&i.item]) as f32 }).collect();
        gauc(&users, &s, &labels).unwrap().value
    };
    let c = |idx: usize| p.catalog.cluster[idx];
    println!("full truth: {:.4}", score(&|pr, i| p.click_probability(pr, i, 0)));
    println!("long+current+pop (no quality): {:.4}", score(&|pr, i| cfg.w_long * f64::from(u8::from(pr.long_term.contains(&c(i)))) + cfg.w_current * f64::from(u8::from(pr.current.contains(&c(i)))) + cfg.w_popularity * p.popularity[i]));
    println!("long+current: {:.4}", score(&|pr, i| cfg.w_long * f64::from(u8::from(pr.long_term.contains(&c(i)))) + cfg.w_current * f64::from(u8::from(pr.current.contains(&c(i))))));
    println!("current+pop+quality: {:.4}", score(&|pr, i| cfg.w_current * f64::from(u8::from(pr.current.contains(&c(i)))) + cfg.w_popularity * p.popularity[i] + cfg.w_quality * p.quality[i]));
    println!("pop+quality: {:.4}", score(&|_pr, i| cfg.w_popularity * p.popularity[i] + cfg.w_quality * p.quality[i]));
}
