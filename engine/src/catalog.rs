//! The item catalog as readers see it: dense arrays indexed by an internal item number, so that
//! soft retrieval scans embeddings at memory bandwidth instead of reading RocksDB per behaviour.
//!
//! Rows live in chunks of [`CHUNK_ROWS`] behind `Arc`s. An upsert copies only the chunks it
//! touches, and a reader's snapshot keeps the chunks it saw.
//!
//! Embeddings are stored as int8 with one scale per item (`x ≈ q * scale`, symmetric,
//! `scale = max|x| / 127`). Cosine similarity is computed on the int8 vectors with an exact i32
//! dot product; the scales cancel, so only each vector's inverse norm is kept beside it.

use std::sync::Arc;

use crate::dot::{Kernel, Queries};
use crate::error::{Error, Result};
use crate::records::ItemRecord;
use crate::types::{Item, SemId};

pub const CHUNK_ROWS: usize = 1024;

#[derive(Clone)]
struct Chunk {
    ids: Vec<u64>,
    category: Vec<u32>,
    semid: Vec<Option<SemId>>,
    semid_gen: Vec<u64>,
    stub: Vec<bool>,
    has_emb: Vec<bool>,
    scale: Vec<f32>,
    inv_norm: Vec<f32>,
    emb: Vec<i8>,
}

impl Chunk {
    fn new(dim: usize) -> Chunk {
        Chunk {
            ids: vec![0; CHUNK_ROWS],
            category: vec![0; CHUNK_ROWS],
            semid: vec![None; CHUNK_ROWS],
            semid_gen: vec![0; CHUNK_ROWS],
            stub: vec![true; CHUNK_ROWS],
            has_emb: vec![false; CHUNK_ROWS],
            scale: vec![0.0; CHUNK_ROWS],
            inv_norm: vec![0.0; CHUNK_ROWS],
            emb: vec![0; CHUNK_ROWS * dim],
        }
    }
}

/// A quantised query vector.
#[derive(Debug, Clone)]
pub struct QueryVec {
    pub q: Vec<i8>,
    pub inv_norm: f32,
}

/// Quantise to int8 with one symmetric scale. The caller checks finiteness.
pub fn quantize(x: &[f32]) -> (f32, Vec<i8>) {
    let max = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    if max == 0.0 {
        return (0.0, vec![0; x.len()]);
    }
    let scale = max / 127.0;
    let q = x
        .iter()
        .map(|&v| (v / scale).round().clamp(-127.0, 127.0) as i8)
        .collect();
    (scale, q)
}

pub fn inv_norm(q: &[i8]) -> f32 {
    inv_norm_f64(q) as f32
}

/// 1 / the norm of int8 codes in f64 (0 for a zero vector): [`inv_norm`] before its rounding.
pub fn inv_norm_f64(q: &[i8]) -> f64 {
    let ss: i64 = q.iter().map(|&v| i64::from(v) * i64::from(v)).sum();
    if ss == 0 {
        0.0
    } else {
        1.0 / (ss as f64).sqrt()
    }
}

/// A catalog item as stored: its embedding is the int8 codes and their scale (`x ≈ q * scale`).
/// Readers that need thousands of items per call (a request's features) take these rather than
/// an [`Item`], whose dequantised embedding is a fresh vector each time.
#[derive(Debug, Clone, Copy)]
pub struct ItemRef<'a> {
    pub id: u64,
    pub category: u32,
    pub semid: Option<SemId>,
    pub embedding: Option<(&'a [i8], f32)>,
}

impl ItemRef<'_> {
    /// The item with its embedding dequantised.
    pub fn to_item(&self) -> Item {
        Item {
            id: self.id,
            category: self.category,
            semid: self.semid,
            embedding: self
                .embedding
                .map(|(q, scale)| dequantize(q, scale).collect()),
        }
    }
}

/// The values int8 codes `q` with scale `scale` stand for.
pub fn dequantize(q: &[i8], scale: f32) -> impl Iterator<Item = f32> + Clone + '_ {
    q.iter().map(move |&v| f32::from(v) * scale)
}

/// Exact int8 dot product, with the best kernel for this CPU (see `dot`).
#[inline]
pub fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    (kernel().dot)(a, b)
}

