//! # siren-model
//!
//! Everything from item embeddings to a trained, evaluated scorer, on the CPU with candle:
//! Semantic IDs by residual k-means ([`semid`]), datasets imported into the engine
//! ([`data`], [`synth`]), training samples read through the same retrieval calls serving uses
//! ([`features`]), the SIREN ESU and its baselines ([`models`]), the trainer ([`train`]) and the
//! evaluator ([`metrics`] with per-domain GAUC, [`collapse`], [`report`]), and in-database scoring of candidates for serving
//! ([`ranker`]).

pub mod batch;
pub mod candidates;
pub mod collapse;
pub mod data;
pub mod error;
pub mod experiment;
pub mod features;
pub mod metrics;
pub mod models;
pub mod plot;
pub mod ranker;
pub mod report;
pub mod sealed;
pub mod semid;
pub mod synth;
pub mod train;

pub use error::{ModelError, Result};
pub use ranker::{CandidateScore, Gsu, Ranker, ScoreOptions, Scored, ServedModel};
