//! Item click statistics: how often each item was shown and clicked in the labelled impressions
//! a model trains on, as a feature of the target.
//!
//! Part of an item's click rate is its own (a planted latent quality in the synthetic data, the
//! title or the price in a real catalog) and nothing in any user's history shows it; only the
//! labels of the item's own impressions do. An ID embedding learns it slowly, a few sparse
//! updates per impression; counts shrunk towards the overall rate give it at once, the way the
//! Bayes ceiling of the synthetic data estimates it.
//!
//! *No sample sees its own label.* A training sample at time `t` counts the training
//! impressions of its item strictly before `t` ([`LabelTime::AsOf`]). A served candidate, and
//! every validation and test sample (which stand for serving), counts all of them
//! ([`LabelTime::Final`]): a model trained on labels up to some time serves after it, and
//! knows them all then. The checkpoint keeps those totals ([`ItemLabelTable`]); the validation
//! and test labels are never counted.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::data::Impression;
use crate::error::Result;
use crate::features::SampleSet;

/// Numbers per sample: log(1 + impressions) and the click rate's log-odds against the overall
/// rate, shrunk towards it with the weight of [`SHRINKAGE`]'s two prior sample sizes.
pub const ITEM_LABEL_FEATURES: usize = 3;

/// Prior sample sizes of the two shrunk rates: a weak prior that moves after a few
/// impressions and a strong one that trusts only well-shown items. The model weighs the two.
pub const SHRINKAGE: [f32; 2] = [2.0, 20.0];

/// Which of an item's training impressions a sample counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabelTime {
    /// Those strictly before the sample's time (training samples).
    AsOf,
    /// All of them (serving, and the validation and test samples that stand for it).
    Final,
}

/// The features of an item shown `shown` times and clicked `clicks` times, where the overall
/// click rate is `prior`.
pub fn label_features(shown: u32, clicks: u32, prior: f32) -> [f32; ITEM_LABEL_FEATURES] {
    let logit = |p: f32| (p / (1.0 - p)).ln();
    let base = logit(prior);
    let shrunk = |m: f32| logit((clicks as f32 + m * prior) / (shown as f32 + m)) - base;
    [
        (shown as f32).ln_1p(),
        shrunk(SHRINKAGE[0]),
        shrunk(SHRINKAGE[1]),
    ]
}

/// Per item, its training impressions' times in order and the clicks up to each: built from
/// the impressions a model trains on, or the totals only, from a checkpoint.
pub struct ItemLabels {
    prior: f32,
    counts: Counts,
}

enum Counts {
    /// Per item: `(ts, clicks among the impressions up to and including this one)`, by time.
    Series(HashMap<u64, Vec<(i64, u32)>>),
    /// Per item: `(impressions, clicks)` over all of them (what a checkpoint keeps).
    Totals(HashMap<u64, (u32, u32)>),
}

impl ItemLabels {
    /// Statistics of `imps` (the training impressions; a label above 0.5 is a click).
    pub fn from_impressions(imps: &[Impression]) -> ItemLabels {
        let mut series: HashMap<u64, Vec<(i64, u32)>> = HashMap::new();
        for i in imps {
            let click = u32::from(i.label > 0.5);
            series.entry(i.item).or_default().push((i.ts, click));
        }
        let mut clicks = 0u64;
        for s in series.values_mut() {
            s.sort_unstable();
            let mut c = 0u32;
            for e in s.iter_mut() {
                c += e.1;
                e.1 = c;
            }
            clicks += u64::from(c);
        }
        ItemLabels {
            prior: overall_rate(clicks, imps.len() as u64),
            counts: Counts::Series(series),
        }
    }

    /// `(impressions, clicks)` of `item` that a sample at `ts` counts. Statistics from a
    /// checkpoint keep totals only: they answer [`LabelTime::AsOf`] as serving does.
    pub fn counts(&self, item: u64, ts: i64, when: LabelTime) -> (u32, u32) {
        match &self.counts {
            Counts::Totals(t) => t.get(&item).copied().unwrap_or((0, 0)),
            Counts::Series(all) => {
                let Some(s) = all.get(&item) else {
                    return (0, 0);
                };
                let n = match when {
                    LabelTime::Final => s.len(),
                    LabelTime::AsOf => s.partition_point(|&(t, _)| t < ts),
                };
                n.checked_sub(1)
                    .map_or((0, 0), |last| (n as u32, s[last].1))
            }
        }
    }

    /// The features of a sample showing `item` at `ts`.
    pub fn features(&self, item: u64, ts: i64, when: LabelTime) -> [f32; ITEM_LABEL_FEATURES] {
        let (shown, clicks) = self.counts(item, ts, when);
        label_features(shown, clicks, self.prior)
    }

    /// Set `set.item_labels` to the features of each of its samples.
    pub fn fill(&self, set: &mut SampleSet, when: LabelTime) {
        set.item_labels = set
            .impressions
            .iter()
            .flat_map(|i| self.features(i.item, i.ts, when))
            .collect();
    }

