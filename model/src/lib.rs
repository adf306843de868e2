//! Siren's model crate. So far it holds the synthetic data generator that the demo and the
//! benchmarks use; Semantic IDs, the ESU, the baselines, the trainer and the evaluator follow.

pub mod synth;
