//! # siren-lab
//!
//! Siren offline: what turns public datasets into dataset directories, and what runs and reports
//! experiments over them. Nothing here is needed to serve.
//!
//! - Importers: [`movielens`] (CSV) and [`taobao`] (Taobao-MM parquet) read their formats;
//!   [`import`] writes a dataset directory (`siren_model::dataset`) from either;
//!   [`taobao_export`] writes a dataset directory back out in the Taobao-MM format. The synthetic
//!   dataset has no outside format and lives in `siren-model`
//!   (`siren_model::dataset::import_synthetic`); JSON lines of the HTTP API's shapes are
//!   imported by the CLI (`siren import jsonl`), next to those shapes.
//! - Experiments: [`experiment`] trains models over seeds (`siren compare`) and scores
//!   checkpoints on a test split (`siren eval`); [`report`] writes their JSON, Markdown and
//!   PNG; [`chart`] draws the PNGs; [`table`] is the Markdown tables.
//! - [`error`]: the crate's one error type.

pub mod chart;
pub mod error;
pub mod experiment;
pub mod import;
pub mod movielens;
pub mod reduce;
pub mod report;
pub mod table;
pub mod taobao;
pub mod taobao_export;

pub use error::{LabError, Result};