    /// The totals, as a checkpoint keeps them (items in id order).
    pub fn table(&self) -> ItemLabelTable {
        let mut rows: Vec<(u64, (u32, u32))> = match &self.counts {
            Counts::Totals(t) => t.iter().map(|(&k, &v)| (k, v)).collect(),
            Counts::Series(all) => all
                .iter()
                .map(|(&k, s)| (k, (s.len() as u32, s.last().map_or(0, |e| e.1))))
                .collect(),
        };
        rows.sort_unstable_by_key(|r| r.0);
        ItemLabelTable {
            prior: self.prior,
            items: rows.iter().map(|r| r.0).collect(),
            impressions: rows.iter().map(|r| r.1 .0).collect(),
            clicks: rows.iter().map(|r| r.1 .1).collect(),
        }
    }

    /// Statistics from a checkpoint's table (totals only: [`LabelTime::AsOf`] answers as
    /// [`LabelTime::Final`]).
    pub fn from_table(t: &ItemLabelTable) -> ItemLabels {
        let totals = t
            .items
            .iter()
            .zip(t.impressions.iter().zip(&t.clicks))
            .map(|(&i, (&n, &c))| (i, (n, c)))
            .collect();
        ItemLabels {
            prior: t.prior,
            counts: Counts::Totals(totals),
        }
    }
}

/// The overall click rate, kept away from 0 and 1 so that its log-odds are finite (one
/// pseudo-impression of each kind).
fn overall_rate(clicks: u64, shown: u64) -> f32 {
    ((clicks as f64 + 1.0) / (shown as f64 + 2.0)) as f32
}

/// What a checkpoint keeps of [`ItemLabels`]: the overall rate and per item its impressions
/// and clicks in training, in three columns sorted by item id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemLabelTable {
    pub prior: f32,
    pub items: Vec<u64>,
    pub impressions: Vec<u32>,
    pub clicks: Vec<u32>,
}

impl ItemLabelTable {
    /// The columns agree: equal lengths, ids strictly increasing, clicks at most impressions,
    /// the overall rate inside (0, 1).
    pub fn check(&self) -> Result<(), String> {
        let n = self.items.len();
        if self.impressions.len() != n || self.clicks.len() != n {
            return Err("item label columns differ in length".into());
        }
        if !(self.prior > 0.0 && self.prior < 1.0) {
            return Err(format!("overall click rate {} outside (0, 1)", self.prior));
        }
        if self.items.windows(2).any(|w| w[0] >= w[1]) {
            return Err("item label ids not strictly increasing".into());
        }
        if self
            .clicks
            .iter()
            .zip(&self.impressions)
            .any(|(c, n)| c > n)
        {
            return Err("an item has more clicks than impressions".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn imp(item: u64, ts: i64, label: f32) -> Impression {
        Impression {
            user: 1,
            item,
            ts,
            label,
            domain: 0,
        }
    }

    /// A training sample counts its item's impressions strictly before its time (its own and
    /// any at the same time are not counted); serving counts them all.
    #[test]
    fn as_of_counts_only_earlier_impressions() {
        let imps = [
            imp(7, 30, 1.0),
            imp(7, 10, 0.0),
            imp(7, 20, 1.0),
            imp(7, 20, 0.0),
            imp(8, 5, 1.0),
        ];
        let l = ItemLabels::from_impressions(&imps);
        for (ts, want) in [
            (10, (0, 0)),
            (11, (1, 0)),
            (20, (1, 0)),
            (21, (3, 1)),
            (31, (4, 2)),
        ] {
            assert_eq!(l.counts(7, ts, LabelTime::AsOf), want, "at {ts}");
        }
        assert_eq!(l.counts(7, 0, LabelTime::Final), (4, 2));
        assert_eq!(l.counts(9, 100, LabelTime::AsOf), (0, 0));
        // A plain loop over the impressions agrees everywhere.
        for item in [7, 8, 9] {
            for ts in 0..40 {
                let before = imps.iter().filter(|i| i.item == item && i.ts < ts);
                let want = (
                    before.clone().count() as u32,
                    before.filter(|i| i.label > 0.5).count() as u32,
                );
                assert_eq!(l.counts(item, ts, LabelTime::AsOf), want);
            }
        }
    }

    /// An unseen item has the overall rate (log-odds 0 against it); clicks raise the shrunk
    /// rates, the weak prior more than the strong one; the checkpoint's table gives the totals.
    #[test]
    fn features_shrink_towards_the_overall_rate_and_survive_the_table() {
        let mut imps: Vec<Impression> = (0..10).map(|t| imp(1, t, 1.0)).collect();
        imps.extend((0..30).map(|t| imp(2, t, 0.0)));
        let l = ItemLabels::from_impressions(&imps);
        let unseen = l.features(3, 99, LabelTime::Final);
        assert_eq!(unseen, [0.0, 0.0, 0.0]);
        let hot = l.features(1, 99, LabelTime::Final);
        assert!(hot[0] > 2.0 && hot[1] > hot[2] && hot[2] > 0.0, "{hot:?}");
        let cold = l.features(2, 99, LabelTime::Final);
        assert!(cold[1] < 0.0 && cold[2] < 0.0, "{cold:?}");
        let t = l.table();
        t.check().unwrap();
        assert_eq!(t.items, [1, 2]);
        let back = ItemLabels::from_table(&t);
        for item in [1, 2, 3] {
            assert_eq!(
                back.features(item, 5, LabelTime::AsOf),
                l.features(item, 5, LabelTime::Final)
            );
        }
        let mut bad = t.clone();
        bad.clicks[0] = 11;
        assert!(bad.check().is_err());
        let mut bad = t;
        bad.items.reverse();
        assert!(bad.check().is_err());
    }
}
