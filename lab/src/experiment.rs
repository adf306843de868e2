//! Experiments over a dataset directory: `siren compare` trains every model with every seed
//! and aggregates the test metrics; `siren eval` scores checkpoints on the test split. What
//! they produce is written by [`crate::report`].

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use siren_model::data::Impression;
use siren_model::dataset::{prepare_with, score_test, DatasetDir};
use siren_model::metrics::{mean_std, score_domains};
use siren_model::models::ModelConfig;
use siren_model::train::{evaluate, load_checkpoint, train, Prepared, TrainConfig};

use crate::error::{LabError, Result};
use crate::report::{
    write_compare, write_eval, CompareReport, CompareRow, DomainRow, EvalEntry, RunResult,
};

/// Write `user,item,timestamp,label,score` rows.
pub fn write_predictions(path: &Path, imps: &[Impression], scores: &[f32]) -> Result<()> {
    let f = std::fs::File::create(path).map_err(|e| LabError::io(path, e))?;
    let mut w = std::io::BufWriter::new(f);
    let io = |e| LabError::io(path, e);
    writeln!(w, "user,item,timestamp,label,score").map_err(io)?;
    for (i, s) in imps.iter().zip(scores) {
        writeln!(w, "{},{},{},{},{}", i.user, i.item, i.ts, i.label, s).map_err(io)?;
    }
    w.flush().map_err(io)
}

/// Train every model with every seed on one prepared dataset; write `compare.json`,
/// `compare.md`, `compare.png` and each run's test predictions under `out`.
pub fn compare(
    dir: &DatasetDir,
    models: &[ModelConfig],
    seeds: &[u64],
    tcfg: &TrainConfig,
    out: &Path,
    threads: usize,
) -> Result<CompareReport> {
    let (_db, meta, data) = prepare_with(dir, models, threads, tcfg.min_count)?;
    let predictions = out.join("predictions");
    std::fs::create_dir_all(&predictions).map_err(|e| LabError::io(out, e))?;
    let mut runs = Vec::new();
    for m in models {
        for &seed in seeds {
            let run = run_once(m, seed, tcfg, &data, &predictions)?;
            if tcfg.progress {
                eprintln!(
                    "{} seed {seed}: test GAUC {:.4} AUC {:.4} tail GAUC {:.4} (best epoch {})",
                    run.model,
                    run.test.gauc.unwrap_or(f64::NAN),
                    run.test.auc.unwrap_or(f64::NAN),
                    run.tail.as_ref().and_then(|t| t.gauc).unwrap_or(f64::NAN),
                    run.best_epoch
                );
            }
            runs.push(run);
        }
    }
    let rows = models
        .iter()
        .map(|m| compare_row(m.name(), &runs))
        .collect();
    let report = CompareReport {
        dataset: meta.name.clone(),
        train_config: tcfg.clone(),
        rows,
        runs,
        details: meta.details.clone(),
    };
    write_compare(out, &report)?;
    Ok(report)
}

/// Train `m` with `seed`, score the test split, write its predictions under `predictions`.
fn run_once(
    m: &ModelConfig,
    seed: u64,
    tcfg: &TrainConfig,
    data: &Prepared,
    predictions: &Path,
) -> Result<RunResult> {
    let tc = TrainConfig {
        seed,
        ..tcfg.clone()
    };
    let t = train(m, &tc, data)?;
    let start = Instant::now();
    let (metrics, scores) = evaluate(t.model.as_ref(), m, data, &data.test)?;
    let score_sps = data.test.len() as f64 / start.elapsed().as_secs_f64().max(1e-9);
    write_predictions(
        &predictions.join(format!("{}-seed{seed}.csv", m.name())),
        &data.test.impressions,
        &scores,
    )?;
    let trained_epochs = t.history.len().max(1) as f64;
    let head_domain = data.vocabs.head_domain();
    let (domains, tail) = score_domains(&data.test.impressions, &scores, head_domain);
    Ok(RunResult {
        domains,
        tail,
        head_domain,
        collapse: siren_model::collapse::tables(&t.params)
            .map_err(siren_model::ModelError::from)?,
        model: m.name(),
        seed,
        test: metrics,
        best_epoch: t.best_epoch,
        train_samples_per_s: t.history.iter().map(|h| h.train_samples_per_s).sum::<f64>()
            / trained_epochs,
        epochs: t.history,
        score_samples_per_s: score_sps,
    })
}

