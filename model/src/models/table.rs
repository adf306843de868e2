//! Embedding tables trained with sparse, lazy updates.
//!
//! candle differentiates a look-up (`index_select`) into a gradient as large as the whole
//! table, zeros included, and a dense optimiser then moves every row at every step: rows that
//! were not in the batch keep drifting on their Adam moments and shrink under weight decay. For
//! a catalog of millions of items that is gigabytes written per step, and for rarely seen ids it
//! is memorisation: one sample moves its row about thirty Adam steps' worth.
//!
//! [`EmbeddingTable`] keeps the table outside the autograd graph. In training, a look-up copies
//! the distinct rows it needs into a small fresh variable and indexes that, so the gradient has
//! one row per distinct id of the batch; [`EmbeddingTable::sparse_step`] then applies Adam to
//! those rows only (PyTorch's `SparseAdam`: first and second moments updated only for rows
//! present, bias correction from the table's step count, no weight decay). Outside training a
//! look-up reads a tensor of the whole table, as any embedding does.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use candle_core::backprop::GradStore;
use candle_core::{Device, Result, Tensor, Var};

/// Adam settings for the sparse tables.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SparseAdam {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
}

impl SparseAdam {
    pub fn new(lr: f64) -> SparseAdam {
        SparseAdam {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }
}

/// Where a table's rows live.
enum Storage {
    /// Loaded for scoring: one tensor, read by look-ups.
    Frozen(Tensor),
    /// Being trained: rows and Adam moments as plain vectors, updated in place; `cache` is the
    /// whole table as a tensor for evaluation, rebuilt after an update.
    Training {
        w: Vec<f32>,
        m: Vec<f32>,
        v: Vec<f32>,
        step: u64,
        cache: Option<Tensor>,
    },
}

struct Inner {
    name: String,
    rows: usize,
    dim: usize,
    dev: Device,
    storage: Mutex<Storage>,
    /// The distinct rows each training look-up of the current batch copied, with the variable
    /// holding the copy.
    gathered: Mutex<Vec<(Vec<u32>, Var)>>,
    /// Shared with every table of a model: whether look-ups record gradients.
    training: Arc<AtomicBool>,
}

/// A `rows x dim` embedding table; cheap to clone (clones share the table).
#[derive(Clone)]
pub struct EmbeddingTable(Arc<Inner>);

impl std::fmt::Debug for EmbeddingTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "EmbeddingTable({} {}x{})",
            self.0.name, self.0.rows, self.0.dim
        )
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding a table's lock leaves plain numbers behind, never a broken
    // invariant, so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl EmbeddingTable {
    pub(crate) fn new(
        name: String,
        rows: usize,
        dim: usize,
        values: Vec<f32>,
        dev: &Device,
        training: Arc<AtomicBool>,
    ) -> EmbeddingTable {
        debug_assert_eq!(values.len(), rows * dim);
        let n = values.len();
        EmbeddingTable(Arc::new(Inner {
            name,
            rows,
            dim,
            dev: dev.clone(),
            storage: Mutex::new(Storage::Training {
                w: values,
                m: vec![0.0; n],
                v: vec![0.0; n],
                step: 0,
                cache: None,
            }),
            gathered: Mutex::new(Vec::new()),
            training,
        }))
    }

    /// The parameter's name in checkpoints (`item.weight`, `table1.item.weight`).
    pub fn name(&self) -> &str {
        &self.0.name
    }

    pub fn rows(&self) -> usize {
        self.0.rows
    }

    pub fn dim(&self) -> usize {
        self.0.dim
    }

    /// The whole table as a `[rows, dim]` tensor (not differentiable).
    pub fn tensor(&self) -> Result<Tensor> {
        let mut s = lock(&self.0.storage);
        match &mut *s {
            Storage::Frozen(t) => Ok(t.clone()),
            Storage::Training { w, cache, .. } => {
                if cache.is_none() {
                    *cache = Some(Tensor::from_slice(
                        w,
                        (self.0.rows, self.0.dim),
                        &self.0.dev,
                    )?);
                }
                Ok(cache.clone().expect("just built"))
            }
        }
    }

    /// Replace the table (a checkpoint being loaded); the table becomes read-only until it is
    /// trained again.
    pub fn load(&self, t: &Tensor) -> Result<()> {
        let dims = t.dims2()?;
        if dims != (self.0.rows, self.0.dim) {
            return Err(candle_core::Error::Msg(format!(
                "{}: the checkpoint holds a {}x{} table, the model expects {}x{}",
                self.0.name, dims.0, dims.1, self.0.rows, self.0.dim
            )));
        }
        *lock(&self.0.storage) = Storage::Frozen(t.to_dtype(candle_core::DType::F32)?);
        Ok(())
    }

    /// Rows for `ids` (any shape of u32 row numbers): `[..ids, dim]`.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let mut shape = ids.dims().to_vec();
        shape.push(self.0.dim);
        let flat = ids.flatten_all()?;
        let out = if self.0.training.load(Ordering::Relaxed) {
            self.gather(&flat)?
        } else {
            self.tensor()?.index_select(&flat, 0)?
        };
        out.reshape(shape)
    }

    /// Every row, `[rows, dim]`, differentiable in training.
    pub fn all(&self) -> Result<Tensor> {
        let ids: Vec<u32> = (0..self.0.rows as u32).collect();
        self.forward(&Tensor::from_vec(ids, self.0.rows, &self.0.dev)?)
    }

    /// A training look-up: the distinct rows of `flat` copied into a fresh variable, and the
    /// look-up as an index into it.
    fn gather(&self, flat: &Tensor) -> Result<Tensor> {
        let ids: Vec<u32> = flat.to_vec1()?;
        let mut distinct = ids.clone();
        distinct.sort_unstable();
        distinct.dedup();
        let d = self.0.dim;
        if let Some(&bad) = distinct.last().filter(|&&r| r as usize >= self.0.rows) {
            return Err(candle_core::Error::Msg(format!(
                "{}: row {bad} out of range for {} rows",
                self.0.name, self.0.rows
            )));
        }
        let mut rows = Vec::with_capacity(distinct.len() * d);
        {
            let mut s = lock(&self.0.storage);
            thaw(&mut s)?;
            let Storage::Training { w, .. } = &*s else {
                unreachable!("thawed above")
            };
            for &r in &distinct {
                let r = r as usize;
                rows.extend_from_slice(&w[r * d..(r + 1) * d]);
            }
        }
        let local: Vec<u32> = ids
            .iter()
            .map(|id| distinct.partition_point(|x| x < id) as u32)
            .collect();
        let var = Var::from_tensor(&Tensor::from_vec(rows, (distinct.len(), d), &self.0.dev)?)?;
        let n = local.len();
        let out = var
            .as_tensor()
            .index_select(&Tensor::from_vec(local, n, &self.0.dev)?, 0)?;
        lock(&self.0.gathered).push((distinct, var));
        Ok(out)
    }

    /// Apply one Adam step to the rows this batch's look-ups touched, with their gradients from
    /// `grads`, and forget the look-ups.
    pub fn sparse_step(&self, grads: &GradStore, opt: &SparseAdam) -> Result<()> {
        let gathered = std::mem::take(&mut *lock(&self.0.gathered));
        let d = self.0.dim;
        // Per row, the sum of its gradients over every look-up of the batch (in row order, so
        // the result does not depend on the order of the look-ups).
        let mut sum: BTreeMap<u32, Vec<f32>> = BTreeMap::new();
        for (rows, var) in &gathered {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            let g: Vec<f32> = g.flatten_all()?.to_vec1()?;
            for (i, &r) in rows.iter().enumerate() {
                let acc = sum.entry(r).or_insert_with(|| vec![0.0; d]);
                for (a, x) in acc.iter_mut().zip(&g[i * d..(i + 1) * d]) {
                    *a += x;
                }
            }
        }
        if sum.is_empty() {
            return Ok(());
        }
        let mut s = lock(&self.0.storage);
        thaw(&mut s)?;
        let Storage::Training {
            w,
            m,
            v,
            step,
            cache,
        } = &mut *s
        else {
            unreachable!("thawed above")
        };
        *step += 1;
        let (b1, b2) = (opt.beta1, opt.beta2);
        let t = *step as f64;
        let step_size = (opt.lr * (1.0 - b2.powf(t)).sqrt() / (1.0 - b1.powf(t))) as f32;
        let (b1, b2, eps) = (b1 as f32, b2 as f32, opt.eps as f32);
        for (r, g) in sum {
            let base = r as usize * d;
            for (j, &gj) in g.iter().enumerate() {
                let k = base + j;
                m[k] = b1 * m[k] + (1.0 - b1) * gj;
                v[k] = b2 * v[k] + (1.0 - b2) * gj * gj;
                w[k] -= step_size * m[k] / (v[k].sqrt() + eps);
            }
        }
        *cache = None;
        Ok(())
    }

    /// Forget the look-ups of a batch that will not be stepped (an evaluation in training mode).
    pub fn clear(&self) {
        lock(&self.0.gathered).clear();
    }
}

