//! Reports a person can read or look at: JSON, a Markdown table and PNG charts.

use std::path::Path;

use crate::error::{ModelError, Result};
use crate::experiment::{mean_std, CompareReport};
use crate::plot::{render, Bar, Panel, Series};
use crate::train::EpochLog;

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).map_err(|e| ModelError::io(path, e))
}

/// Curves of one training run: loss and validation GAUC per epoch.
fn curves(name: &str, epochs: &[EpochLog]) -> (Series, Series) {
    (
        Series {
            name: name.to_string(),
            points: epochs
                .iter()
                .map(|e| (e.epoch as f64, e.train_loss))
                .collect(),
        },
        Series {
            name: name.to_string(),
            points: epochs
                .iter()
                .map(|e| (e.epoch as f64, e.valid.gauc.unwrap_or(f64::NAN)))
                .collect(),
        },
    )
}

/// Three panels: training loss per epoch, validation GAUC per epoch (one line per model), and
/// test GAUC per model with its spread.
pub fn figure(path: &Path, runs: &[(String, Vec<EpochLog>)], bars: Vec<Bar>) -> Result<()> {
    let (loss, valid): (Vec<Series>, Vec<Series>) = runs.iter().map(|(n, e)| curves(n, e)).unzip();
    let panels = [
        Panel::Lines {
            title: "training loss".into(),
            x_label: "epoch".into(),
            y_label: "BCE".into(),
            series: loss,
        },
        Panel::Lines {
            title: "validation GAUC".into(),
            x_label: "epoch".into(),
            y_label: "GAUC".into(),
            series: valid,
        },
        Panel::Bars {
            title: "test GAUC".into(),
            y_label: "GAUC".into(),
            bars,
        },
    ];
    render(path, &panels, 520, 380)
}

/// The comparison table as Markdown.
pub fn compare_markdown(r: &CompareReport) -> String {
    let mut s = format!(
        "# {} : {} seeds per model\n\n| model | GAUC mean | GAUC std | AUC mean | AUC std | log loss | train samples/s | score samples/s |\n|---|---:|---:|---:|---:|---:|---:|---:|\n",
        r.dataset,
        r.rows.first().map_or(0, |x| x.runs)
    );
    for row in &r.rows {
        s.push_str(&format!(
            "| {} | {:.4} | {:.4} | {:.4} | {:.4} | {:.4} | {:.0} | {:.0} |\n",
            row.model,
            row.gauc_mean,
            row.gauc_std,
            row.auc_mean,
            row.auc_std,
            row.log_loss_mean,
            row.train_samples_per_s,
            row.score_samples_per_s
        ));
    }
    s.push_str(&domain_markdown(r));
    s
}

/// GAUC per domain and over the tail, and each table's collapse figure, when the test set has
/// more than one domain.
fn domain_markdown(r: &CompareReport) -> String {
    let Some(first) = r.rows.first().filter(|row| row.domains.len() > 1) else {
        return String::new();
    };
    let head = r.runs.first().map_or(0, |run| run.head_domain);
    let mut s = format!(
        "\n## GAUC per domain (mean ± std over seeds; head domain {head}; share of the test set in brackets)\n\n| model | overall | tail |"
    );
    for d in &first.domains {
        s.push_str(&format!(" {} ({:.1}%) |", d.domain, 100.0 * d.share));
    }
    s.push_str("\n|---|---:|---:|");
    s.push_str(&"---:|".repeat(first.domains.len()));
    let cell = |m: f64, sd: f64| format!(" {m:.4} ± {sd:.4} |");
    for row in &r.rows {
        s.push_str(&format!("\n| {} |", row.model));
        s.push_str(&cell(row.gauc_mean, row.gauc_std));
        s.push_str(&cell(
            row.tail_gauc_mean.unwrap_or(f64::NAN),
            row.tail_gauc_std.unwrap_or(f64::NAN),
        ));
        for d in &first.domains {
            let got = row.domains.iter().find(|x| x.domain == d.domain);
            s.push_str(&got.map_or(" |".into(), |x| cell(x.gauc_mean, x.gauc_std)));
        }
    }
    s.push_str("\n\n## Embedding collapse (sum of singular values / largest, mean over seeds)\n\n| model | table | sum/max |\n|---|---|---:|\n");
    for row in &r.rows {
        for (table, v) in &row.collapse {
            s.push_str(&format!("| {} | {table} | {v:.2} |\n", row.model));
        }
    }
    s
}

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

/// One evaluated checkpoint.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct EvalEntry {
    pub checkpoint: String,
    pub model: String,
    pub test: crate::metrics::Metrics,
    /// Test metrics per domain and over the tail (every domain but the head, the largest in
    /// training); no tail when the test set has one domain.
    #[serde(default)]
    pub domains: Vec<crate::metrics::DomainMetrics>,
    #[serde(default)]
    pub tail: Option<crate::metrics::Metrics>,
    pub best_epoch: usize,
    pub epochs: Vec<EpochLog>,
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

/// Mean and sample standard deviation, re-exported for callers that format tables.
pub fn spread(v: &[f64]) -> (f64, f64) {
    mean_std(v)
}
