//! `siren`: command-line entry point.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cluster;
mod commands;
mod demo;
mod inspect;
mod jsonl;
mod serve;

#[derive(Parser)]
#[command(
    name = "siren",
    version,
    about = "Lifelong user-behaviour sequences with retrieval inside the database"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP/JSON API (configuration: file, environment, flags).
    Serve(serve::ServeArgs),
    /// Cluster mode: create a cluster, or start one on this machine to try it.
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
    /// Build a database of synthetic users in a local folder and run hard and soft retrieval.
    Demo(demo::DemoArgs),
    /// Print users, events, segment files and bytes per column of a database.
    Inspect {
        /// Database directory.
        path: PathBuf,
    },
    /// Check every checksum of every file of a database; exit with 1 if anything is damaged.
    Verify {
        /// Database directory.
        path: PathBuf,
    },
    /// Import a dataset into a new dataset directory (database, SemIDs, impressions).
    #[command(subcommand)]
    Import(commands::ImportCommand),
    /// Write a dataset directory in an outside format.
    #[command(subcommand)]
    Export(commands::ExportCommand),
    /// Semantic IDs.
    #[command(subcommand)]
    Semid(commands::SemidCommand),
    /// Train one model on a dataset directory and write a checkpoint.
    Train(commands::TrainArgs),
    /// Score a dataset's test split with checkpoints; write predictions, report.json, report.png.
    Eval(commands::EvalArgs),
    /// Train several models with several seeds and print the table of GAUC and AUC.
    Compare(commands::CompareArgs),
}

/// Threads candle's CPU kernels use unless `RAYON_NUM_THREADS` says otherwise. The model's
/// matrices are small: on this project's reference machine (2 cores) one thread trains about
/// 1.6x faster than one per core, and the sample readers and HTTP workers use the other cores.
const DEFAULT_KERNEL_THREADS: &str = "1";

fn main() -> ExitCode {
    // Before any thread exists: candle reads the variable when it sizes its matrix products.
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        std::env::set_var("RAYON_NUM_THREADS", DEFAULT_KERNEL_THREADS);
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve::run(&args),
        Command::Cluster(cmd) => cluster::run(&cmd),
        Command::Demo(args) => demo::run(&args),
        Command::Inspect { path } => inspect::inspect(&path),
        Command::Verify { path } => inspect::verify(&path),
        Command::Import(cmd) => commands::import(cmd),
        Command::Export(cmd) => commands::export(cmd),
        Command::Semid(commands::SemidCommand::Fit { db, out, semid }) => {
            commands::semid_fit(&db, &out, &semid)
        }
        Command::Train(a) => commands::train_cmd(&a),
        Command::Eval(a) => commands::eval(&a.data, &a.checkpoint, &a.out, a.threads),
        Command::Compare(a) => commands::compare(&a.data, &a.models, &a.seeds, &a.train, &a.out),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("siren: {e}");
            ExitCode::FAILURE
        }
    }
}
