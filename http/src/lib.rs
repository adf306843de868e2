//! # siren-http
//!
//! Siren's HTTP/JSON API, and nothing else: [`config::Config`] says what to serve,
//! [`state::open`] opens the database and the ranker (`siren-serve`), [`server::start`] binds
//! and serves, [`api::app`] is the axum router, [`metrics`] the Prometheus metrics. Errors
//! become JSON in one place, [`error::ApiError`]. The `siren` binary (`siren-cli`) and tests
//! start it in-process.

pub mod admission;
pub mod api;
pub mod config;
pub mod error;
pub mod metrics;
pub mod server;
pub mod state;
