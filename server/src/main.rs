//! `siren`: command-line entry point.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod demo;
mod inspect;

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(args) => demo::run(&args),
        Command::Inspect { path } => inspect::inspect(&path),
        Command::Verify { path } => inspect::verify(&path),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("siren: {e}");
            ExitCode::FAILURE
        }
    }
}
