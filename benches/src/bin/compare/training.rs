//! The trainer at sizes beyond the demo's: the same model on the same planted dataset with its
//! samples held in memory, streamed from the engine in blocks (a memory budget far below the
//! samples' size), and with the item table grown to 10 million rows (a 10-million-item catalog:
//! the sparse optimiser touches only a batch's rows, so a step should cost what it costs with the
//! dataset's own vocabulary). One epoch each, in one process, one after the other.

use std::path::Path;
use std::time::Instant;

use serde::Serialize;
use siren_model::dataset::{self, DatasetDir};
use siren_model::models::ModelConfig;
use siren_model::semid::RqKmeansConfig;
use siren_model::synth::PlantedConfig;
use siren_model::train::{end_to_end_rate, train, PrepareOptions, Prepared, TrainConfig};

use siren_lab::table::Table;

use crate::{at_least, at_most, Log, Res, Target};

/// Rows of the item table in the large-catalog run.
pub const BIG_CATALOG: usize = 10_000_000;
/// The streamed run's budget, as a share of what the held samples take.
const STREAMED_SHARE: usize = 8;

#[derive(Debug, Clone, Serialize)]
pub struct TrainingCmp {
    pub model: String,
    pub train_samples: usize,
    /// Impressions of all splits, whose samples a held dataset keeps.
    pub samples: usize,
    pub bytes_per_sample: usize,
    pub held: Epoch,
    pub streamed: Epoch,
    /// The streamed run's budget (bytes) and its blocks' size (samples).
    pub streamed_budget: usize,
    pub streamed_block_samples: usize,
    pub big_table: Epoch,
}

/// One run: preparing the samples and training one epoch.
#[derive(Debug, Clone, Serialize)]
pub struct Epoch {
    pub item_rows: usize,
    pub train_samples_per_s: f64,
    /// Sample building included: per epoch for a streamed dataset, once for a held one (its
    /// build time counted as if repeated every epoch).
    pub end_to_end_samples_per_s: f64,
    pub valid_gauc: f64,
    /// Peak resident memory while preparing and training, above the resident memory before,
    /// MiB (NaN where `/proc` does not say).
    pub peak_mib: f64,
}

/// The planted dataset: 1,000 users with 500 to 5,000 events, 60 impressions each.
fn dataset(dir: &DatasetDir) -> Res<()> {
    let cfg = PlantedConfig {
        items: 20_000,
        dim: 64,
        users: 1_000,
        min_events: 500,
        max_events: 5_000,
        impressions_per_user: 60,
        ..PlantedConfig::default()
    };
    dataset::import_synthetic(&cfg, dir, &RqKmeansConfig::default())?;
    Ok(())
}

pub fn measure(log: Log<'_>) -> Res<TrainingCmp> {
    let tmp = tempfile::tempdir()?;
    let dir = DatasetDir::new(tmp.path().join("data"));
    log("training: importing the planted dataset");
    dataset(&dir)?;
    let model = ModelConfig::named("siren-hard")?;
    let tcfg = TrainConfig {
        epochs: 1,
        ..TrainConfig::default()
    };
    let (db, meta, _) = dir.open()?;
    drop(db); // each run opens the dataset itself
    let samples = meta.train + meta.valid + meta.test;
    let per = siren_model::samples::SampleSpec::for_models(
        std::slice::from_ref(&model),
        meta.semid_levels as usize,
    )
    .bytes_per_sample();
    let budget = samples * per / STREAMED_SHARE;
    log("training: streamed samples");
    let streamed = run(&dir, &model, &tcfg, budget, 0)?;
    log("training: held samples");
    let held = run(&dir, &model, &tcfg, usize::MAX, 0)?;
    log("training: a 10-million-row item table");
    let big_table = run(&dir, &model, &tcfg, usize::MAX, BIG_CATALOG)?;
    Ok(TrainingCmp {
        model: model.name(),
        train_samples: meta.train,
        samples,
        bytes_per_sample: per,
        streamed_budget: budget,
        streamed_block_samples: (budget / (2 * per)).max(1),
        held,
        streamed,
        big_table,
    })
}

