//! The model crate's test data (a small planted dataset, a hand-made fixture) and what the
//! training path predicts, which serving must reproduce.
#![allow(dead_code)]

#[path = "../../../model/tests/common/mod.rs"]
mod model_common;

pub use model_common::*;
use siren_model::data::Impression;
use siren_model::features::ItemTable;
use siren_model::train::{predict, Prepared};
use siren_serve::ServedModel;

/// What the training path predicts for `(user, candidate, at)`.
pub fn reference(
    db: &siren_engine::Db,
    data: &Prepared,
    m: &ServedModel,
    imp: Impression,
    cands: &[u64],
) -> Vec<f32> {
    let snap = db.snapshot();
    let imps: Vec<Impression> = cands
        .iter()
        .map(|&item| Impression { item, ..imp })
        .collect();
    let prepared = Prepared::for_scoring(
        &snap,
        ItemTable::from_snapshot(&snap, data.items.dim),
        &imps,
        m.config.sample_spec(),
        m.config.item_labels.as_ref(),
        m.config.vocabs.clone(),
        m.config.levels,
        1,
    )
    .unwrap();
    let loaded = siren_model::train::load_checkpoint(m.source()).unwrap();
    predict(
        loaded.model.as_ref(),
        &m.config.model,
        &prepared,
        &prepared.test,
        1024,
    )
    .unwrap()
}
