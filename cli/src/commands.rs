//! `siren import`, `siren semid fit`, `siren train`, `siren eval`, `siren compare`: thin
//! command-line wrappers; the logic lives in `siren-model` and `siren-lab`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};
use siren_lab::movielens::MovieLensPaths;
use siren_lab::{experiment, import};
use siren_model::dataset::{self, DatasetDir};
use siren_model::models::{ModelConfig, ModelKind};
use siren_model::semid::RqKmeansConfig;
use siren_model::synth::PlantedConfig;
use siren_model::train::{evaluate, train, PrepareOptions, TrainConfig};

type CliResult = Result<ExitCode, Box<dyn std::error::Error>>;

#[derive(Args, Clone)]
pub struct SemidArgs {
    /// SemID levels.
    #[arg(long, default_value_t = 3)]
    levels: usize,
    /// Codes per level.
    #[arg(long, default_value_t = 256)]
    codebook: usize,
    /// k-means iterations per level.
    #[arg(long, default_value_t = 20)]
    iterations: usize,
    #[arg(long, default_value_t = 1)]
    semid_seed: u64,
}

impl SemidArgs {
    fn config(&self) -> RqKmeansConfig {
        RqKmeansConfig {
            levels: self.levels,
            codebook_size: self.codebook,
            iterations: self.iterations,
            seed: self.semid_seed,
            ..RqKmeansConfig::default()
        }
    }
}

#[derive(Subcommand)]
pub enum ImportCommand {
    /// MovieLens ratings.csv, movies.csv and a row-aligned f32 embedding file.
    Movielens {
        /// Folder holding ratings.csv, movies.csv and movies_minilm384.f32.
        #[arg(long)]
        dir: Option<PathBuf>,
        #[arg(long)]
        ratings: Option<PathBuf>,
        #[arg(long)]
        movies: Option<PathBuf>,
        #[arg(long)]
        embeddings: Option<PathBuf>,
        /// Reduce the embeddings to their first N principal components, rounded to int8, as the
        /// 128-d int8 vectors of MUSE's reference data (for a like-for-like comparison).
        #[arg(long, value_name = "N")]
        reduce_dim: Option<usize>,
        /// New dataset directory.
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        semid: SemidArgs,
    },
    /// Synthetic lifelong users with planted long-term and recent interests.
    Synthetic {
        #[arg(long)]
        out: PathBuf,
        /// Start from the lifelong Taobao-MM-like preset (20,000 users with 1,000 events each,
        /// 10 impressions after the history, popularity in the click model, split by user);
        /// the flags below override it.
        #[arg(long)]
        lifelong: bool,
        #[arg(long)]
        users: Option<usize>,
        #[arg(long, default_value_t = 50_000)]
        items: usize,
        #[arg(long)]
        min_events: Option<usize>,
        #[arg(long)]
        max_events: Option<usize>,
        #[arg(long)]
        impressions_per_user: Option<usize>,
        /// Logit weight of item popularity in the click model.
        #[arg(long)]
        w_popularity: Option<f64>,
        /// Logit weight of a long-term interest (clusters seen only before the last 200 events).
        #[arg(long)]
        w_long: Option<f64>,
        /// Logit weight of a current interest (clusters of the last 200 events).
        #[arg(long)]
        w_current: Option<f64>,
        /// Logit weight of each item's latent quality (a standard normal per item that nothing
        /// but its own impressions' labels reveal); 0 leaves only the interests to learn.
        #[arg(long)]
        w_quality: Option<f64>,
        #[arg(long, default_value_t = 64)]
        dim: usize,
        #[arg(long, default_value_t = 11)]
        seed: u64,
        /// Share of each domain in the impressions and events, comma-separated (domain d is the
        /// d-th): `0.85,0.05,0.04,0.03,0.02,0.01` for one head and five tail domains.
        #[arg(long, default_value = "1")]
        domain_shares: String,
        /// Standard deviation of each tail domain's per-cluster click affinity (logit units).
        #[arg(long, default_value_t = 1.5)]
        domain_shift: f64,
        #[command(flatten)]
        semid: SemidArgs,
    },
    /// Events and items as JSON lines into a database (the HTTP API's shapes).
    Jsonl(crate::jsonl::JsonlArgs),
    /// Taobao-MM parquet (the MUSE dataset's format).
    Taobao {
        /// Folder in either Taobao-MM layout: the six tables under their standard names, or
        /// joined shards in train/ and test/ next to scl_embedding_int8_p90.parquet.
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        semid: SemidArgs,
    },
}

