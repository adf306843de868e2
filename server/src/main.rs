//! `siren`: command-line entry point.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod demo;
mod inspect;
mod jsonl;
mod model_cli;
mod serve_cli;

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
    Serve(serve_cli::ServeArgs),
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
    Import(model_cli::ImportCommand),
    /// Semantic IDs.
    #[command(subcommand)]
    Semid(model_cli::SemidCommand),
    /// Train one model on a dataset directory and write a checkpoint.
    Train(model_cli::TrainArgs),
    /// Score a dataset's test split with checkpoints; write predictions, report.json, report.png.
    Eval(model_cli::EvalArgs),
    /// Train several models with several seeds and print the table of GAUC and AUC.
    Compare(model_cli::CompareArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve_cli::run(&args),
        Command::Demo(args) => demo::run(&args),
        Command::Inspect { path } => inspect::inspect(&path),
        Command::Verify { path } => inspect::verify(&path),
        Command::Import(cmd) => model_cli::import(cmd),
        Command::Semid(model_cli::SemidCommand::Fit { db, out, semid }) => {
            model_cli::semid_fit(&db, &out, &semid)
        }
        Command::Train(a) => model_cli::train_cmd(&a),
        Command::Eval(a) => model_cli::eval(&a.data, &a.checkpoint, &a.out, a.threads),
        Command::Compare(a) => model_cli::compare(&a.data, &a.models, &a.seeds, &a.train, &a.out),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("siren: {e}");
            ExitCode::FAILURE
        }
    }
}
