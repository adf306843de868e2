//! Labelled impressions: what every importer yields, split by time into train, validation and
//! test.

use serde::{Deserialize, Serialize};

/// A labelled impression: `user` was shown `item` at `ts` (ms) in `domain` (the scenario or
/// surface) and clicked (1) or not (0). Its features are read from the engine with `as_of = ts`,
/// so nothing at or after `ts` is seen.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Impression {
    pub user: u64,
    pub item: u64,
    pub ts: i64,
    pub label: f32,
    #[serde(default)]
    pub domain: u16,
}

/// Impressions of one dataset, split.
#[derive(Debug, Clone, Default)]
pub struct Splits {
    pub train: Vec<Impression>,
    pub valid: Vec<Impression>,
    pub test: Vec<Impression>,
}
