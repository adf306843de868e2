//! Experiments over a dataset directory: `siren compare` trains every model with every seed
//! and aggregates the test metrics; `siren eval` scores checkpoints on the test split. What
//! they produce is written by [`crate::report`].

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use siren_model::data::Impression;
use siren_model::dataset::{prepare_with, score_test, DatasetDir};
use siren_model::metrics::{
    gauc_difference_interval, gauc_interval, gauc_per_batch, mean_std, score_domains, user_aucs,
    UserAuc, BOOTSTRAP_RESAMPLES,
};
use siren_model::models::ModelConfig;
use siren_model::train::{
    end_to_end_rate, evaluate, load_checkpoint, train, EpochLog, PrepareOptions, Prepared,
    TrainConfig,
};

use crate::error::{LabError, Result};
use crate::report::{
    write_compare, write_eval, CompareReport, CompareRow, Difference, DomainRow, EvalEntry,
    RunResult, BATCH_GAUC_ROWS,
};

/// Seed of the bootstrap resampling (fixed, so a report is reproducible).
const BOOTSTRAP_SEED: u64 = 7;

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

/// Train every model with every seed on one prepared dataset (on the validation impressions
/// too when `train_on_valid`); write `compare.json`, `compare.md`, `compare.png` and each
/// run's test predictions under `out`.
pub fn compare(
    dir: &DatasetDir,
    models: &[ModelConfig],
    seeds: &[u64],
    tcfg: &TrainConfig,
    out: &Path,
    opts: &PrepareOptions,
    train_on_valid: bool,
) -> Result<CompareReport> {
    let start = Instant::now();
    let (_db, meta, data) = prepare_with(dir, models, opts, train_on_valid)?;
    let built = data.train.len() + data.valid.len() + data.test.len();
    let build_sps = built as f64 / start.elapsed().as_secs_f64().max(1e-9);
    let predictions = out.join("predictions");
    std::fs::create_dir_all(&predictions).map_err(|e| LabError::io(out, e))?;
    let mut runs = Vec::new();
    // Per model: each seed's per-user test AUCs.
    let mut aucs: Vec<Vec<Vec<UserAuc>>> = Vec::new();
    for m in models {
        let mut per_seed = Vec::new();
        for &seed in seeds {
            let (mut run, users) = run_once(m, seed, tcfg, &data, &predictions)?;
            // A held dataset's samples were built once, before training: count that reading
            // as if done once per epoch. A streamed one's epochs measured it themselves.
            if !run.end_to_end_samples_per_s.is_finite() {
                run.end_to_end_samples_per_s = end_to_end_rate(run.train_samples_per_s, build_sps);
            }
            per_seed.push(users);
            if tcfg.progress {
                // Tail domains exist only in multi-domain data.
                let tail = run.tail.as_ref().and_then(|t| t.gauc);
                eprintln!(
                    "{} seed {seed}: test GAUC {:.4} AUC {:.4}{} (best epoch {}, batch {}, valid GAUC {:.4})",
                    run.model,
                    run.test.gauc.unwrap_or(f64::NAN),
                    run.test.auc.unwrap_or(f64::NAN),
                    tail.map_or(String::new(), |g| format!(" tail GAUC {g:.4}")),
                    run.best_epoch,
                    run.best_batches,
                    run.valid_gauc.unwrap_or(f64::NAN)
                );
            }
            runs.push(run);
        }
        aucs.push(per_seed);
    }
    let means: Vec<Vec<UserAuc>> = aucs.iter().map(|s| seed_mean(s)).collect();
    let rows = models
        .iter()
        .zip(&means)
        .map(|(m, users)| CompareRow {
            gauc_interval: gauc_interval(users, BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED),
            ..compare_row(m.name(), &runs)
        })
        .collect();
    let report = CompareReport {
        dataset: meta.name.clone(),
        train_config: tcfg.clone(),
        rows,
        runs,
        details: meta.details.clone(),
        differences: differences(models, &means),
    };
    write_compare(out, &report)?;
    Ok(report)
}

/// Each user's AUC averaged over the seeds (the users every seed scored): its
/// impression-weighted mean is the mean over the seeds of their GAUCs.
fn seed_mean(per_seed: &[Vec<UserAuc>]) -> Vec<UserAuc> {
    let Some(first) = per_seed.first() else {
        return Vec::new();
    };
    let by_user: Vec<std::collections::HashMap<u64, f64>> = per_seed
        .iter()
        .map(|s| s.iter().map(|v| (v.user, v.auc)).collect())
        .collect();
    first
        .iter()
        .filter_map(|u| {
            let same: Vec<f64> = by_user
                .iter()
                .filter_map(|m| m.get(&u.user).copied())
                .collect();
            (same.len() == per_seed.len()).then(|| UserAuc {
                auc: same.iter().sum::<f64>() / same.len() as f64,
                ..*u
            })
        })
        .collect()
}

/// Every ordered pair of models: the paired interval of their seed-mean GAUC difference.
fn differences(models: &[ModelConfig], means: &[Vec<UserAuc>]) -> Vec<Difference> {
    let mut out = Vec::new();
    for (i, a) in models.iter().enumerate() {
        for (j, b) in models.iter().enumerate() {
            if i == j {
                continue;
            }
            let d =
                gauc_difference_interval(&means[i], &means[j], BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED);
            if let Some(interval) = d {
                out.push(Difference {
                    a: a.name(),
                    b: b.name(),
                    interval,
                });
            }
        }
    }
    out
}

/// Train `m` with `seed`, score the test split, write its predictions under `predictions`;
/// the run and its per-user test AUCs.
fn run_once(
    m: &ModelConfig,
    seed: u64,
    tcfg: &TrainConfig,
    data: &Prepared,
    predictions: &Path,
) -> Result<(RunResult, Vec<UserAuc>)> {
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
        data.test.impressions(),
        &scores,
    )?;
    let per_epoch =
        |f: fn(&EpochLog) -> Option<f64>| -> Vec<f64> { t.history.iter().filter_map(f).collect() };
    let head_domain = data.vocabs.head_domain();
    let (domains, tail) = score_domains(data.test.impressions(), &scores, head_domain);
    let imps = data.test.impressions();
    let users: Vec<u64> = imps.iter().map(|i| i.user).collect();
    let labels: Vec<f32> = imps.iter().map(|i| i.label).collect();
    let per_user = user_aucs(&users, &scores, &labels).unwrap_or_default();
    let batch_gauc = gauc_per_batch(&users, &scores, &labels, BATCH_GAUC_ROWS).map(|g| g.value);
    let run = RunResult {
        batch_gauc,
        // NaN unless the epochs measured it (a streamed dataset); `compare` fills it in.
        end_to_end_samples_per_s: mean_std(&per_epoch(|h| h.end_to_end_samples_per_s)).0,
        domains,
        tail,
        head_domain,
        collapse: siren_model::collapse::tables(&t.params)
            .map_err(siren_model::ModelError::from)?,
        model: m.name(),
        seed,
        test: metrics,
        best_epoch: t.best_epoch,
        best_batches: t.best_batches,
        valid_gauc: t.best_valid_gauc,
        train_samples_per_s: mean_std(&per_epoch(|h| Some(h.train_samples_per_s))).0,
        epochs: t.history,
        score_samples_per_s: score_sps,
    };
    Ok((run, per_user))
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
    let batch: Vec<f64> = rs.iter().filter_map(|r| r.batch_gauc).collect();
    CompareRow {
        gauc_interval: None,
        batch_gauc_mean: (batch.len() == rs.len() && !batch.is_empty()).then(|| mean_std(&batch).0),
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