/// A frozen (loaded) table becomes trainable again: its rows are copied out, moments start at 0.
fn thaw(s: &mut Storage) -> Result<()> {
    if let Storage::Frozen(t) = s {
        let w: Vec<f32> = t.flatten_all()?.to_vec1()?;
        let n = w.len();
        *s = Storage::Training {
            w,
            m: vec![0.0; n],
            v: vec![0.0; n],
            step: 0,
            cache: Some(t.clone()),
        };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(rows: usize, dim: usize) -> EmbeddingTable {
        let values = (0..rows * dim).map(|i| (i as f32) * 0.01).collect();
        EmbeddingTable::new(
            "t.weight".into(),
            rows,
            dim,
            values,
            &Device::Cpu,
            Arc::new(AtomicBool::new(true)),
        )
    }

    /// A training look-up gives the same rows as a plain one, and a step moves only the rows
    /// looked up, by exactly what Adam would move them.
    #[test]
    fn sparse_step_moves_only_touched_rows_like_adam() {
        let t = table(6, 3);
        let before: Vec<f32> = t
            .tensor()
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let ids = Tensor::new(&[[4u32, 1], [4, 4]], &Device::Cpu).unwrap();
        let out = t.forward(&ids).unwrap();
        assert_eq!(out.dims(), &[2, 2, 3]);
        let plain = t
            .tensor()
            .unwrap()
            .index_select(&ids.flatten_all().unwrap(), 0)
            .unwrap();
        let got: Vec<f32> = out.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(got, plain.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        // loss = sum of all outputs: row 4 gets gradient 3 per element, row 1 gets 1.
        let grads = out.sum_all().unwrap().backward().unwrap();
        let opt = SparseAdam::new(0.1);
        t.sparse_step(&grads, &opt).unwrap();
        let after: Vec<f32> = t
            .tensor()
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        for r in 0..6 {
            for j in 0..3 {
                let k = r * 3 + j;
                if r == 1 || r == 4 {
                    // First Adam step: m/sqrt(v) = sign(g) after bias correction.
                    assert!((before[k] - after[k] - 0.1).abs() < 1e-5, "row {r}");
                } else {
                    assert_eq!(before[k], after[k], "row {r} must not move");
                }
            }
        }
    }

    #[test]
    fn out_of_range_rows_are_an_error() {
        let t = table(3, 2);
        let ids = Tensor::new(&[5u32], &Device::Cpu).unwrap();
        assert!(t.forward(&ids).is_err());
    }
}
