//! # siren-serve
//!
//! Scoring inside the database for a server, the way text-embeddings-inference separates its
//! serving core from its router and its backends: this crate knows the engine and the model,
//! and nothing of HTTP.
//!
//! - [`ranker`]: the [`Ranker`], a loaded model and a SemID codebook behind atomic swaps; each
//!   call is handed an engine snapshot and scores N candidates for one user.
//! - [`served`]: a checkpoint ready to serve, with its version and the database shape it fits.
//! - [`retrieval`]: which retrieval feeds the model's GSU slot, each candidate's catalog
//!   look-up, and the batched engine calls.
//! - [`candidates`]: the ESU inputs of one user and many candidates, token for token what
//!   training gives the same impressions.
//! - [`forward`]: the fused serving forward of the SIREN ESU (candle stays the trainer and
//!   the fallback for the models it does not cover).
//! - [`semids`]: SemIDs for items upserted without one, from the codebook.
//! - [`summaries`]: users' history summaries (the evidence features' target-independent part)
//!   kept across requests, keyed by the engine's stamp of the history they summarise.
//! - [`error`]: the crate's one error type.

pub mod candidates;
pub mod error;
pub mod forward;
pub mod ranker;
pub mod retrieval;
pub mod semids;
pub mod served;
pub mod summaries;

pub use error::{Result, ServeError};
pub use ranker::{CandidateScore, Ranker, ScoreOptions, ScoreTimings, Scored};
pub use retrieval::Retrieved;
pub use served::{DbShape, ServedModel};
pub use siren_model::Retrieval;
pub use summaries::SummaryCache;
