//! # siren-server
//!
//! The `siren` binary's HTTP/JSON API as a library, so that tests and other programs can start
//! it in-process: [`config::Config`] says what to serve, [`state::open_ranker`] opens the
//! database and model, [`serve::start`] binds and serves, [`api::app`] is the axum router.
//! Errors become JSON in one place, [`error::ApiError`].

pub mod api;
pub mod config;
pub mod error;
pub mod metrics;
pub mod serve;
pub mod state;
