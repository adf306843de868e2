//! Siren's model crate. It will hold Semantic IDs (residual k-means), the ESU, the baselines,
//! the trainer and the evaluator. Until then it only re-exports the engine it builds on.
pub use siren_engine as engine;
