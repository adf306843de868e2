//! Reports a person can read or look at: JSON, Markdown tables and PNG charts, for
//! `siren compare` and `siren eval`.

use std::path::Path;

use serde::{Deserialize, Serialize};
use siren_model::collapse::TableCollapse;
use siren_model::metrics::{DomainMetrics, Interval, RankingMetrics};
use siren_model::train::{EpochLog, TrainConfig};

use crate::chart::{render, Bar, Panel, Series};
use crate::error::{LabError, Result};
use crate::table::Table;

/// This machine for a benchmark report's header: the CPU's model name, its cores and its
/// memory (from `/proc`; unknown parts say so).
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<f64>().ok())
        })
        .map_or("?".into(), |k| format!("{:.0} GiB", k / 1024.0 / 1024.0));
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cpu}, {cores} cores, {mem} RAM")
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunResult {
    pub model: String,
    pub seed: u64,
    pub test: RankingMetrics,
    /// GAUC with users grouped within consecutive batches of [`BATCH_GAUC_ROWS`] test rows, as
    /// MUSE's published evaluation computes it.
    #[serde(default)]
    pub batch_gauc: Option<f64>,
    pub best_epoch: usize,
    /// Training batches of the best epoch done when the kept weights were seen (`--validate-every`;
    /// 0 in reports written before it).
    #[serde(default)]
    pub best_batches: usize,
    /// Validation GAUC of the kept weights.
    #[serde(default)]
    pub valid_gauc: Option<f64>,
    pub epochs: Vec<EpochLog>,
    pub train_samples_per_s: f64,
    /// Training samples per second including reading the samples from the engine.
    #[serde(default)]
    pub end_to_end_samples_per_s: f64,
    pub score_samples_per_s: f64,
    /// Test metrics per domain, and over the tail (every domain but the head, the largest in
    /// training).
    #[serde(default)]
    pub domains: Vec<DomainMetrics>,
    #[serde(default)]
    pub tail: Option<RankingMetrics>,
    #[serde(default)]
    pub head_domain: u16,
    /// Collapse of each ID embedding table after training.
    #[serde(default)]
    pub collapse: Vec<TableCollapse>,
}

/// A domain's test GAUC over the seeds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DomainRow {
    pub domain: u16,
    /// Share of the test impressions.
    pub share: f64,
    pub gauc_mean: f64,
    pub gauc_std: f64,
}

/// Rows per batch of the per-batch GAUC.
pub const BATCH_GAUC_ROWS: usize = 1_000;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompareRow {
    pub model: String,
    pub runs: usize,
    pub gauc_mean: f64,
    pub gauc_std: f64,
    /// 95% interval of the seed-mean GAUC over test users resampled with replacement.
    #[serde(default)]
    pub gauc_interval: Option<Interval>,
    #[serde(default)]
    pub batch_gauc_mean: Option<f64>,
    pub auc_mean: f64,
    pub auc_std: f64,
    pub log_loss_mean: f64,
    pub train_samples_per_s: f64,
    pub score_samples_per_s: f64,
    #[serde(default)]
    pub domains: Vec<DomainRow>,
    #[serde(default)]
    pub tail_gauc_mean: Option<f64>,
    #[serde(default)]
    pub tail_gauc_std: Option<f64>,
    /// Mean over the seeds of each table's sum of singular values over the largest.
    #[serde(default)]
    pub collapse: Vec<(String, f64)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompareReport {
    pub dataset: String,
    pub train_config: TrainConfig,
    pub rows: Vec<CompareRow>,
    pub runs: Vec<RunResult>,
    pub details: serde_json::Value,
    /// Paired user-bootstrap intervals of the seed-mean GAUC differences between models.
    #[serde(default)]
    pub differences: Vec<Difference>,
}

/// GAUC(a) − GAUC(b) (each the mean over seeds) with a 95% interval over the same test users
/// resampled for both.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Difference {
    pub a: String,
    pub b: String,
    pub interval: Interval,
}

/// One evaluated checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalEntry {
    pub checkpoint: String,
    pub model: String,
    pub test: RankingMetrics,
    /// Test metrics per domain and over the tail (every domain but the head, the largest in
    /// training); no tail when the test set has one domain.
    #[serde(default)]
    pub domains: Vec<DomainMetrics>,
    #[serde(default)]
    pub tail: Option<RankingMetrics>,
    pub best_epoch: usize,
    pub epochs: Vec<EpochLog>,
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).map_err(|e| LabError::io(path, e))
}

/// Curves of one training run: loss and validation GAUC per epoch.
fn curves(name: &str, epochs: &[EpochLog]) -> (Series, Series) {
    let series = |f: &dyn Fn(&EpochLog) -> f64| Series {
        name: name.to_string(),
        points: epochs.iter().map(|e| (e.epoch as f64, f(e))).collect(),
    };
    (
        series(&|e| e.train_loss),
        series(&|e| e.valid.gauc.unwrap_or(f64::NAN)),
    )
}

/// Three panels: training loss per epoch, validation GAUC per epoch (one line per model), and
/// test GAUC per model with its spread.
pub fn figure(path: &Path, runs: &[(String, Vec<EpochLog>)], bars: Vec<Bar>) -> Result<()> {
    let (loss, valid): (Vec<Series>, Vec<Series>) = runs.iter().map(|(n, e)| curves(n, e)).unzip();
    let lines = |title: &str, y_label: &str, series| Panel::Lines {
        title: title.into(),
        x_label: "epoch".into(),
        y_label: y_label.into(),
        series,
    };
    let panels = [
        lines("training loss", "BCE", loss),
        lines("validation GAUC", "GAUC", valid),
        Panel::Bars {
            title: "test GAUC".into(),
            y_label: "GAUC".into(),
            bars,
        },
    ];
    render(path, &panels, 520, 380)
}

