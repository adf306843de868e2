//! # siren-model
//!
//! Everything from item embeddings to a trained, evaluated scorer, on the CPU with candle:
//! Semantic IDs by residual k-means ([`semid`]), the dataset directory, its CSV tables and the
//! synthetic dataset ([`dataset`], [`tables`], [`synth`]), training samples read through the same retrieval calls serving uses
//! ([`features`], [`batch`]), the SIREN ESU and its baselines ([`models`]), the trainer and its
//! checkpoints ([`train`]), ranking metrics with per-domain GAUC ([`metrics`]) and embedding
//! collapse ([`collapse`]).
//!
//! Offline-only formats (CSV, parquet, plots) live in `siren-lab`; scoring for serving lives in
//! `siren-serve`.

pub mod batch;
pub mod collapse;
pub mod data;
pub mod dataset;
pub mod error;
pub mod features;
pub mod labels;
pub mod metrics;
pub mod models;
pub mod samples;
pub mod sealed;
pub mod semid;
pub mod synth;
pub mod tables;
pub mod train;

pub use error::{ModelError, Result};
pub use features::{Retrieval, SeqKind};
