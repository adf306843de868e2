//! The partition function: which virtual partition a user belongs to.
//!
//! The function is part of the cluster's contract: a client that hashes on its own side, the
//! router and every node must agree on it forever, so it is spelled out here and in
//! `docs/CLUSTER.md`, and golden vectors pin it:
//!
//! ```text
//! z = user + 0x9E3779B97F4A7C15                  (wrapping, 64 bits)
//! z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9       (wrapping)
//! z = (z ^ (z >> 27)) * 0x94D049BB133111EB       (wrapping)
//! h = z ^ (z >> 31)                              (SplitMix64's output function)
//! partition = (h * partitions) >> 64             (128-bit product: a multiply-shift range map)
//! ```
//!
//! SplitMix64 scrambles sequential ids into uniform 64-bit values; the multiply-shift maps them
//! onto `0..partitions` without a division and with a bias below `partitions / 2^64`.

use crate::error::{Error, Result};

/// Most partitions a cluster may have. Each is a stream with its own Raft group, so more is
/// rarely useful; the bound keeps a mistyped count from creating millions of streams.
pub const MAX_PARTITIONS: u32 = 65_536;

/// SplitMix64's output function applied to `x + golden gamma`.
pub fn mix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The partition of `user` in a cluster of `partitions` partitions (1 to [`MAX_PARTITIONS`]).
pub fn partition_of(user: u64, partitions: u32) -> u32 {
    ((u128::from(mix64(user)) * u128::from(partitions)) >> 64) as u32
}

/// Checks a partition count chosen at cluster creation.
pub fn check_partition_count(partitions: u32) -> Result<()> {
    if partitions == 0 || partitions > MAX_PARTITIONS {
        return Err(Error::invalid(format!(
            "a cluster has 1 to {MAX_PARTITIONS} partitions, got {partitions}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Computed by an independent implementation (Python integers, the formula in the module
    /// documentation). Changing any of these breaks every existing cluster.
    const GOLDEN: &[(u64, u64, [u32; 7])] = &[
        (0, 0xe220a8397b1dcdaf, [0, 1, 2, 6, 226, 904, 57888]),
        (1, 0x910a2dec89025cc1, [0, 1, 1, 3, 145, 580, 37130]),
        (2, 0x975835de1c9756ce, [0, 1, 1, 4, 151, 605, 38744]),
        (3, 0x1d0b14e4db018fed, [0, 0, 0, 0, 29, 116, 7435]),
        (42, 0xbdd732262feb6e95, [0, 1, 2, 5, 189, 759, 48599]),
        (1000, 0x3c1eba8b4dccc148, [0, 0, 0, 1, 60, 240, 15390]),
        (123456789, 0x223c74d93deb7679, [0, 0, 0, 0, 34, 136, 8764]),
        (
            4294967295,
            0x73b13ba2aff181c0,
            [0, 0, 1, 3, 115, 462, 29617],
        ),
        (
            4294967296,
            0xc42c5a1aa3820138,
            [0, 1, 2, 5, 196, 784, 50220],
        ),
        (
            9223372036854775808,
            0x481ec0a212a9f3db,
            [0, 0, 0, 1, 72, 288, 18462],
        ),
        (
            18446744073709551614,
            0xf3203e9039f4a821,
            [0, 1, 2, 6, 243, 972, 62240],
        ),
        (
            18446744073709551615,
            0xe4d971771b652c20,
            [0, 1, 2, 6, 228, 915, 58585],
        ),
        (
            0xDEADBEEFCAFEBABE,
            0x0d7d93560d1929d2,
            [0, 0, 0, 0, 13, 53, 3453],
        ),
    ];
    const COUNTS: [u32; 7] = [1, 2, 3, 7, 256, 1024, 65536];

    #[test]
    fn golden_vectors() {
        for &(user, mixed, parts) in GOLDEN {
            assert_eq!(mix64(user), mixed, "mix64({user})");
            for (n, want) in COUNTS.iter().zip(parts) {
                assert_eq!(partition_of(user, *n), want, "partition_of({user}, {n})");
            }
        }
    }

    #[test]
    fn sequential_ids_spread_evenly() {
        let mut counts = vec![0u32; 256];
        for user in 0..100_000u64 {
            counts[partition_of(user, 256) as usize] += 1;
        }
        // Binomial(100000, 1/256): mean 390.6, sd 19.7; these bounds are over 3 sd out.
        let (lo, hi) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(*lo >= 320 && *hi <= 460, "min {lo} max {hi}");
    }

    #[test]
    fn counts_are_checked() {
        assert!(check_partition_count(0).is_err());
        assert!(check_partition_count(MAX_PARTITIONS + 1).is_err());
        assert!(check_partition_count(256).is_ok());
        assert_eq!(partition_of(u64::MAX, 1), 0);
    }
}
