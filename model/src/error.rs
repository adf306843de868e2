//! The model crate's one error type.

use std::path::PathBuf;

pub type Result<T, E = ModelError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    #[error(transparent)]
    Engine(#[from] siren_engine::Error),

    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),

    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// An input file could not be read as the format it claims to be.
    #[error("{path}: {detail}")]
    Input { path: PathBuf, detail: String },

    /// A file Siren wrote (codebook, checkpoint) failed a magic, checksum or consistency check.
    #[error("data corruption in {path}: {detail}")]
    DataCorruption { path: PathBuf, detail: String },

    #[error("{path}: {what} has format version {found}, this build reads version {supported}")]
    UnsupportedVersion {
        path: PathBuf,
        what: &'static str,
        found: u32,
        supported: u32,
    },

    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl ModelError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ModelError::Io {
            path: path.into(),
            source,
        }
    }

    pub fn input(path: impl Into<PathBuf>, detail: impl Into<String>) -> Self {
        ModelError::Input {
            path: path.into(),
            detail: detail.into(),
        }
    }

    pub fn invalid(msg: impl Into<String>) -> Self {
        ModelError::InvalidArgument(msg.into())
    }
}
