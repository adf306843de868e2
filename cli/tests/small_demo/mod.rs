//! The small `siren demo` that the CLI's tests build on: 12 users, 2,000 items of 16-d
//! embeddings, a SemID codebook of 32 codes per level, one epoch of training.

pub const SMALL_DEMO: [&str; 14] = [
    "--users",
    "12",
    "--min-events",
    "200",
    "--max-events",
    "3000",
    "--items",
    "2000",
    "--dim",
    "16",
    "--codebook",
    "32",
    "--epochs",
    "1",
];