/// Prepare `dir`'s samples within `budget` bytes, grow the item table to `item_rows` rows
/// (ids no sample holds: rows of a larger catalog that no batch touches) and train one epoch.
fn run(
    dir: &DatasetDir,
    model: &ModelConfig,
    tcfg: &TrainConfig,
    budget: usize,
    item_rows: usize,
) -> Res<Epoch> {
    let before = reset_peak();
    let opts = PrepareOptions {
        sample_memory: budget,
        ..PrepareOptions::default()
    };
    let start = Instant::now();
    let (_db, _meta, mut data) =
        dataset::prepare_with(dir, std::slice::from_ref(model), &opts, false)?;
    let built = data.train.len() + data.valid.len() + data.test.len();
    let build_rate = built as f64 / start.elapsed().as_secs_f64();
    let own = data.vocabs.item.size();
    if item_rows > own {
        let extra = (0..(item_rows - own) as u64).map(|i| u64::MAX - i);
        data.vocabs.item.ids.extend(extra);
        data.vocabs.rebuild();
    }
    let mut e = epoch(model, tcfg, &data, build_rate)?;
    e.peak_mib = status_mib("VmHWM:") - before;
    Ok(e)
}

/// One epoch of `model` on `data`; `build_rate` is the rate the samples were prepared at.
fn epoch(model: &ModelConfig, tcfg: &TrainConfig, data: &Prepared, build_rate: f64) -> Res<Epoch> {
    let t = train(model, tcfg, data)?;
    let h = &t.history[0];
    let e2e = h
        .end_to_end_samples_per_s
        .unwrap_or_else(|| end_to_end_rate(h.train_samples_per_s, build_rate));
    Ok(Epoch {
        item_rows: t.dims.items,
        train_samples_per_s: h.train_samples_per_s,
        end_to_end_samples_per_s: e2e,
        valid_gauc: h.valid.gauc.unwrap_or(f64::NAN),
        peak_mib: f64::NAN,
    })
}

/// Reset this process's peak resident memory to its current one (Linux: `clear_refs` 5) and
/// return it, MiB.
fn reset_peak() -> f64 {
    // Without the reset the peak is the whole process's; the measurement then says too much,
    // never too little.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    status_mib("VmRSS:")
}

/// A memory line of `/proc/self/status` in MiB (NaN where it is missing).
fn status_mib(key: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// The goals: a 10-million-row item table trains at the own vocabulary's rate (an
/// epoch's batch loop within 1.5x), and streaming saves the memory the held samples take (the
/// peaks also hold what both runs share: the engine's caches and mapped segments, the model).
pub fn targets(t: &TrainingCmp) -> Vec<Target> {
    vec![
        at_most(
            "training batch loop time, 10M-row item table / own vocabulary",
            t.held.train_samples_per_s / t.big_table.train_samples_per_s,
            1.5,
        ),
        at_least(
            "peak memory streaming saves (held - streamed) / bytes of the held samples",
            (t.held.peak_mib - t.streamed.peak_mib) / held_mib(t),
            0.8,
        ),
    ]
}

/// What the held samples take, MiB.
fn held_mib(t: &TrainingCmp) -> f64 {
    (t.samples * t.bytes_per_sample) as f64 / (1 << 20) as f64
}

/// The section as Markdown.
pub fn markdown(t: &TrainingCmp) -> String {
    let mut table = Table::numeric([
        "run",
        "item rows",
        "batch loop samples/s",
        "end-to-end samples/s",
        "valid GAUC",
        "peak memory above start (MiB)",
    ]);
    for (name, e) in [
        ("held", &t.held),
        ("streamed", &t.streamed),
        ("held, 10M-row item table", &t.big_table),
    ] {
        table.row([
            name.to_string(),
            e.item_rows.to_string(),
            format!("{:.0}", e.train_samples_per_s),
            format!("{:.0}", e.end_to_end_samples_per_s),
            format!("{:.4}", e.valid_gauc),
            format!("{:.0}", e.peak_mib),
        ]);
    }
    format!(
        "One epoch of {} on a planted dataset of {} impressions ({} training), {} bytes per \
         built sample ({:.0} MiB held). Streamed: a budget of {:.1} MiB (one eighth), blocks \
         of {} samples built from the engine during the epoch. The 10M-row run grows the item \
         table to {} rows that no batch touches: the sparse optimiser should make it cost what \
         the own vocabulary costs, apart from the memory of the table and its moments \
         (3 x rows x 32 floats).\n\n{table}\n",
        t.model,
        t.samples,
        t.train_samples,
        t.bytes_per_sample,
        held_mib(t),
        t.streamed_budget as f64 / (1 << 20) as f64,
        t.streamed_block_samples,
        t.big_table.item_rows,
    )
}

/// `--only training`'s report.
pub fn report(
    command: &str,
    machine: &str,
    json: &Path,
    t: &TrainingCmp,
    targets: &Table,
) -> String {
    format!(
        "# Training: streamed samples and a 10-million-row item table\n\n\
         Generated by `{command}`. Machine: {machine}. Raw figures: `{}`.\n\n\
         ## Targets\n\n{targets}\n{}",
        json.display(),
        markdown(t)
    )
}
