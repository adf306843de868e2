//! Labelled impressions: what every importer yields, split into train, validation and test
//! (by time, or by user with [`user_split`]).

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

/// Which split a user belongs to when a dataset is split by user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UserSplit {
    Train,
    Valid,
    Test,
}

/// The split of `user` in every dataset split by user: the top four bits of a multiplicative
/// hash of the id put one user in eight in test (0..=1), another one in eight in validation
/// (2..=3) and the rest in training. The synthetic lifelong layout splits with it, and the
/// Taobao-MM importer takes its validation users from the train table with it, so a synthetic
/// dataset exported to that format and imported again has exactly its native validation users.
pub fn user_split(user: u64) -> UserSplit {
    match user.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 60 {
        0..=1 => UserSplit::Test,
        2..=3 => UserSplit::Valid,
        _ => UserSplit::Train,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_split_holds_out_one_user_in_eight_each() {
        let n = 80_000u64;
        let count = |want: UserSplit| (1..=n).filter(|&u| user_split(u) == want).count();
        for (part, share) in [
            (UserSplit::Test, 0.125),
            (UserSplit::Valid, 0.125),
            (UserSplit::Train, 0.75),
        ] {
            let got = count(part) as f64 / n as f64;
            assert!((got - share).abs() < 0.01, "{part:?}: {got}");
        }
        // Fixed forever: datasets written by earlier builds keep their splits.
        use UserSplit::{Test, Train, Valid};
        let first: Vec<UserSplit> = (1..=6).map(user_split).collect();
        assert_eq!(first, [Train, Valid, Train, Train, Test, Train]);
    }
}
