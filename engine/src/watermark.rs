//! `<db>/WATERMARK`: what RocksDB is known to hold ([`Watermark`]: the compaction generation and
//! the write count at Siren's last flush), kept in a file of its own outside RocksDB, so that a
//! RocksDB that comes back older than it was is caught at open (docs/ARCHITECTURE.md, "Recovery").

use std::fs;
use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};
use crate::records::{self, Watermark};
use crate::segment::sync_dir;

const WATERMARK_FILE: &str = "WATERMARK";

/// The watermark of the database at `db`; `None` if it has no file yet.
pub fn read(db: &Path) -> Result<Option<Watermark>> {
    let path = db.join(WATERMARK_FILE);
    match fs::read(&path) {
        Ok(b) => Ok(Some(
            records::decode_watermark(&b).map_err(|e| e.at(&path, "file"))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(&path, e)),
    }
}

/// Replace `<db>/WATERMARK` atomically and durably: write a temporary file, fsync it, rename it
/// over the old one and fsync the directory.
pub fn write(db: &Path, w: &Watermark) -> Result<()> {
    failpoint!("watermark::before_write");
    let tmp = db.join(format!("{WATERMARK_FILE}.tmp"));
    let dest = db.join(WATERMARK_FILE);
    let mut f = fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    f.write_all(&records::encode_watermark(w))
        .map_err(|e| Error::io(&tmp, e))?;
    f.sync_all().map_err(|e| Error::io(&tmp, e))?;
    fs::rename(&tmp, &dest).map_err(|e| Error::io(&dest, e))?;
    sync_dir(db)
}