#[derive(Subcommand)]
pub enum ExportCommand {
    /// Taobao-MM parquet: the six tables, or joined shards with --shards (embeddings as int8,
    /// categories + 1; see --histories).
    Taobao {
        /// Dataset directory made by `siren import`.
        #[arg(long)]
        data: PathBuf,
        /// New folder to write.
        #[arg(long)]
        out: PathBuf,
        /// Write the public release's joined shards, this many per split, instead of the six
        /// tables.
        #[arg(long)]
        shards: Option<usize>,
        /// Newest events kept of each history.
        #[arg(long, default_value_t = 1000)]
        max_history: usize,
        /// Which history each sample's row carries: `as-of`, the user's events before that
        /// impression (joined shards only; their default), or `first-impression`, one history
        /// per user, its events before its earliest impression (the six tables' only choice).
        #[arg(long, value_enum)]
        histories: Option<HistoriesArg>,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum HistoriesArg {
    AsOf,
    FirstImpression,
}

/// `siren export`.
pub fn export(cmd: ExportCommand) -> CliResult {
    let ExportCommand::Taobao {
        data,
        out,
        shards,
        max_history,
        histories,
    } = cmd;
    use siren_lab::taobao_export::Histories;
    let histories = match (histories, shards) {
        (Some(HistoriesArg::AsOf), _) | (None, Some(_)) => Histories::AsOf,
        (Some(HistoriesArg::FirstImpression), _) | (None, None) => Histories::FirstImpression,
    };
    let opts = siren_lab::taobao_export::ExportOptions {
        shards,
        max_history,
        histories,
    };
    let report = siren_lab::taobao_export::export(&DatasetDir::new(data), &out, &opts)?;
    println!("exported to {}", out.display());
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct TrainArgs {
    /// Dataset directory made by `siren import`.
    #[arg(long)]
    data: PathBuf,
    /// One of: no-seq, din, sim-hard, muse, siren-soft, siren-hard, siren-soft-nosim,
    /// siren-soft-noprefix, siren-hard-nosim, siren-hard-noprefix, siren-soft-noev,
    /// siren-hard-noev; optionally with `-ctr` (the target's click statistics in training,
    /// e.g. sim-hard-ctr); optionally followed by a multi-domain form: +shared-bottom, +mmoe, +crocodile, with -m<experts> (mmoe,
    /// crocodile) and -cov<weight> or -nocov (crocodile), e.g. din+crocodile-m2-cov0.05.
    #[arg(long)]
    model: String,
    /// Checkpoint directory to write.
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    train: TrainFlags,
}

#[derive(Args, Clone)]
pub struct TrainFlags {
    #[arg(long, default_value_t = 5)]
    epochs: usize,
    #[arg(long, default_value_t = 256)]
    batch_size: usize,
    #[arg(long, default_value_t = 2e-3)]
    lr: f64,
    /// Learning rate of the embedding tables (sparse Adam).
    #[arg(long, default_value_t = 2e-3)]
    embedding_lr: f64,
    /// Standard deviation of new embedding rows.
    #[arg(long, default_value_t = 0.05)]
    embedding_std: f64,
    #[arg(long, default_value_t = 1e-4)]
    weight_decay: f64,
    /// Ids seen fewer times than this in training share the unknown row.
    #[arg(long, default_value_t = 1)]
    min_count: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long, default_value_t = 1)]
    patience: usize,
    /// Also evaluate on validation every this many training batches within each epoch
    /// (0 = at the end of each epoch only); the best weights seen at any check are kept.
    #[arg(long, default_value_t = 0)]
    validate_every: usize,
    /// Train on the impressions in the order of the training split instead of shuffling them
    /// (MUSE's reference code does not shuffle; see docs/MODELS.md).
    #[arg(long)]
    no_shuffle: bool,
    /// Threads for reading samples from the engine.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Memory the built samples of all splits may take, in MiB. A dataset whose samples need
    /// more is streamed: every epoch and evaluation builds them again from the engine, one
    /// block at a time (slower, bounded memory).
    #[arg(long, default_value_t = siren_model::samples::DEFAULT_SAMPLE_MEMORY >> 20)]
    sample_memory_mib: usize,
    /// Leave the behaviours' action (rating, click type) out of every model's tokens.
    #[arg(long)]
    no_action: bool,
    /// Leave the time gap between behaviour and impression out of every model's tokens.
    #[arg(long)]
    no_gap: bool,
    /// Leave the user-id embedding out of every model.
    #[arg(long)]
    no_user_id: bool,
    /// Leave the target's projected multimodal embedding out of every model (its vectors then
    /// enter only through cosines: the GSU, similarity buckets, SimTier, SA-TA).
    #[arg(long)]
    no_mm_target: bool,
    /// SIREN models: leave the target's item embedding out of the head and the recent
    /// branch's query (the item then reaches the head through the transformer only).
    #[arg(long)]
    no_head_item: bool,
    /// Dropout on every model's head input while training (0 = none).
    #[arg(long, default_value_t = 0.0, value_parser = dropout_rate)]
    dropout: f32,
    /// MUSE's reference regime, overriding the flags above: one epoch, batch 1,000, dense
    /// learning rate 2e-4, embedding learning rate 2e-3, embedding std 0.001, no action or
    /// time-gap features, no projected multimodal target embedding, din, sim-hard and muse as
    /// the reference's one network (`--reference-net`), and the validation impressions trained
    /// on (no hold-out). The user id stays (the reference's head has user embeddings);
    /// `--no-user-id` drops it too.
    #[arg(long)]
    reference: bool,
    /// Build din, sim-hard and muse as the one network MUSE's reference code trains for all
    /// three (its MUSE_DIN: short-sequence attention, SA-TA over the method's long sequence,
    /// sequence means, two SimTier histograms, a Dice head 256-128-64, embeddings 16 wide, no
    /// projected multimodal target). Other models are unchanged.
    #[arg(long)]
    reference_net: bool,
}

/// A dropout rate: at least 0, below 1.
fn dropout_rate(s: &str) -> std::result::Result<f32, String> {
    match s.parse::<f32>() {
        Ok(p) if (0.0..1.0).contains(&p) => Ok(p),
        _ => Err(format!("{s:?} is not a rate in [0, 1)")),
    }
}

impl TrainFlags {
    /// The flags with `--reference` applied.
    fn resolved(&self) -> TrainFlags {
        if !self.reference {
            return self.clone();
        }
        TrainFlags {
            epochs: 1,
            batch_size: 1_000,
            lr: 2e-4,
            embedding_lr: 2e-3,
            embedding_std: 1e-3,
            no_action: true,
            no_gap: true,
            no_mm_target: true,
            reference_net: true,
            ..self.clone()
        }
    }

