//! Ranking metrics for click models: AUC, GAUC and log loss.
//!
//! Every function takes the whole test set at once. AUC is not decomposable: the mean of
//! per-batch AUCs weights batches instead of (positive, negative) pairs and ignores every pair
//! that straddles two batches, and GAUC needs all of a user's impressions together.
//!
//! Labels are `f32` because that is what the training tensors hold; a label above 0.5 is a
//! positive. Mismatched slice lengths are a bug in the caller, so they panic instead of being
//! reported as a value.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::data::Impression;

/// How far from 0 and 1 [`log_loss`] clamps a probability: one confident mistake then costs
/// about 16.1 nats instead of infinity, so a single outlier cannot make the mean meaningless.
pub const LOG_LOSS_EPS: f64 = 1e-7;

fn is_positive(label: f32) -> bool {
    label > 0.5
}

/// ROC AUC: the probability that a random positive scores above a random negative, a tie
/// counting one half (the Mann-Whitney U statistic, equivalent to average ranks).
///
/// `None` when the input is empty, holds a single class (AUC is undefined), or any score is
/// NaN: a model that outputs NaN has no ranking, and a number would hide that.
///
/// # Panics
/// When `scores` and `labels` differ in length.
pub fn auc(scores: &[f32], labels: &[f32]) -> Option<f64> {
    assert_eq!(
        scores.len(),
        labels.len(),
        "auc: scores and labels differ in length"
    );
    if scores.iter().any(|s| s.is_nan()) {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_unstable_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    auc_of_sorted(&order, scores, labels)
}

/// AUC of the impressions `order` points at, which must be sorted by ascending score with no
/// NaN among them.
fn auc_of_sorted(order: &[usize], scores: &[f32], labels: &[f32]) -> Option<f64> {
    // Twice the pair count, in integers: exact for any test set size, so the result does not
    // depend on the order in which equal-score groups happen to be summed.
    let mut twice_wins: u128 = 0;
    let mut negatives_below: u64 = 0;
    let mut positives: u64 = 0;
    let mut i = 0;
    while i < order.len() {
        let score = scores[order[i]];
        let (mut pos, mut neg) = (0u64, 0u64);
        // `==` rather than `total_cmp` so that -0.0 and 0.0, adjacent in the sort, tie.
        while i < order.len() && scores[order[i]] == score {
            if is_positive(labels[order[i]]) {
                pos += 1;
            } else {
                neg += 1;
            }
            i += 1;
        }
        twice_wins += 2 * u128::from(pos) * u128::from(negatives_below);
        twice_wins += u128::from(pos) * u128::from(neg);
        negatives_below += neg;
        positives += pos;
    }
    let negatives = negatives_below;
    if positives == 0 || negatives == 0 {
        return None;
    }
    Some(twice_wins as f64 / (2.0 * positives as f64 * negatives as f64))
}

/// Group AUC and how much of the test set it covers.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Gauc {
    /// Per-user AUC averaged with each user's impression count as weight.
    pub value: f64,
    /// Users that had both a positive and a negative impression, the only ones with an AUC.
    pub users: usize,
    /// Impressions of those users: how much of the test set `value` speaks for.
    pub impressions: usize,
}

/// GAUC: AUC within each user, averaged with the user's number of impressions as weight.
///
/// A recommender ranks items for one user at a time, so cross-user pairs (a heavy clicker's
/// negative against a light clicker's positive) say nothing about it; GAUC drops them. Users
/// with a single class have no AUC and count in neither the numerator nor the denominator.
///
/// `None` when no user has both classes, or any score is NaN (see [`auc`]).
///
/// # Panics
/// When the three slices differ in length.
pub fn gauc(users: &[u64], scores: &[f32], labels: &[f32]) -> Option<Gauc> {
    let aucs = user_aucs(users, scores, labels)?;
    let impressions: usize = aucs.iter().map(|u| u.impressions).sum();
    if aucs.is_empty() {
        return None;
    }
    let weighted: f64 = aucs.iter().map(|u| u.auc * u.impressions as f64).sum();
    Some(Gauc {
        value: weighted / impressions as f64,
        users: aucs.len(),
        impressions,
    })
}

/// One user's AUC and impression count.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UserAuc {
    pub user: u64,
    pub auc: f64,
    pub impressions: usize,
}

