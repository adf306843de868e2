//! # siren-model
//!
//! Everything from item embeddings to a trained, evaluated scorer, on the CPU with candle:
//! Semantic IDs by residual k-means ([`semid`]), datasets imported into the engine
//! ([`data`], [`synth`]), training samples read through the same retrieval calls serving uses
//! ([`features`]), the SIREN ESU and its baselines ([`models`]), the trainer ([`train`]) and the
//! evaluator ([`metrics`], [`report`]).

pub mod batch;
pub mod data;
pub mod error;
pub mod experiment;
pub mod features;
pub mod metrics;
pub mod models;
pub mod plot;
pub mod report;
pub mod semid;
pub mod synth;
pub mod train;

pub use error::{ModelError, Result};
