//! The ESU forward alone: candle's forward, the fused serving forward, and the same network in
//! PyTorch and ONNX Runtime (`benches/torch_esu.py`, when a Python with torch and onnxruntime
//! is present), on the same weights and inputs, in the same run, interleaved in rounds so that
//! all four see the same load, at each thread count in its own process (candle's and rayon's
//! thread pools read `RAYON_NUM_THREADS` once per process).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};
use siren_benches::esu::{esu_fixture, time_all, EsuTimes, NotRun, PythonTimes};
use siren_lab::table::Table;

use crate::{at_most, ms, Log, Res, Target};

/// 100 candidates with 50 retrieved behaviours each, width 32 (the network).
const CANDIDATES: usize = 100;
const RETRIEVED: usize = 50;
const DIM: usize = 32;
/// The goal: Siren's ESU forward in at most half of PyTorch's and ONNX Runtime's time.
const GOAL: f64 = 0.5;

/// How the ESU comparison runs.
#[derive(Debug, Clone)]
pub struct Plan {
    pub threads: Vec<usize>,
    pub rounds: usize,
    pub runs: usize,
    pub python: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EsuCmp {
    pub candidates: usize,
    pub retrieved: usize,
    pub dim: usize,
    pub python: PathBuf,
    /// One measurement per thread count.
    pub at: Vec<EsuTimes>,
}

/// Each of `plan.threads` in a child process of this binary (`--esu-worker`).
pub fn measure(plan: &Plan, log: Log<'_>) -> Res<EsuCmp> {
    let exe = std::env::current_exe()?;
    let mut at = Vec::new();
    for &n in &plan.threads {
        log(&format!(
            "ESU forward with {n} threads ({})",
            plan.python.display()
        ));
        let out = Command::new(&exe)
            .arg("--esu-worker")
            .args(["--esu-rounds", &plan.rounds.to_string()])
            .args(["--esu-runs", &plan.runs.to_string()])
            .arg("--python")
            .arg(&plan.python)
            .env("RAYON_NUM_THREADS", n.to_string())
            .stderr(std::process::Stdio::inherit())
            .output()?;
        let last = String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or("")
            .to_string();
        let t: EsuTimes = serde_json::from_str(&last)
            .map_err(|e| format!("ESU worker ({}) answered {last:?}: {e}", out.status))?;
        log(&summary(&t));
        at.push(t);
    }
    Ok(EsuCmp {
        candidates: CANDIDATES,
        retrieved: RETRIEVED,
        dim: DIM,
        python: plan.python.clone(),
        at,
    })
}

/// The child's side of [`measure`]: this process's thread count, one JSON line on stdout.
pub fn worker(plan: &Plan) -> Res<()> {
    let f = esu_fixture(CANDIDATES, RETRIEVED, DIM, 7);
    let dir = tempfile::tempdir()?;
    let t = time_all(&f, &plan.python, dir.path(), plan.rounds, plan.runs)?;
    println!("{}", serde_json::to_string(&t)?);
    Ok(())
}

fn summary(t: &EsuTimes) -> String {
    let python = match &t.python {
        Ok(p) => format!(
            "PyTorch {} ONNX Runtime {} (fused / PyTorch {:.3}, / ONNX Runtime {:.3})",
            ms(p.torch.p50),
            ms(p.onnx.p50),
            t.fused.p50 / p.torch.p50,
            t.fused.p50 / p.onnx.p50
        ),
        Err(NotRun::Skipped(why)) => format!("PyTorch and ONNX Runtime skipped: {why}"),
        Err(NotRun::Failed(why)) => format!("PyTorch and ONNX Runtime FAILED: {why}"),
    };
    format!(
        "ESU forward, {} threads: candle {} fused {} ({:.3}x); {python}",
        t.threads,
        ms(t.candle.p50),
        ms(t.fused.p50),
        t.fused.p50 / t.candle.p50
    )
}

pub fn targets(e: &EsuCmp) -> Vec<Target> {
    let mut out = Vec::new();
    for t in &e.at {
        if let Ok(p) = &t.python {
            let what = |tool: &str| {
                format!(
                    "ESU forward, {} candidates, {} thread(s): Siren (fused) / {tool} time",
                    e.candidates, t.threads
                )
            };
            out.push(at_most(&what("PyTorch"), t.fused.p50 / p.torch.p50, GOAL));
            out.push(at_most(
                &what("ONNX Runtime"),
                t.fused.p50 / p.onnx.p50,
                GOAL,
            ));
        }
    }
    out
}

/// The spread of per-round ratios: `min–max`.
fn spread(ratios: &[f64]) -> String {
    let lo = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if ratios.is_empty() {
        String::new()
    } else {
        format!("{lo:.2}–{hi:.2}")
    }
}

/// The section of `BENCHMARKS.md` (and `esu.md`).
pub fn markdown(e: &EsuCmp) -> String {
    let mut t = Table::numeric([
        "threads",
        "candle p50",
        "Siren fused p50 (p99)",
        "PyTorch p50",
        "ONNX Runtime p50",
        "fused / candle",
        "fused / PyTorch (rounds)",
        "fused / ONNX Runtime (rounds)",
    ]);
    let mut notes = Vec::new();
    for a in &e.at {
        let fused = format!("{} ({})", ms(a.fused.p50), ms(a.fused.p99));
        let head = [a.threads.to_string(), ms(a.candle.p50), fused];
        let rel = format!("{:.3}", a.fused.p50 / a.candle.p50);
        match &a.python {
            Ok(p) => {
                t.row(head.into_iter().chain([
                    ms(p.torch.p50),
                    ms(p.onnx.p50),
                    rel,
                    ratio(a.fused.p50 / p.torch.p50, &p.torch_round_ratios),
                    ratio(a.fused.p50 / p.onnx.p50, &p.onnx_round_ratios),
                ]));
                notes.push(parity(a.threads, p));
            }
            Err(why) => {
                t.row(
                    head.into_iter()
                        .chain(["–".into(), "–".into(), rel, "".into(), "".into()]),
                );
                notes.push(match why {
                    NotRun::Skipped(w) => format!(
                        "{} thread(s): PyTorch and ONNX Runtime were not measured: {w}.",
                        a.threads
                    ),
                    NotRun::Failed(w) => format!(
                        "{} thread(s): **the PyTorch / ONNX Runtime comparison failed**: {w}.",
                        a.threads
                    ),
                });
            }
        }
    }
    let rounds = e.at.first().map_or(0, |a| a.rounds);
    let runs = e.at.first().map_or(0, |a| a.candle.runs / a.rounds.max(1));
    format!(
        "## ESU forward against PyTorch and ONNX Runtime ({} candidates x {} retrieved \
         behaviours, width {})\n\n\
         The `siren-hard` network without its evidence input (two pre-norm layers of two heads, \
         the recent branch over the last 50, head 64-32-1) on random weights, one batch of one \
         user's candidates, in candle (the training model), in Siren's fused serving forward \
         (`siren_serve::forward`, candle's probabilities to 1e-5), and the same network on the \
         same weights and inputs in PyTorch and exported to ONNX Runtime \
         (`benches/torch_esu.py` in the venv of `scripts/bench-python.sh`, or the Python of \
         `--python`; each checks candle's probabilities before it is timed). Each thread count runs in its own process with `RAYON_NUM_THREADS`, \
         `torch.set_num_threads`, `OMP_NUM_THREADS` and ONNX Runtime's intra-op threads all \
         set to it. The four forwards take turns in {rounds} rounds of {runs} calls each, so \
         that all see the same load; times are medians over all rounds, and the ratios' \
         range over the rounds (each round's medians) is in brackets. Goal (issue 15): \
         fused at most {GOAL}x PyTorch's and ONNX Runtime's time.\n\n{t}\n{}\n\n",
        e.candidates,
        e.retrieved,
        e.dim,
        notes.join(" "),
    )
}

fn ratio(r: f64, rounds: &[f64]) -> String {
    format!("{r:.3} ({})", spread(rounds))
}

fn parity(threads: usize, p: &PythonTimes) -> String {
    format!(
        "{threads} thread(s): torch {} (largest difference from candle's probabilities {:.1e}), \
         onnxruntime {} via the {} exporter ({:.1e}).",
        p.ready.torch_version,
        p.ready.torch_max_diff,
        p.ready.onnxruntime_version,
        p.ready.onnx_exporter,
        p.ready.onnx_max_diff
    )
}

/// `esu.md` for a run of the ESU section alone (`--only esu`): its targets and its section.
pub fn report(command: &str, machine: &str, json: &Path, e: &EsuCmp, targets: &Table) -> String {
    format!(
        "# ESU forward: Siren against PyTorch and ONNX Runtime\n\n\
         Generated by `{command}` (the ESU section of `compare` alone; a full `compare` run \
         writes the same section into `BENCHMARKS.md`). Machine: {machine}. Raw figures: \
         `{}`.\n\n## Targets\n\n{targets}\n{}",
        json.display(),
        markdown(e)
    )
}