/// `out[t] = emb · query t`, exact, for every query of `queries` (`out` at least as long),
/// with the best kernel for this CPU (with AVX-512 VNNI, 16 queries per instruction).
#[inline]
pub fn dot_queries(emb: &[i8], queries: &Queries, out: &mut [i32]) {
    (kernel().dots)(emb, queries, out)
}

/// The dot-product kernels for this CPU, chosen once.
pub fn kernel() -> Kernel {
    static BEST: std::sync::OnceLock<Kernel> = std::sync::OnceLock::new();
    *BEST.get_or_init(Kernel::best)
}

/// Check and quantise a caller's embedding.
pub fn query_vec(x: &[f32], dim: usize) -> Result<QueryVec> {
    if dim == 0 {
        return Err(Error::invalid("this database stores no embeddings"));
    }
    if x.len() != dim {
        return Err(Error::invalid(format!(
            "embedding has {} values, the database's dimension is {dim}",
            x.len()
        )));
    }
    if let Some(i) = x.iter().position(|v| !v.is_finite()) {
        return Err(Error::invalid(format!("embedding value {i} is not finite")));
    }
    let (_, q) = quantize(x);
    let inv_norm = inv_norm(&q);
    Ok(QueryVec { q, inv_norm })
}

/// Item id to row: persistent, so a snapshot's copy of the catalog costs nothing. Hashed with
/// foldhash under a random seed per map rather than SipHash: a scoring call looks up thousands
/// of ids, and the seed still keeps an id set that collides from being chosen in advance.
type IdMap =
    imbl::GenericHashMap<u64, u32, foldhash::fast::RandomState, imbl::shared_ptr::DefaultSharedPtr>;

#[derive(Clone)]
pub struct Catalog {
    dim: usize,
    chunks: Vec<Arc<Chunk>>,
    len: u32,
    by_id: IdMap,
    /// Bumped each time an upsert changes the SemID of an item that was already stored (see
    /// docs/ARCHITECTURE.md, "Prefix index freshness").
    semid_gen: u64,
    /// Bumped each time an upsert rewrites a row that already existed (its embedding may have
    /// changed), so that copies of users' embeddings know they are stale. In memory only: a
    /// reopened database has no copies.
    emb_gen: u64,
}

impl Catalog {
    pub fn new(dim: usize) -> Catalog {
        Catalog {
            dim,
            chunks: Vec::new(),
            len: 0,
            by_id: IdMap::default(),
            semid_gen: 0,
            emb_gen: 0,
        }
    }

    /// Embedding dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Rows, stubs included.
    pub fn len(&self) -> u32 {
        self.len
    }

    pub fn semid_gen(&self) -> u64 {
        self.semid_gen
    }

    pub fn emb_gen(&self) -> u64 {
        self.emb_gen
    }

    pub fn lookup(&self, id: u64) -> Option<u32> {
        self.by_id.get(&id).copied()
    }

    fn at(&self, row: u32) -> (&Chunk, usize) {
        let r = row as usize;
        (&self.chunks[r / CHUNK_ROWS], r % CHUNK_ROWS)
    }

    pub fn id(&self, row: u32) -> u64 {
        let (c, i) = self.at(row);
        c.ids[i]
    }

    pub fn semid(&self, row: u32) -> Option<SemId> {
        let (c, i) = self.at(row);
        c.semid[i]
    }

    pub fn semid_changed_gen(&self, row: u32) -> u64 {
        let (c, i) = self.at(row);
        c.semid_gen[i]
    }

    pub fn is_stub(&self, row: u32) -> bool {
        let (c, i) = self.at(row);
        c.stub[i]
    }

    /// The item's quantised embedding and inverse norm, if it has one.
    #[inline]
    pub fn embedding(&self, row: u32) -> Option<(&[i8], f32)> {
        let (c, i) = self.at(row);
        c.has_emb[i].then(|| (&c.emb[i * self.dim..(i + 1) * self.dim], c.inv_norm[i]))
    }

    /// Cosine between a query and an item, `None` when the item has no embedding.
    #[inline]
    pub fn cosine(&self, q: &QueryVec, row: u32) -> Option<f32> {
        self.embedding(row)
            .map(|(e, inv)| dot_i8(&q.q, e) as f32 * q.inv_norm * inv)
    }