    /// `cfg` with the input switches applied.
    fn model(&self, cfg: ModelConfig) -> ModelConfig {
        let f = self.resolved();
        let cfg = ModelConfig {
            no_action: f.no_action,
            no_gap: f.no_gap,
            no_user_id: f.no_user_id,
            no_mm_target: f.no_mm_target,
            dropout: f.dropout,
            no_head_item: f.no_head_item
                && matches!(cfg.kind, ModelKind::SirenSoft | ModelKind::SirenHard),
            ..cfg
        };
        if f.reference_net {
            cfg.with_reference_net()
        } else {
            cfg
        }
    }

    fn config(&self) -> TrainConfig {
        let f = self.resolved();
        f.config_as_given()
    }

    /// How samples are read for training with these flags.
    fn prepare(&self) -> PrepareOptions {
        PrepareOptions {
            threads: self.threads,
            min_count: self.min_count,
            sample_memory: self.sample_memory_mib.saturating_mul(1 << 20),
        }
    }

    // Settings without a flag take their defaults, including fields added later.
    #[allow(clippy::needless_update)]
    fn config_as_given(&self) -> TrainConfig {
        TrainConfig {
            epochs: self.epochs,
            batch_size: self.batch_size,
            lr: self.lr,
            embedding_lr: self.embedding_lr,
            embedding_std: self.embedding_std,
            weight_decay: self.weight_decay,
            min_count: self.min_count,
            seed: self.seed,
            patience: self.patience,
            validate_every: self.validate_every,
            unshuffled: self.no_shuffle,
            progress: true,
            ..TrainConfig::default()
        }
    }
}

pub fn import(cmd: ImportCommand) -> CliResult {
    let meta = match cmd {
        ImportCommand::Movielens {
            dir,
            ratings,
            movies,
            embeddings,
            reduce_dim,
            out,
            semid,
        } => {
            let base = dir.as_deref().map(MovieLensPaths::in_dir);
            let pick = |given: Option<PathBuf>, from_dir: Option<PathBuf>, what: &str| {
                given
                    .or(from_dir)
                    .ok_or_else(|| format!("give --dir or --{what}"))
            };
            let paths = MovieLensPaths {
                ratings: pick(ratings, base.as_ref().map(|b| b.ratings.clone()), "ratings")?,
                movies: pick(movies, base.as_ref().map(|b| b.movies.clone()), "movies")?,
                embeddings: pick(
                    embeddings,
                    base.as_ref().map(|b| b.embeddings.clone()),
                    "embeddings",
                )?,
            };
            import::import_movielens(&paths, &DatasetDir::new(out), &semid.config(), reduce_dim)?
        }
        ImportCommand::Synthetic {
            out,
            lifelong,
            w_popularity,
            w_long,
            w_current,
            w_quality,
            users,
            items,
            min_events,
            max_events,
            impressions_per_user,
            dim,
            seed,
            domain_shares,
            domain_shift,
            semid,
        } => {
            let domain_shares = domain_shares
                .split(',')
                .map(|x| x.trim().parse::<f64>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| "--domain-shares takes comma-separated numbers")?;
            if domain_shares.is_empty()
                || domain_shares.len() > usize::from(u16::MAX)
                || domain_shares.iter().any(|s| !(s.is_finite() && *s > 0.0))
            {
                return Err("--domain-shares must be positive numbers".into());
            }
            if !(domain_shift.is_finite() && domain_shift >= 0.0) {
                return Err("--domain-shift must be a non-negative number".into());
            }
            if [w_popularity, w_long, w_current, w_quality]
                .iter()
                .flatten()
                .any(|w| !w.is_finite())
            {
                return Err(
                    "--w-popularity, --w-long, --w-current and --w-quality must be finite numbers"
                        .into(),
                );
            }
            let base = if lifelong {
                PlantedConfig::lifelong()
            } else {
                PlantedConfig::default()
            };
            let cfg = PlantedConfig {
                domain_shares,
                domain_shift,
                users: users.unwrap_or(base.users),
                items,
                min_events: min_events.unwrap_or(base.min_events),
                max_events: max_events.unwrap_or(base.max_events),
                impressions_per_user: impressions_per_user.unwrap_or(base.impressions_per_user),
                w_popularity: w_popularity.unwrap_or(base.w_popularity),
                w_long: w_long.unwrap_or(base.w_long),
                w_current: w_current.unwrap_or(base.w_current),
                w_quality: w_quality.unwrap_or(base.w_quality),
                dim,
                seed,
                ..base
            };
            dataset::import_synthetic(&cfg, &DatasetDir::new(out), &semid.config())?
        }
        ImportCommand::Taobao { dir, out, semid } => {
            import::import_taobao(&dir, &DatasetDir::new(out), &semid.config())?
        }
        ImportCommand::Jsonl(a) => return crate::jsonl::run(&a),
    };
    println!(
        "imported {}: {} train, {} validation, {} test impressions",
        meta.name, meta.train, meta.valid, meta.test
    );
    println!("SemIDs: {}", meta.codebook);
    println!("{}", serde_json::to_string_pretty(&meta.details)?);
    Ok(ExitCode::SUCCESS)
}

/// `siren semid fit`: fit a codebook on an existing database's catalog and give every item its
/// SemID (then compact, so the prefix indexes use them).
pub fn semid_fit(db_path: &Path, out: &Path, semid: &SemidArgs) -> CliResult {
    let db = crate::inspect::open_existing(db_path)?;
    let cfg = semid.config();
    let opts = db.options();
    if usize::from(opts.semid_levels) != cfg.levels
        || opts.semid_codebook_size as usize != cfg.codebook_size
    {
        return Err(format!(
            "the database was created for {} levels of {} codes; pass --levels {} --codebook {}",
            opts.semid_levels,
            opts.semid_codebook_size,
            opts.semid_levels,
            opts.semid_codebook_size
        )
        .into());
    }
    let (codebook, report) = dataset::fit_semids(&db, &cfg)?;
    db.compact()?;
    codebook.save(out)?;
    println!("{report}");
    Ok(ExitCode::SUCCESS)
}

pub fn train_cmd(a: &TrainArgs) -> CliResult {
    let cfg = a.train.model(ModelConfig::named(&a.model)?);
    let dir = DatasetDir::new(&a.data);
    let (_db, _meta, data) = dataset::prepare_with(
        &dir,
        std::slice::from_ref(&cfg),
        &a.train.prepare(),
        a.train.reference,
    )?;
    let t = train(&cfg, &a.train.config(), &data)?;
    t.save(&a.out, &data.vocabs, data.levels)?;
    let (m, _) = evaluate(t.model.as_ref(), &cfg, &data, &data.test)?;
    println!(
        "{}: best epoch {}, test GAUC {:?}, AUC {:?}; checkpoint in {}",
        cfg.name(),
        t.best_epoch,
        m.gauc,
        m.auc,
        a.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

pub fn eval(data: &Path, checkpoints: &[PathBuf], out: &Path, threads: usize) -> CliResult {
    let dir = DatasetDir::new(data);
    experiment::eval(&dir, checkpoints, out, threads, |e, head| {
        let m = &e.test;
        println!(
            "{} ({}): test GAUC {:?}, AUC {:?}, log loss {:?}",
            e.model, e.checkpoint, m.gauc, m.auc, m.log_loss
        );
        if let Some(t) = &e.tail {
            let each: Vec<String> = e
                .domains
                .iter()
                .map(|d| format!("{}: {:?}", d.domain, d.metrics.gauc))
                .collect();
            println!(
                "  GAUC by domain (head {head}) {}; tail {:?}",
                each.join(", "),
                t.gauc
            );
        }
    })?;
    println!(
        "report: {}/report.json, {}/report.png",
        out.display(),
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}

pub fn compare(
    data: &Path,
    models: &str,
    seeds: &str,
    flags: &TrainFlags,
    out: &Path,
) -> CliResult {
    let models = models
        .split(',')
        .map(|m| ModelConfig::named(m.trim()).map(|c| flags.model(c)))
        .collect::<Result<Vec<_>, _>>()?;
    let seeds = seeds
        .split(',')
        .map(|s| s.trim().parse::<u64>())
        .collect::<Result<Vec<_>, _>>()?;
    let report = experiment::compare(
        &DatasetDir::new(data),
        &models,
        &seeds,
        &flags.config(),
        out,
        &flags.prepare(),
        flags.reference,
    )?;
    println!("{}", siren_lab::report::compare_markdown(&report));
    println!(
        "written: {}/compare.json, compare.md, compare.png, predictions/",
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}

#[derive(Subcommand)]
pub enum SemidCommand {
    /// Fit RQ-KMeans on a database's catalog embeddings and store every item's SemID.
    Fit {
        /// Database directory.
        #[arg(long)]
        db: PathBuf,
        /// Codebook file to write.
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        semid: SemidArgs,
    },
}

#[derive(Args)]
pub struct EvalArgs {
    #[arg(long)]
    pub data: PathBuf,
    /// One or more checkpoint directories.
    #[arg(long, required = true)]
    pub checkpoint: Vec<PathBuf>,
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
}

#[derive(Args)]
pub struct CompareArgs {
    #[arg(long)]
    pub data: PathBuf,
    /// Comma-separated model names (as `siren train --model` takes them; `-ctr` adds the
    /// target's click statistics, e.g. siren-hard-ctr).
    #[arg(
        long,
        default_value = "no-seq,din,sim-hard,muse,siren-soft,siren-hard,siren-soft-nosim,siren-soft-noprefix"
    )]
    pub models: String,
    #[arg(long, default_value = "1,2,3")]
    pub seeds: String,
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub train: TrainFlags,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        train: TrainFlags,
    }

    fn model(args: &[&str], name: &str) -> ModelConfig {
        let flags = Flags::parse_from(std::iter::once("siren").chain(args.iter().copied())).train;
        flags.model(ModelConfig::named(name).unwrap())
    }

    /// `--reference` builds din, sim-hard and muse as the reference's one network (as
    /// `--reference-net` does) and leaves SIREN and no-seq as they are, but for its inputs.
    #[test]
    fn the_reference_regime_builds_the_reference_network_for_its_methods() {
        for name in ["din", "sim-hard", "muse"] {
            let cfg = model(&["--reference"], name);
            assert!(cfg.reference_net && cfg.no_mm_target, "{name}");
            let by_switch = [
                "--reference-net",
                "--no-mm-target",
                "--no-action",
                "--no-gap",
            ];
            assert_eq!(cfg, model(&by_switch, name), "{name}");
            assert!(!model(&[], name).reference_net, "{name}");
        }
        for name in ["siren-hard", "siren-soft", "no-seq"] {
            let cfg = model(&["--reference"], name);
            assert!(
                !cfg.reference_net && cfg.no_mm_target && cfg.no_action,
                "{name}"
            );
            assert_eq!(cfg.dim, ModelConfig::named(name).unwrap().dim, "{name}");
        }
    }
}