/// The runs of model `name` over the seeds: means and spreads.
fn compare_row(name: String, runs: &[RunResult]) -> CompareRow {
    let rs: Vec<&RunResult> = runs.iter().filter(|r| r.model == name).collect();
    let col = |f: &dyn Fn(&RunResult) -> f64| rs.iter().map(|r| f(r)).collect::<Vec<f64>>();
    let (gauc_mean, gauc_std) = mean_std(&col(&|r| r.test.gauc.unwrap_or(f64::NAN)));
    let (auc_mean, auc_std) = mean_std(&col(&|r| r.test.auc.unwrap_or(f64::NAN)));
    let (tail_mean, tail_std) = mean_std(&col(&|r| {
        r.tail.as_ref().and_then(|t| t.gauc).unwrap_or(f64::NAN)
    }));
    let has_tail = rs.iter().any(|r| r.tail.is_some());
    CompareRow {
        domains: domain_rows(&rs),
        tail_gauc_mean: has_tail.then_some(tail_mean),
        tail_gauc_std: has_tail.then_some(tail_std),
        collapse: collapse_means(&rs),
        model: name,
        runs: rs.len(),
        gauc_mean,
        gauc_std,
        auc_mean,
        auc_std,
        log_loss_mean: mean_std(&col(&|r| r.test.log_loss.unwrap_or(f64::NAN))).0,
        train_samples_per_s: mean_std(&col(&|r| r.train_samples_per_s)).0,
        score_samples_per_s: mean_std(&col(&|r| r.score_samples_per_s)).0,
    }
}

/// Score the test split of `dir` with checkpoint `ck` and write its predictions under `out`
/// (`predictions-<checkpoint directory name>.csv`); returns the report's entry and the head
/// domain (the most frequent in the checkpoint's training data).
pub fn eval_checkpoint(
    dir: &DatasetDir,
    ck: &Path,
    out: &Path,
    threads: usize,
) -> Result<(EvalEntry, u16)> {
    let loaded = load_checkpoint(ck)?;
    let (imps, scores, m) = score_test(dir, &loaded, threads)?;
    let name = loaded.cfg.model.name();
    let stem = ck
        .file_name()
        .map_or(name.clone(), |n| n.to_string_lossy().into_owned());
    write_predictions(&out.join(format!("predictions-{stem}.csv")), &imps, &scores)?;
    let head = loaded.cfg.vocabs.head_domain();
    let (domains, tail) = score_domains(&imps, &scores, head);
    let entry = EvalEntry {
        checkpoint: ck.display().to_string(),
        model: name,
        test: m,
        domains,
        tail,
        best_epoch: loaded.cfg.best_epoch,
        epochs: loaded.cfg.history.clone(),
    };
    Ok((entry, head))
}

/// `siren eval`: [`eval_checkpoint`] for each of `checkpoints`, then `report.json` and
/// `report.png` under `out`; `each` sees every entry as it is scored.
pub fn eval(
    dir: &DatasetDir,
    checkpoints: &[PathBuf],
    out: &Path,
    threads: usize,
    mut each: impl FnMut(&EvalEntry, u16),
) -> Result<Vec<EvalEntry>> {
    std::fs::create_dir_all(out).map_err(|e| LabError::io(out, e))?;
    let mut entries = Vec::new();
    for ck in checkpoints {
        let (entry, head) = eval_checkpoint(dir, ck, out, threads)?;
        each(&entry, head);
        entries.push(entry);
    }
    write_eval(out, &entries)?;
    Ok(entries)
}

/// Each domain's GAUC over the runs of one model.
fn domain_rows(runs: &[&RunResult]) -> Vec<DomainRow> {
    let Some(first) = runs.first() else {
        return Vec::new();
    };
    let total: usize = first.domains.iter().map(|d| d.metrics.n).sum();
    first
        .domains
        .iter()
        .map(|dm| {
            let g: Vec<f64> = runs
                .iter()
                .map(|r| {
                    r.domains
                        .iter()
                        .find(|x| x.domain == dm.domain)
                        .and_then(|x| x.metrics.gauc)
                        .unwrap_or(f64::NAN)
                })
                .collect();
            let (gauc_mean, gauc_std) = mean_std(&g);
            DomainRow {
                domain: dm.domain,
                share: dm.metrics.n as f64 / total.max(1) as f64,
                gauc_mean,
                gauc_std,
            }
        })
        .collect()
}

/// Each table's collapse figure averaged over the runs of one model.
fn collapse_means(runs: &[&RunResult]) -> Vec<(String, f64)> {
    let Some(first) = runs.first() else {
        return Vec::new();
    };
    first
        .collapse
        .iter()
        .map(|c| {
            let v: Vec<f64> = runs
                .iter()
                .filter_map(|r| r.collapse.iter().find(|x| x.table == c.table))
                .map(|x| x.sum_over_max)
                .collect();
            (c.table.clone(), mean_std(&v).0)
        })
        .collect()
}
