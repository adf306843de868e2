//! Wall-clock sampling for the comparison command: repeat a closure until both a minimum count
//! and a minimum time are reached, then report percentiles. Criterion gives the statistics for
//! the micro-benchmarks; this is for side-by-side ratios measured in one process and one run.

use std::hint::black_box;
use std::time::{Duration, Instant};

/// Seconds per call.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct Sample {
    pub runs: usize,
    pub p50: f64,
    pub p99: f64,
    pub mean: f64,
    pub min: f64,
}

/// Call `f` once to warm up, then at least `min_runs` times and for at least `min_time`
/// (capped at 10,000 calls).
pub fn measure<T>(min_runs: usize, min_time: Duration, mut f: impl FnMut() -> T) -> Sample {
    black_box(f());
    let start = Instant::now();
    let mut times = Vec::with_capacity(min_runs);
    while times.len() < min_runs || (start.elapsed() < min_time && times.len() < 10_000) {
        let t = Instant::now();
        black_box(f());
        times.push(t.elapsed().as_secs_f64());
    }
    summarize(times)
}

/// Percentiles of per-call times in seconds.
pub fn summarize(mut times: Vec<f64>) -> Sample {
    assert!(!times.is_empty(), "no samples");
    times.sort_by(f64::total_cmp);
    let n = times.len();
    let at = |q: f64| times[((n as f64 * q) as usize).min(n - 1)];
    Sample {
        runs: n,
        p50: at(0.5),
        p99: at(0.99),
        mean: times.iter().sum::<f64>() / n as f64,
        min: times[0],
    }
}

/// Every file under `dir` (recursively) with its length; unreadable entries are skipped.
pub fn files_under(dir: &std::path::Path) -> Vec<(std::path::PathBuf, u64)> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        match e.metadata() {
            Ok(m) if m.is_dir() => out.extend(files_under(&e.path())),
            Ok(m) => out.push((e.path(), m.len())),
            Err(_) => {}
        }
    }
    out
}

/// Total bytes of the regular files under `dir`.
pub fn dir_bytes(dir: &std::path::Path) -> u64 {
    files_under(dir).iter().map(|(_, len)| len).sum()
}