/// The comparison tables as Markdown.
pub fn compare_markdown(r: &CompareReport) -> String {
    let mut t = Table::numeric([
        "model",
        "GAUC mean",
        "GAUC std",
        "GAUC 95% CI (users)",
        "GAUC per 1000 rows",
        "AUC mean",
        "AUC std",
        "log loss",
        "train samples/s",
        "score samples/s",
    ]);
    let opt = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.4}"));
    for row in &r.rows {
        t.row([
            row.model.clone(),
            format!("{:.4}", row.gauc_mean),
            format!("{:.4}", row.gauc_std),
            row.gauc_interval.map_or("-".into(), |i| interval(&i)),
            opt(row.batch_gauc_mean),
            format!("{:.4}", row.auc_mean),
            format!("{:.4}", row.auc_std),
            format!("{:.4}", row.log_loss_mean),
            format!("{:.0}", row.train_samples_per_s),
            format!("{:.0}", row.score_samples_per_s),
        ]);
    }
    format!(
        "# {} : {} seeds per model\n\n{t}{}{}",
        r.dataset,
        r.rows.first().map_or(0, |x| x.runs),
        difference_markdown(r),
        domain_markdown(r)
    )
}

fn interval(i: &Interval) -> String {
    format!("[{:.4}, {:.4}]", i.lo, i.hi)
}

/// The paired differences as a matrix: row model minus column model.
fn difference_markdown(r: &CompareReport) -> String {
    if r.differences.is_empty() {
        return String::new();
    }
    let names: Vec<&str> = r.rows.iter().map(|row| row.model.as_str()).collect();
    let mut header = vec!["row − column".to_string()];
    header.extend(names.iter().map(|n| n.to_string()));
    let mut t = Table::numeric(header);
    for a in &names {
        let mut cells = vec![a.to_string()];
        cells.extend(names.iter().map(|b| {
            r.differences
                .iter()
                .find(|d| d.a == *a && d.b == *b)
                .map_or(String::new(), |d| {
                    format!("{:+.4} {}", d.interval.estimate, interval(&d.interval))
                })
        }));
        t.row(cells);
    }
    format!("\n## Paired differences of seed-mean GAUC (95% user bootstrap)\n\n{t}")
}

/// GAUC per domain and over the tail, and each table's collapse figure, when the test set has
/// more than one domain.
fn domain_markdown(r: &CompareReport) -> String {
    let Some(first) = r.rows.first().filter(|row| row.domains.len() > 1) else {
        return String::new();
    };
    let head = r.runs.first().map_or(0, |run| run.head_domain);
    let mut header = vec!["model".to_string(), "overall".into(), "tail".into()];
    header.extend(
        first
            .domains
            .iter()
            .map(|d| format!("{} ({:.1}%)", d.domain, 100.0 * d.share)),
    );
    let mut by_domain = Table::numeric(header);
    let cell = |m: f64, sd: f64| format!("{m:.4} ± {sd:.4}");
    for row in &r.rows {
        let mut cells = vec![
            row.model.clone(),
            cell(row.gauc_mean, row.gauc_std),
            cell(
                row.tail_gauc_mean.unwrap_or(f64::NAN),
                row.tail_gauc_std.unwrap_or(f64::NAN),
            ),
        ];
        cells.extend(first.domains.iter().map(|d| {
            row.domains
                .iter()
                .find(|x| x.domain == d.domain)
                .map_or(String::new(), |x| cell(x.gauc_mean, x.gauc_std))
        }));
        by_domain.row(cells);
    }
    let mut collapse = Table::numeric(["model", "table", "sum/max"]);
    for row in &r.rows {
        for (table, v) in &row.collapse {
            collapse.row([row.model.clone(), table.clone(), format!("{v:.2}")]);
        }
    }
    format!(
        "\n## GAUC per domain (mean ± std over seeds; head domain {head}; share of the test set in brackets)\n\n{by_domain}\n## Embedding collapse (sum of singular values / largest, mean over seeds)\n\n{collapse}"
    )
}

/// `compare.json`, `compare.md` and `compare.png` under `out`.
pub fn write_compare(out: &Path, r: &CompareReport) -> Result<()> {
    write(
        &out.join("compare.json"),
        &serde_json::to_vec_pretty(r).expect("report serialises"),
    )?;
    write(&out.join("compare.md"), compare_markdown(r).as_bytes())?;
    // Curves of each model's first seed; bars over all seeds.
    let mut firsts: Vec<(String, Vec<EpochLog>)> = Vec::new();
    for run in &r.runs {
        if !firsts.iter().any(|(n, _)| *n == run.model) {
            firsts.push((run.model.clone(), run.epochs.clone()));
        }
    }
    let bars = r
        .rows
        .iter()
        .map(|row| Bar {
            label: row.model.clone(),
            value: row.gauc_mean,
            err: (row.runs > 1).then_some(row.gauc_std),
        })
        .collect();
    figure(&out.join("compare.png"), &firsts, bars)
}

/// `report.json` and `report.png` for `siren eval` over one or more checkpoints.
pub fn write_eval(out: &Path, entries: &[EvalEntry]) -> Result<()> {
    write(
        &out.join("report.json"),
        &serde_json::to_vec_pretty(entries).expect("report serialises"),
    )?;
    let runs: Vec<(String, Vec<EpochLog>)> = entries
        .iter()
        .map(|e| (e.model.clone(), e.epochs.clone()))
        .collect();
    let bars = entries
        .iter()
        .map(|e| Bar {
            label: e.model.clone(),
            value: e.test.gauc.unwrap_or(f64::NAN),
            err: None,
        })
        .collect();
    figure(&out.join("report.png"), &runs, bars)
}
