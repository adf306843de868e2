//! A user entry decoded whole: its columns and its [`Postings`]. What the decoded cache keeps per
//! hot user, so that reads and retrieval of that user touch no encoded byte again; what a reader
//! without the cache builds when it needs the whole entry anyway.

use crate::block::Block;
use crate::catalog::Catalog;
use crate::entry::Layout;
use crate::entry_v1::{self, Cols};
use crate::error::{corrupt, DecodeResult};
use crate::postings::{ByEntry, Postings};
use crate::prefix::PrefixLayout;
use crate::segment::Entry;

/// The time, action and domain of every event of an entry.
#[derive(Debug, Default, Clone)]
pub struct Columns {
    pub ts: Vec<i64>,
    pub action: Vec<u8>,
    pub domain: Vec<u16>,
}

pub struct Decoded {
    pub cols: Columns,
    pub postings: Postings,
}

impl Decoded {
    /// Approximate heap bytes.
    pub fn bytes(&self) -> usize {
        self.cols.ts.len() * 11 + self.postings.bytes()
    }
}

/// Decode every column of `entry`, and build its postings with the catalog's SemIDs (`full`:
/// with position codes and prefix groups, see [`Postings::build`]).
pub fn decode(
    entry: &Entry<'_>,
    catalog: &Catalog,
    layout: &PrefixLayout,
    full: bool,
) -> DecodeResult<Decoded> {
    Ok(Decoded {
        cols: columns(entry)?,
        postings: decode_postings(entry, catalog, layout, full)?,
    })
}

/// The time, action and domain of every event of `entry`.
pub fn columns(entry: &Entry<'_>) -> DecodeResult<Columns> {
    let n = entry.n_events();
    let mut cols = Columns {
        ts: Vec::with_capacity(n),
        action: Vec::with_capacity(n),
        domain: Vec::with_capacity(n),
    };
    match entry {
        Entry::V2(v) => {
            let mut b = Block::default();
            for i in 0..v.n_blocks() {
                v.decode_block(i, &mut b)?;
                append(&mut cols, &b);
            }
        }
        Entry::V1(v) => {
            let mut b = entry_v1::Block::default();
            let mut scratch = Vec::new();
            let cols_v1 = Cols {
                item: false,
                ..Cols::ALL
            };
            for i in 0..v.n_blocks() {
                v.decode_block(i, cols_v1, &mut b, &mut scratch)?;
                cols.ts.extend_from_slice(&b.ts);
                cols.action.extend_from_slice(&b.action);
                cols.domain.extend_from_slice(&b.domain);
            }
        }
    }
    Ok(cols)
}

/// The postings of `entry` (see [`Postings::build`]).
pub fn decode_postings(
    entry: &Entry<'_>,
    catalog: &Catalog,
    layout: &PrefixLayout,
    full: bool,
) -> DecodeResult<Postings> {
    let (rows, by_entry) = match entry {
        Entry::V2(v) => {
            let rows = v.dict_rows()?;
            let by_entry = match v.header.layout {
                Layout::Forward => ByEntry::from_codes(&v.codes()?, rows.len()),
                Layout::Inverted => v.lists()?.decode_all()?,
            };
            (rows, by_entry)
        }
        Entry::V1(v) => {
            let mut b = entry_v1::Block::default();
            let mut scratch = Vec::new();
            let mut codes = Vec::with_capacity(v.n_events());
            for i in 0..v.n_blocks() {
                v.decode_block(i, Cols::ITEM, &mut b, &mut scratch)?;
                codes.extend_from_slice(&b.item);
            }
            let rows = v.dict()?.to_vec();
            let by_entry = ByEntry::from_codes(&codes, rows.len());
            (rows, by_entry)
        }
    };
    check_rows(&rows, catalog)?;
    Ok(Postings::build(
        &rows,
        by_entry,
        entry.n_events(),
        catalog,
        layout,
        full,
    ))
}

fn append(cols: &mut Columns, b: &Block) {
    cols.ts.extend_from_slice(&b.ts);
    cols.action.extend_from_slice(&b.action);
    cols.domain.extend_from_slice(&b.domain);
}

/// Every dictionary row must exist in the catalog (the catalog only grows).
pub fn check_rows(rows: &[u32], catalog: &Catalog) -> DecodeResult<()> {
    if let Some(&bad) = rows.iter().find(|&&r| r >= catalog.len()) {
        corrupt!(
            "dictionary names catalog row {bad}, the catalog has {}",
            catalog.len()
        );
    }
    Ok(())
}
