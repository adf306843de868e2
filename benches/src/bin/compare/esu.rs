//! The ESU forward alone: candle's forward, the fused serving forward, and the same network in
//! PyTorch and ONNX Runtime (`benches/torch_esu.py`, when a Python with torch and onnxruntime
//! is present), on the same weights and inputs, in the same run, with the same thread count.

use serde::Serialize;
use siren_benches::esu::{esu_fixture, threads, torch_esu, Python};
use siren_benches::timing::Sample;
use siren_lab::table::Table;

use crate::{at_most, ms, Log, Reps, Res, Target};

/// 100 candidates with 50 retrieved behaviours each, width 32 (the network).
const CANDIDATES: usize = 100;
const RETRIEVED: usize = 50;
const DIM: usize = 32;

#[derive(Debug, Clone, Serialize)]
pub struct EsuCmp {
    pub candidates: usize,
    pub retrieved: usize,
    pub dim: usize,
    pub threads: usize,
    pub candle: Sample,
    pub fused: Sample,
    pub python: Python,
}

pub fn measure(reps: Reps, log: Log<'_>) -> Res<EsuCmp> {
    let f = esu_fixture(CANDIDATES, RETRIEVED, DIM, 7);
    let (candle, fused) = f.time_both(if reps.runs < 30 { 20 } else { 300 });
    let threads = threads();
    let dir = tempfile::tempdir()?;
    let python = torch_esu(
        &f.export(dir.path())?,
        threads,
        if reps.runs < 30 { 20 } else { 200 },
    );
    log(&format!(
        "ESU forward: candle {} fused {} ({:.3}x); {python:?}",
        ms(candle.p50),
        ms(fused.p50),
        fused.p50 / candle.p50
    ));
    Ok(EsuCmp {
        candidates: CANDIDATES,
        retrieved: RETRIEVED,
        dim: DIM,
        threads,
        candle,
        fused,
        python,
    })
}

pub fn targets(e: &EsuCmp) -> Vec<Target> {
    match e.python {
        Python::Measured {
            torch_p50_s,
            onnx_p50_s,
            ..
        } => vec![
            at_most(
                "ESU forward, 100 candidates: Siren (fused) / PyTorch time",
                e.fused.p50 / torch_p50_s,
                0.5,
            ),
            at_most(
                "ESU forward, 100 candidates: Siren (fused) / ONNX Runtime time",
                e.fused.p50 / onnx_p50_s,
                0.5,
            ),
        ],
        Python::Skipped { .. } | Python::Failed { .. } => Vec::new(),
    }
}

pub fn markdown(e: &EsuCmp) -> String {
    let mut t = Table::numeric(["forward", "p50", "p99", "time / candle"]);
    let mut row = |what: &str, p50: f64, p99: Option<f64>| {
        t.row([
            what.to_string(),
            ms(p50),
            p99.map_or("".into(), ms),
            format!("{:.3}", p50 / e.candle.p50),
        ]);
    };
    row(
        "candle (training's model)",
        e.candle.p50,
        Some(e.candle.p99),
    );
    row(
        "Siren fused serving forward",
        e.fused.p50,
        Some(e.fused.p99),
    );
    let note = match &e.python {
        Python::Measured {
            torch_p50_s,
            onnx_p50_s,
            max_diff,
            ..
        } => {
            row("PyTorch", *torch_p50_s, None);
            row("ONNX Runtime", *onnx_p50_s, None);
            format!(
                "PyTorch and ONNX Runtime ran the same network on the same weights and inputs \
                 (largest difference from candle's probabilities {max_diff:.1e}).\n\n"
            )
        }
        Python::Skipped { skipped } => {
            format!("PyTorch and ONNX Runtime were not measured in this run: {skipped}.\n\n")
        }
        Python::Failed { error } => {
            format!("**The PyTorch / ONNX Runtime comparison failed in this run**: {error}.\n\n")
        }
    };
    format!(
        "## ESU forward ({} candidates x {} retrieved behaviours, width {}, {} threads)\n\n\
         The `siren-hard` network (two pre-norm layers of two heads, the recent branch over \
         the last 50, head 64-32-1) on random weights, one batch of one user's candidates \
         (`cargo bench -p siren-benches --bench esu` times the same two forwards alone). The \
         fused forward gives candle's probabilities to 1e-5.\n\n{t}\n{note}",
        e.candidates, e.retrieved, e.dim, e.threads
    )
}