/// The AUC of every user that has both classes, in user order; `None` when any score is NaN.
///
/// # Panics
/// When the three slices differ in length.
pub fn user_aucs(users: &[u64], scores: &[f32], labels: &[f32]) -> Option<Vec<UserAuc>> {
    assert_eq!(
        users.len(),
        scores.len(),
        "gauc: users and scores differ in length"
    );
    assert_eq!(
        scores.len(),
        labels.len(),
        "gauc: scores and labels differ in length"
    );
    if scores.iter().any(|s| s.is_nan()) {
        return None;
    }
    // One sort by (user, score) groups the users and orders each group for `auc_of_sorted`.
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_unstable_by(|&a, &b| {
        users[a]
            .cmp(&users[b])
            .then(scores[a].total_cmp(&scores[b]))
    });
    let mut out = Vec::new();
    let mut start = 0;
    while start < order.len() {
        let user = users[order[start]];
        let mut end = start + 1;
        while end < order.len() && users[order[end]] == user {
            end += 1;
        }
        let group = &order[start..end];
        if let Some(auc) = auc_of_sorted(group, scores, labels) {
            out.push(UserAuc {
                user,
                auc,
                impressions: group.len(),
            });
        }
        start = end;
    }
    Some(out)
}

/// GAUC as MUSE's published code computes it: users grouped within consecutive batches of
/// `batch` rows (in the order given), so a user cut by a batch boundary counts as two groups.
pub fn gauc_per_batch(users: &[u64], scores: &[f32], labels: &[f32], batch: usize) -> Option<Gauc> {
    let batch = batch.max(1);
    let mut keys: std::collections::HashMap<(usize, u64), u64> = std::collections::HashMap::new();
    let grouped: Vec<u64> = users
        .iter()
        .enumerate()
        .map(|(i, &u)| {
            let n = keys.len() as u64;
            *keys.entry((i / batch, u)).or_insert(n)
        })
        .collect();
    gauc(&grouped, scores, labels)
}

/// A point estimate with a 95% percentile bootstrap interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    pub estimate: f64,
    pub lo: f64,
    pub hi: f64,
}

/// Resamples of users drawn for the bootstrap intervals.
pub const BOOTSTRAP_RESAMPLES: usize = 1_000;

/// 95% interval of GAUC over users resampled with replacement (each resample weights its users'
/// AUCs by their impressions, as GAUC does).
pub fn gauc_interval(aucs: &[UserAuc], resamples: usize, seed: u64) -> Option<Interval> {
    paired_interval(aucs, None, resamples, seed)
}

/// 95% interval of GAUC(a) − GAUC(b) with the same users resampled for both: the users that have
/// an AUC under both (the same test set scored by two models has the same users).
pub fn gauc_difference_interval(
    a: &[UserAuc],
    b: &[UserAuc],
    resamples: usize,
    seed: u64,
) -> Option<Interval> {
    let bmap: std::collections::HashMap<u64, &UserAuc> = b.iter().map(|u| (u.user, u)).collect();
    let (pa, pb): (Vec<UserAuc>, Vec<UserAuc>) = a
        .iter()
        .filter_map(|u| bmap.get(&u.user).map(|v| (*u, **v)))
        .unzip();
    paired_interval(&pa, Some(&pb), resamples, seed)
}

fn paired_interval(
    a: &[UserAuc],
    b: Option<&[UserAuc]>,
    resamples: usize,
    seed: u64,
) -> Option<Interval> {
    use rand::{Rng, SeedableRng};
    if a.is_empty() || resamples == 0 {
        return None;
    }
    let stat = |pick: &mut dyn Iterator<Item = usize>| {
        let (mut wa, mut wb, mut n) = (0.0f64, 0.0f64, 0.0f64);
        for i in pick {
            let w = a[i].impressions as f64;
            wa += a[i].auc * w;
            if let Some(b) = b {
                wb += b[i].auc * w;
            }
            n += w;
        }
        (wa - wb) / n
    };
    let estimate = stat(&mut (0..a.len()));
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut draws: Vec<f64> = (0..resamples)
        .map(|_| {
            let idx: Vec<usize> = (0..a.len()).map(|_| rng.random_range(0..a.len())).collect();
            stat(&mut idx.into_iter())
        })
        .collect();
    draws.sort_by(f64::total_cmp);
    let at = |q: f64| draws[((q * (resamples - 1) as f64).round() as usize).min(resamples - 1)];
    Some(Interval {
        estimate,
        lo: at(0.025),
        hi: at(0.975),
    })
}

