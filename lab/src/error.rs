//! The lab crate's one error type.

use std::path::PathBuf;

pub type Result<T, E = LabError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LabError {
    #[error(transparent)]
    Engine(#[from] siren_engine::Error),

    #[error(transparent)]
    Model(#[from] siren_model::ModelError),

    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// An input file (CSV, parquet, JSON lines) could not be read as the format it claims to be.
    #[error("{path}: {detail}")]
    Input { path: PathBuf, detail: String },

    /// A folder given as a dataset in an outside format does not hold that format's files (for
    /// Taobao-MM: neither of its layouts, both, or no embedding table).
    #[error("{dir}: not a usable dataset folder: {detail}")]
    Layout { dir: PathBuf, detail: String },

    /// A chart could not be drawn or written.
    #[error("drawing {path}: {detail}")]
    Chart { path: PathBuf, detail: String },

    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl LabError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        LabError::Io {
            path: path.into(),
            source,
        }
    }

    pub fn input(path: impl Into<PathBuf>, detail: impl Into<String>) -> Self {
        LabError::Input {
            path: path.into(),
            detail: detail.into(),
        }
    }

    pub fn invalid(msg: impl Into<String>) -> Self {
        LabError::InvalidArgument(msg.into())
    }
}
