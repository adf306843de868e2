//! The engine's one error type.
//!
//! Corruption names the file and the block (as tantivy's `DataCorruption` does); a format version
//! this build cannot read has its own variant, so that an upgrade problem is not mistaken for a
//! damaged disk.

use std::fmt;
use std::path::PathBuf;

/// Result alias used throughout the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file or directory operation failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// Stored bytes failed a magic, checksum, bounds or consistency check.
    #[error("data corruption in {path}, {block}: {detail}")]
    DataCorruption {
        /// The file (a segment) or, for records kept in RocksDB, the RocksDB directory.
        path: PathBuf,
        /// Which part of the file: e.g. `user 42 block 3 item column`, `footer`, `pending record user=7 seq=9`.
        block: String,
        detail: String,
    },

    /// A structure carries a format version this build does not read.
    #[error("{path}: {what} has format version {found}, this build reads version {supported}")]
    UnsupportedVersion {
        path: PathBuf,
        what: &'static str,
        found: u32,
        supported: u32,
    },

    /// The database was created with settings that differ from the ones given at open.
    #[error("database was created with {field} = {stored}, but the options ask for {requested}")]
    OptionsMismatch {
        field: &'static str,
        stored: String,
        requested: String,
    },

    /// A caller passed something the engine cannot accept (wrong embedding length, k = 0, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// RocksDB reported an error that is not corruption (I/O, busy, lock held, ...).
    #[error("RocksDB error while {context}: {source}")]
    Store {
        /// What the engine was doing: `opening`, `writing a batch`, `reading the config`, ...
        context: &'static str,
        /// RocksDB's own error, boxed so that no RocksDB type appears in the engine's API.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },

    /// The database directory does not exist and `create_if_missing` is off.
    #[error("no database at {0}")]
    NotFound(PathBuf),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidArgument(msg.into())
    }

    /// True for the variants that mean stored bytes are damaged.
    pub fn is_corruption(&self) -> bool {
        matches!(self, Error::DataCorruption { .. })
    }
}

/// What a byte-level decoder reports. It knows nothing of files; the caller attaches the path and
/// the block with [`DecodeError::at`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    Corrupt(String),
    Version {
        what: &'static str,
        found: u32,
        supported: u32,
    },
}

impl DecodeError {
    pub fn corrupt(detail: impl Into<String>) -> Self {
        DecodeError::Corrupt(detail.into())
    }

    /// Prefix a corruption's detail with the part being decoded.
    pub fn context(self, what: impl fmt::Display) -> Self {
        match self {
            DecodeError::Corrupt(d) => DecodeError::Corrupt(format!("{what}: {d}")),
            v => v,
        }
    }

    /// Attach the file and the block this decoder was reading.
    pub fn at(self, path: impl Into<PathBuf>, block: impl fmt::Display) -> Error {
        match self {
            DecodeError::Corrupt(detail) => Error::DataCorruption {
                path: path.into(),
                block: block.to_string(),
                detail,
            },
            DecodeError::Version {
                what,
                found,
                supported,
            } => Error::UnsupportedVersion {
                path: path.into(),
                what,
                found,
                supported,
            },
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Corrupt(d) => write!(f, "corrupt: {d}"),
            DecodeError::Version {
                what,
                found,
                supported,
            } => write!(f, "{what} version {found}, supported {supported}"),
        }
    }
}

impl std::error::Error for DecodeError {}

pub type DecodeResult<T> = std::result::Result<T, DecodeError>;

/// Return early with a [`DecodeError::Corrupt`].
macro_rules! corrupt {
    ($($arg:tt)*) => {
        return Err($crate::error::DecodeError::Corrupt(format!($($arg)*)))
    };
}
pub(crate) use corrupt;