/// Mean binary cross-entropy in nats, probabilities clamped to
/// [[`LOG_LOSS_EPS`], 1 - [`LOG_LOSS_EPS`]].
///
/// Unlike AUC it judges calibration, which matters when scores are used as probabilities
/// (bidding, mixing with other scores). NaN for an empty input (a mean of nothing) and when any
/// probability is NaN, so that a broken model cannot report a good loss.
///
/// # Panics
/// When `probs` and `labels` differ in length.
pub fn log_loss(probs: &[f32], labels: &[f32]) -> f64 {
    assert_eq!(
        probs.len(),
        labels.len(),
        "log_loss: probs and labels differ in length"
    );
    if probs.is_empty() {
        return f64::NAN;
    }
    let total: f64 = probs
        .iter()
        .zip(labels)
        .map(|(&p, &y)| {
            // In f64: 1 - 1e-7 is not representable in f32 and would round to a different clamp.
            let p = f64::from(p).clamp(LOG_LOSS_EPS, 1.0 - LOG_LOSS_EPS);
            if is_positive(y) {
                -p.ln()
            } else {
                -(1.0 - p).ln()
            }
        })
        .sum();
    total / probs.len() as f64
}

/// The metrics of one model on one test set, in the form the reports store.
///
/// The undefined cases are `None` rather than NaN so that the struct survives a JSON round trip
/// (serde_json writes NaN as `null` and cannot read it back as `f64`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RankingMetrics {
    pub auc: Option<f64>,
    pub gauc: Option<f64>,
    /// Users that entered GAUC (both classes present); 0 when `gauc` is `None`.
    pub gauc_users: usize,
    /// `None` for an empty test set or NaN probabilities.
    pub log_loss: Option<f64>,
    /// Impressions in the test set.
    pub n: usize,
    pub positives: usize,
}

impl RankingMetrics {
    /// All metrics of one test set; `probs` are the model's predicted click probabilities
    /// (after the sigmoid), which rank the same as logits but are also what log loss needs.
    ///
    /// # Panics
    /// When the three slices differ in length.
    pub fn compute(users: &[u64], probs: &[f32], labels: &[f32]) -> RankingMetrics {
        let g = gauc(users, probs, labels);
        let ll = log_loss(probs, labels);
        RankingMetrics {
            auc: auc(probs, labels),
            gauc: g.map(|g| g.value),
            gauc_users: g.map_or(0, |g| g.users),
            log_loss: (!ll.is_nan()).then_some(ll),
            n: probs.len(),
            positives: labels.iter().filter(|&&y| is_positive(y)).count(),
        }
    }
}

/// The metrics of one domain's impressions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DomainMetrics {
    pub domain: u16,
    pub metrics: RankingMetrics,
}

/// Metrics per domain (ascending), and over the tail: every domain but `head`, with GAUC grouped
/// by (user, domain) so that a user's impressions in two tail domains are not ranked against
/// each other. The tail is `None` when every impression is in `head`.
///
/// # Panics
/// When the four slices differ in length.
pub fn per_domain(
    users: &[u64],
    domains: &[u16],
    probs: &[f32],
    labels: &[f32],
    head: u16,
) -> (Vec<DomainMetrics>, Option<RankingMetrics>) {
    assert_eq!(users.len(), domains.len(), "per_domain: length mismatch");
    let mut ids: Vec<u16> = domains.to_vec();
    ids.sort_unstable();
    ids.dedup();
    let pick = |keep: &dyn Fn(u16) -> bool, key: &dyn Fn(usize) -> u64| {
        let idx: Vec<usize> = (0..users.len()).filter(|&i| keep(domains[i])).collect();
        let u: Vec<u64> = idx.iter().map(|&i| key(i)).collect();
        let p: Vec<f32> = idx.iter().map(|&i| probs[i]).collect();
        let y: Vec<f32> = idx.iter().map(|&i| labels[i]).collect();
        RankingMetrics::compute(&u, &p, &y)
    };
    let each = ids
        .iter()
        .map(|&d| DomainMetrics {
            domain: d,
            metrics: pick(&|x| x == d, &|i| users[i]),
        })
        .collect();
    // Dense keys for (user, domain) pairs: user ids use all 64 bits.
    let mut pairs: HashMap<(u64, u16), u64> = HashMap::new();
    let keys: Vec<u64> = (0..users.len())
        .map(|i| {
            let n = pairs.len() as u64;
            *pairs.entry((users[i], domains[i])).or_insert(n)
        })
        .collect();
    let tail = ids
        .iter()
        .any(|&d| d != head)
        .then(|| pick(&|x| x != head, &|i| keys[i]));
    (each, tail)
}

