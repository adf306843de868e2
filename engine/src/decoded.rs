//! A user entry decoded whole: its columns and its [`Postings`]. What the decoded cache keeps per
//! hot user, so that reads and retrieval of that user touch no encoded byte again; what a reader
//! without the cache builds when it needs the whole entry anyway.

use crate::block::{Block, Stamp};
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
    pub events: Vec<Stamp>,
}

pub struct Decoded {
    pub cols: Columns,
    pub postings: Postings,
}

impl Decoded {
    /// Approximate heap bytes.
    pub fn bytes(&self) -> usize {
        self.cols.events.len() * std::mem::size_of::<Stamp>() + self.postings.bytes()
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
        events: Vec::with_capacity(n),
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
                stamp(&mut cols, &b.ts, &b.action, &b.domain);
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

/// The embeddings of a user's items, copied out of the catalog into one contiguous array, with
/// what soft retrieval reads beside each: a scan over them reads memory front to back instead
/// of one scattered catalog row per item. Items without an embedding are left out.
pub struct Embeddings {
    /// Postings entry of each copied embedding (in catalog-row order).
    pub entry: Vec<u32>,
    /// Oldest position of that entry.
    pub first: Vec<u32>,
    pub inv_norm: Vec<f32>,
    /// `entry.len() * dim` values.
    pub values: Vec<i8>,
    pub dim: usize,
}

impl Embeddings {
    pub fn gather(p: &Postings, catalog: &Catalog) -> Embeddings {
        let dim = catalog.dim();
        let mut out = Embeddings {
            entry: Vec::new(),
            first: Vec::new(),
            inv_norm: Vec::new(),
            values: Vec::with_capacity(p.by_row.len() * dim),
            dim,
        };
        for &e in &p.by_row {
            if let Some((emb, inv)) = catalog.embedding(p.rows[e as usize]) {
                out.entry.push(e);
                out.first
                    .push(p.positions(e as usize).first().copied().unwrap_or(u32::MAX));
                out.inv_norm.push(inv);
                out.values.extend_from_slice(emb);
            }
        }
        out
    }

    /// The `i`-th copied embedding.
    #[inline]
    pub fn row(&self, i: usize) -> &[i8] {
        &self.values[i * self.dim..(i + 1) * self.dim]
    }

    pub fn bytes(&self) -> usize {
        self.values.len() + self.entry.len() * 12
    }
}

fn append(cols: &mut Columns, b: &Block) {
    stamp(cols, &b.ts, &b.action, &b.domain);
}

fn stamp(cols: &mut Columns, ts: &[i64], action: &[u8], domain: &[u16]) {
    cols.events.extend(
        ts.iter()
            .zip(action)
            .zip(domain)
            .map(|((&ts, &action), &domain)| Stamp { ts, domain, action }),
    );
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
