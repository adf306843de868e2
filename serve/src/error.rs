//! The serving crate's one error type.

use siren_model::ModelError;

pub type Result<T, E = ServeError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    #[error(transparent)]
    Engine(#[from] siren_engine::Error),

    /// Loading a checkpoint or a codebook, or a forward pass, failed.
    #[error(transparent)]
    Model(#[from] ModelError),

    /// A model or codebook that does not fit the database, or a bad request.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// Scoring was asked of a ranker that has no model loaded.
    #[error("no model is loaded")]
    NoModel,
}

impl ServeError {
    pub fn invalid(msg: impl Into<String>) -> Self {
        ServeError::InvalidArgument(msg.into())
    }
}

impl From<candle_core::Error> for ServeError {
    fn from(e: candle_core::Error) -> Self {
        ServeError::Model(ModelError::Candle(e))
    }
}