/// Metrics of scored impressions per domain and over the tail (every domain but `head`).
pub fn score_domains(
    imps: &[Impression],
    scores: &[f32],
    head: u16,
) -> (Vec<DomainMetrics>, Option<RankingMetrics>) {
    per_domain(
        &imps.iter().map(|i| i.user).collect::<Vec<_>>(),
        &imps.iter().map(|i| i.domain).collect::<Vec<_>>(),
        scores,
        &imps.iter().map(|i| i.label).collect::<Vec<_>>(),
        head,
    )
}

/// Mean and sample standard deviation (NaN for no values, 0 spread for one).
pub fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let m = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 {
        v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (m, var.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    /// Every (positive, negative) pair, the definition AUC is a fast way of computing.
    fn brute_auc(scores: &[f32], labels: &[f32]) -> Option<f64> {
        let (mut wins, mut pairs) = (0.0f64, 0u64);
        for (i, &si) in scores.iter().enumerate() {
            if !is_positive(labels[i]) {
                continue;
            }
            for (j, &sj) in scores.iter().enumerate() {
                if is_positive(labels[j]) {
                    continue;
                }
                pairs += 1;
                if si > sj {
                    wins += 1.0;
                } else if si == sj {
                    wins += 0.5;
                }
            }
        }
        (pairs > 0).then(|| wins / pairs as f64)
    }

    fn brute_gauc(users: &[u64], scores: &[f32], labels: &[f32]) -> Option<Gauc> {
        let mut by_user: BTreeMap<u64, (Vec<f32>, Vec<f32>)> = BTreeMap::new();
        for i in 0..users.len() {
            let e = by_user.entry(users[i]).or_default();
            e.0.push(scores[i]);
            e.1.push(labels[i]);
        }
        let (mut num, mut den, mut n_users) = (0.0, 0usize, 0usize);
        for (s, l) in by_user.values() {
            if let Some(a) = brute_auc(s, l) {
                num += a * s.len() as f64;
                den += s.len();
                n_users += 1;
            }
        }
        (n_users > 0).then(|| Gauc {
            value: num / den as f64,
            users: n_users,
            impressions: den,
        })
    }

    #[test]
    fn auc_perfect_inverted_and_textbook() {
        let labels = [0.0, 0.0, 1.0, 1.0];
        assert_eq!(auc(&[0.1, 0.2, 0.8, 0.9], &labels), Some(1.0));
        assert_eq!(auc(&[0.9, 0.8, 0.2, 0.1], &labels), Some(0.0));
        // scikit-learn's roc_auc_score example.
        assert_eq!(auc(&[0.1, 0.4, 0.35, 0.8], &labels), Some(0.75));
        // Order of the input does not matter.
        assert_eq!(
            auc(&[0.8, 0.35, 0.1, 0.4], &[1.0, 1.0, 0.0, 0.0]),
            Some(0.75)
        );
    }

    #[test]
    fn auc_ties_count_half() {
        assert_eq!(auc(&[0.5; 4], &[0.0, 1.0, 0.0, 1.0]), Some(0.5));
        // Pairs (pos, neg): (0.5, 0.2) = 1, (0.5, 0.5) = 1/2, (0.9, 0.2) = 1, (0.9, 0.5) = 1.
        assert_eq!(
            auc(&[0.2, 0.5, 0.5, 0.9], &[0.0, 1.0, 0.0, 1.0]),
            Some(3.5 / 4.0)
        );
        // -0.0 and 0.0 are equal scores.
        assert_eq!(auc(&[-0.0, 0.0], &[1.0, 0.0]), Some(0.5));
        assert_eq!(auc(&[0.0, -0.0], &[1.0, 0.0]), Some(0.5));
    }

    #[test]
    fn auc_undefined_cases() {
        assert_eq!(auc(&[], &[]), None);
        assert_eq!(auc(&[0.1, 0.9], &[1.0, 1.0]), None);
        assert_eq!(auc(&[0.1, 0.9], &[0.0, 0.0]), None);
        assert_eq!(auc(&[0.1, f32::NAN], &[0.0, 1.0]), None);
        // Labels are thresholded at 0.5.
        assert_eq!(auc(&[0.1, 0.9], &[0.4, 0.6]), Some(1.0));
    }

    #[test]
    #[should_panic(expected = "differ in length")]
    fn auc_length_mismatch_panics() {
        auc(&[0.1, 0.2], &[1.0]);
    }

    #[test]
    fn gauc_weights_by_impressions_and_skips_one_class_users() {
        let users = [1, 1, 2, 2, 2, 3, 3];
        let scores = [0.1, 0.9, 0.8, 0.3, 0.5, 0.4, 0.6];
        let labels = [0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0];
        // User 1: AUC 1 over 2 impressions; user 2: AUC 0 over 3; user 3 has no positive.
        let g = gauc(&users, &scores, &labels).unwrap();
        assert!(close(g.value, 2.0 / 5.0));
        assert_eq!((g.users, g.impressions), (2, 5));
        // The global AUC mixes users and differs: 6 wins in 2 positives x 5 negatives.
        assert!(close(auc(&scores, &labels).unwrap(), 6.0 / 10.0));
    }

    #[test]
    fn gauc_undefined_cases() {
        assert_eq!(gauc(&[], &[], &[]), None);
        // Both classes overall, but never within one user.
        assert_eq!(gauc(&[1, 2], &[0.3, 0.7], &[1.0, 0.0]), None);
        assert_eq!(gauc(&[1, 1], &[0.3, f32::NAN], &[1.0, 0.0]), None);
    }

    /// MUSE's per-batch GAUC: one batch covering everything is the whole-set GAUC; a user
    /// cut by a batch boundary becomes two groups.
    #[test]
    fn gauc_per_batch_groups_users_within_batches() {
        let users = [1, 1, 1, 1, 2, 2];
        let scores = [0.9, 0.1, 0.2, 0.8, 0.4, 0.6];
        let labels = [1.0, 0.0, 1.0, 0.0, 0.0, 1.0];
        assert_eq!(
            gauc_per_batch(&users, &scores, &labels, 100),
            gauc(&users, &scores, &labels)
        );
        // Batches of 2: user 1 becomes two groups (AUC 1, then 0), user 2 one (AUC 1): 2/3.
        // Over the whole set user 1 wins 3 of 4 pairs: (0.75·4 + 1·2) / 6.
        assert!(close(
            gauc_per_batch(&users, &scores, &labels, 2).unwrap().value,
            2.0 / 3.0
        ));
        assert!(close(
            gauc(&users, &scores, &labels).unwrap().value,
            5.0 / 6.0
        ));
    }

    /// The bootstrap interval holds its estimate, narrows with more users, and a model compared
    /// with itself differs by exactly zero.
    #[test]
    fn bootstrap_intervals() {
        let aucs = |n: usize| -> Vec<UserAuc> {
            (0..n)
                .map(|u| UserAuc {
                    user: u as u64,
                    auc: 0.5 + 0.4 * ((u * 7919) % 100) as f64 / 100.0,
                    impressions: 2 + u % 5,
                })
                .collect()
        };
        let small = gauc_interval(&aucs(20), BOOTSTRAP_RESAMPLES, 1).unwrap();
        let large = gauc_interval(&aucs(2_000), BOOTSTRAP_RESAMPLES, 1).unwrap();
        assert!(small.lo <= small.estimate && small.estimate <= small.hi);
        assert!(large.hi - large.lo < small.hi - small.lo);
        let same = gauc_difference_interval(&aucs(50), &aucs(50), 200, 3).unwrap();
        assert_eq!((same.estimate, same.lo, same.hi), (0.0, 0.0, 0.0));
        assert_eq!(gauc_interval(&[], 10, 1), None);
    }

    #[test]
    fn log_loss_values() {
        assert!(close(log_loss(&[0.5, 0.5], &[1.0, 0.0]), 2f64.ln()));
        let expect = -(0.9f32 as f64).ln() - (1.0 - 0.2f32 as f64).ln();
        assert!(close(log_loss(&[0.9, 0.2], &[1.0, 0.0]), expect / 2.0));
        // Clamped: a certain mistake is finite (1 - (1 - eps) is eps only up to rounding), a
        // certain hit is nearly free.
        assert!((log_loss(&[1.0], &[0.0]) + LOG_LOSS_EPS.ln()).abs() < 1e-8);
        assert!(close(log_loss(&[0.0], &[1.0]), -(LOG_LOSS_EPS.ln())));
        assert!(log_loss(&[1.0, 0.0], &[1.0, 0.0]) < 1e-6);
        assert!(log_loss(&[], &[]).is_nan());
        assert!(log_loss(&[f32::NAN], &[1.0]).is_nan());
    }

    #[test]
    fn metrics_compute_and_json_round_trip() {
        let users = [1, 1, 2, 2];
        let probs = [0.2, 0.7, 0.6, 0.4];
        let labels = [0.0, 1.0, 0.0, 1.0];
        let m = RankingMetrics::compute(&users, &probs, &labels);
        // Each user is ranked perfectly or inversely (GAUC 1/2) but across users 0.7 and 0.4
        // beat 0.2, and 0.7 beats 0.6.
        assert_eq!(m.auc, Some(0.75));
        assert_eq!(m.gauc, Some(0.5));
        assert_eq!(m.gauc_users, 2);
        assert_eq!((m.n, m.positives), (4, 2));
        assert!(close(m.log_loss.unwrap(), log_loss(&probs, &labels)));
        let back: RankingMetrics =
            serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
        assert_eq!(back, m);

        let empty = RankingMetrics::compute(&[], &[], &[]);
        assert_eq!(
            empty,
            RankingMetrics {
                auc: None,
                gauc: None,
                gauc_users: 0,
                log_loss: None,
                n: 0,
                positives: 0
            }
        );
        let back: RankingMetrics =
            serde_json::from_str(&serde_json::to_string(&empty).unwrap()).unwrap();
        assert_eq!(back, empty);
    }

    /// Scores from a small set so that ties are common, labels 0/1.
    fn impressions(max: usize) -> impl Strategy<Value = Vec<(u64, f32, f32)>> {
        proptest::collection::vec(
            (
                0u64..6,
                (0u8..8).prop_map(|s| f32::from(s) / 8.0),
                prop::bool::ANY.prop_map(|b| if b { 1.0 } else { 0.0 }),
            ),
            0..max,
        )
    }

    fn unzip3(v: &[(u64, f32, f32)]) -> (Vec<u64>, Vec<f32>, Vec<f32>) {
        (
            v.iter().map(|t| t.0).collect(),
            v.iter().map(|t| t.1).collect(),
            v.iter().map(|t| t.2).collect(),
        )
    }

    proptest! {
        #[test]
        fn auc_matches_pair_count(v in impressions(200)) {
            let (_, scores, labels) = unzip3(&v);
            let fast = auc(&scores, &labels);
            let slow = brute_auc(&scores, &labels);
            prop_assert_eq!(fast.is_some(), slow.is_some());
            if let (Some(f), Some(s)) = (fast, slow) {
                prop_assert!(close(f, s), "fast {} brute {}", f, s);
                // Negating the scores mirrors the ranking.
                let neg: Vec<f32> = scores.iter().map(|s| -s).collect();
                prop_assert!(close(auc(&neg, &labels).unwrap(), 1.0 - f));
            }
        }

        #[test]
        fn auc_matches_pair_count_continuous(
            v in proptest::collection::vec((-1e3f32..1e3, prop::bool::ANY), 0..100)
        ) {
            let scores: Vec<f32> = v.iter().map(|t| t.0).collect();
            let labels: Vec<f32> = v.iter().map(|t| if t.1 { 1.0 } else { 0.0 }).collect();
            let fast = auc(&scores, &labels);
            let slow = brute_auc(&scores, &labels);
            prop_assert_eq!(fast.is_some(), slow.is_some());
            if let (Some(f), Some(s)) = (fast, slow) {
                prop_assert!(close(f, s), "fast {} brute {}", f, s);
            }
        }

        #[test]
        fn gauc_matches_per_user_brute_force(v in impressions(200)) {
            let (users, scores, labels) = unzip3(&v);
            let fast = gauc(&users, &scores, &labels);
            let slow = brute_gauc(&users, &scores, &labels);
            prop_assert_eq!(fast.is_some(), slow.is_some());
            if let (Some(f), Some(s)) = (fast, slow) {
                prop_assert!(close(f.value, s.value), "fast {:?} brute {:?}", f, s);
                prop_assert_eq!((f.users, f.impressions), (s.users, s.impressions));
            }
        }
    }
}
