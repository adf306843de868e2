//! JSON files Siren writes (a checkpoint's `config.json`, a dataset's `dataset.json`) are sealed
//! with a checksum: a `checksum` field holding the CRC32C of the file's canonical form (the same
//! value written as pretty JSON with `checksum` 0). Reading parses the value, recomputes the
//! canonical form and compares, so a flipped digit anywhere is caught while harmless changes
//! (white space) are not errors. The format version is checked first, from the raw JSON, so that
//! a file of another version reports its version rather than a checksum mismatch; a kind may
//! keep reading versions back to its `OLDEST`.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{ModelError, Result};

pub trait Sealed: Serialize + DeserializeOwned {
    /// Name of the file kind, for errors.
    const WHAT: &'static str;
    /// The version written.
    const VERSION: u32;
    /// The oldest version still read (its missing fields take their defaults and must not be
    /// serialised, so that its canonical form is unchanged).
    const OLDEST: u32 = Self::VERSION;
    fn checksum_mut(&mut self) -> &mut u32;
}

fn canonical<T: Sealed>(value: &mut T) -> (u32, Vec<u8>) {
    let stored = std::mem::take(value.checksum_mut());
    let bytes = serde_json::to_vec_pretty(value).expect("sealed values serialise");
    (stored, bytes)
}

/// The sealed bytes of `value` (its checksum field is set on the way).
pub fn seal<T: Sealed>(value: &mut T) -> Vec<u8> {
    let (_, bytes) = canonical(value);
    *value.checksum_mut() = crc32c::crc32c(&bytes);
    serde_json::to_vec_pretty(value).expect("sealed values serialise")
}

/// Parse and check a sealed file's bytes.
pub fn open<T: Sealed>(bytes: &[u8], path: &Path) -> Result<T> {
    let corrupt = |detail: String| ModelError::DataCorruption {
        path: path.to_path_buf(),
        detail,
    };
    let raw: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
    let found = raw
        .get("format_version")
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0);
    if !(u64::from(T::OLDEST)..=u64::from(T::VERSION)).contains(&found) {
        return Err(ModelError::UnsupportedVersion {
            path: path.to_path_buf(),
            what: T::WHAT,
            found: u32::try_from(found).unwrap_or(u32::MAX),
            supported: T::VERSION,
        });
    }
    let mut value: T = serde_json::from_value(raw).map_err(|e| corrupt(e.to_string()))?;
    let (stored, canon) = canonical(&mut value);
    let actual = crc32c::crc32c(&canon);
    if !siren_engine::format::checksum_matches(stored, actual) {
        return Err(corrupt(format!(
            "checksum mismatch (stored {stored:08x}, computed {actual:08x})"
        )));
    }
    *value.checksum_mut() = stored;
    Ok(value)
}