    /// Number the next new item would get.
    pub fn next_internal(&self) -> u32 {
        self.len
    }

    /// Row `row` as stored, borrowed.
    pub fn item_ref(&self, row: u32) -> ItemRef<'_> {
        let (c, i) = self.at(row);
        ItemRef {
            id: c.ids[i],
            category: c.category[i],
            semid: c.semid[i],
            embedding: c.has_emb[i].then(|| (&c.emb[i * self.dim..(i + 1) * self.dim], c.scale[i])),
        }
    }

    /// Store `rec` for item `id` at row `rec.internal` (a new row must be the next one).
    pub fn put(&mut self, id: u64, rec: &ItemRecord) -> std::result::Result<(), String> {
        let row = rec.internal;
        if row > self.len {
            return Err(format!(
                "item {id} has internal number {row}, next is {}",
                self.len
            ));
        }
        if let Some((_, q)) = &rec.embedding {
            if q.len() != self.dim {
                return Err(format!(
                    "item {id} embedding has {} values, dimension is {}",
                    q.len(),
                    self.dim
                ));
            }
        }
        if row < self.len {
            self.emb_gen += 1;
        }
        if row == self.len {
            if (self.len as usize).is_multiple_of(CHUNK_ROWS) {
                self.chunks.push(Arc::new(Chunk::new(self.dim)));
            }
            self.len += 1;
        }
        let r = row as usize;
        let dim = self.dim;
        let c = Arc::make_mut(&mut self.chunks[r / CHUNK_ROWS]);
        let i = r % CHUNK_ROWS;
        c.ids[i] = id;
        c.category[i] = rec.category;
        c.semid[i] = rec.semid;
        c.semid_gen[i] = rec.semid_gen;
        c.stub[i] = rec.stub;
        match &rec.embedding {
            Some((scale, q)) => {
                c.has_emb[i] = true;
                c.scale[i] = *scale;
                c.inv_norm[i] = inv_norm(q);
                c.emb[i * dim..(i + 1) * dim].copy_from_slice(q);
            }
            None => {
                c.has_emb[i] = false;
                c.scale[i] = 0.0;
                c.inv_norm[i] = 0.0;
                c.emb[i * dim..(i + 1) * dim].fill(0);
            }
        }
        self.semid_gen = self.semid_gen.max(rec.semid_gen);
        self.by_id.insert(id, row);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantised_cosine_is_close_to_exact() {
        let a: Vec<f32> = (0..128)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 13.0)
            .collect();
        let b: Vec<f32> = (0..128)
            .map(|i| ((i * 53 % 97) as f32 - 40.0) / 7.0)
            .collect();
        let exact = a.iter().zip(&b).map(|(x, y)| x * y).sum::<f32>()
            / (a.iter().map(|x| x * x).sum::<f32>().sqrt()
                * b.iter().map(|x| x * x).sum::<f32>().sqrt());
        let qa = query_vec(&a, 128).unwrap();
        let qb = query_vec(&b, 128).unwrap();
        let approx = dot_i8(&qa.q, &qb.q) as f32 * qa.inv_norm * qb.inv_norm;
        assert!((exact - approx).abs() < 0.01, "{exact} vs {approx}");
    }

    #[test]
    fn copy_on_write_keeps_old_snapshots() {
        let mut c = Catalog::new(4);
        let rec = |internal, cat| ItemRecord {
            internal,
            category: cat,
            semid: None,
            semid_gen: 0,
            embedding: Some((1.0, vec![1, 2, 3, 4])),
            stub: false,
        };
        for i in 0..3000 {
            c.put(100 + i as u64, &rec(i, 1)).unwrap();
        }
        let old = c.clone();
        c.put(100, &rec(0, 9)).unwrap();
        assert_eq!(old.item_ref(0).category, 1);
        assert_eq!(c.item_ref(0).category, 9);
        assert_eq!(c.lookup(2099), Some(1999));
        assert!(c.put(1, &rec(5000, 0)).is_err());
        assert!(query_vec(&[f32::NAN, 0.0, 0.0, 0.0], 4).is_err());
        assert!(query_vec(&[1.0], 4).is_err());
    }
}
