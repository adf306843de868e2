//! The model's parameters, read by name once at model load into plain contiguous `f32`
//! buffers: the same weights candle trains and serves with, in the layout the fused forward
//! reads.

use std::collections::HashMap;

use candle_core::Tensor;

use super::kernels::View;

use crate::error::{Result, ServeError};

/// Parameters by name (what `Params::named_tensors` lists).
pub struct Named(HashMap<String, Tensor>);

impl Named {
    pub fn new(tensors: Vec<(String, Tensor)>) -> Named {
        Named(tensors.into_iter().collect())
    }

    pub fn has(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }

    /// The values of `name`, row-major, checked to have `shape` (`None` entries are read from
    /// the tensor).
    fn values(&self, name: &str, shape: &[Option<usize>]) -> Result<(Vec<usize>, Vec<f32>)> {
        let t = self
            .0
            .get(name)
            .ok_or_else(|| ServeError::invalid(format!("the model has no parameter {name}")))?;
        let dims = t.dims().to_vec();
        let fits = dims.len() == shape.len()
            && dims
                .iter()
                .zip(shape)
                .all(|(d, s)| s.is_none_or(|s| s == *d));
        if !fits {
            return Err(ServeError::invalid(format!(
                "parameter {name} has shape {dims:?}, the fused forward expects {shape:?}"
            )));
        }
        let v = t
            .to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        Ok((dims, v))
    }

    pub fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>> {
        Ok(self.values(name, &[Some(len)])?.1)
    }

    pub fn table(&self, name: &str, dim: usize) -> Result<Table> {
        let (dims, values) = self.values(&format!("{name}.weight"), &[None, Some(dim)])?;
        Ok(Table::new(name, dims[0], dim, &values))
    }

    /// A linear layer `name`, its widths checked against `inp` and `out` where given, read
    /// from the weight where not.
    pub fn dense(&self, name: &str, inp: Option<usize>, out: Option<usize>) -> Result<Dense> {
        let (dims, w) = self.values(&format!("{name}.weight"), &[out, inp])?;
        let b = self.vector(&format!("{name}.bias"), dims[0])?;
        Ok(Dense {
            w,
            b,
            inp: dims[1],
            out: dims[0],
        })
    }

    pub fn norm(&self, name: &str, dim: usize) -> Result<Norm> {
        Ok(Norm {
            gamma: self.vector(&format!("{name}.weight"), dim)?,
            beta: self.vector(&format!("{name}.bias"), dim)?,
        })
    }
}

/// Floats per cache line (64 bytes).
const LINE: usize = 16;

/// An embedding table, row-major `rows x dim`, its first row at a cache line's start: at
/// width 32 a row is then exactly two lines. (A large `Vec` starts 16 bytes into its page,
/// so every 64-byte load of a row split over two lines; the token gather waited on both.)
pub struct Table {
    name: String,
    pub rows: usize,
    pub dim: usize,
    /// The rows from `data[start]`, with up to a line of slack before them.
    data: Vec<f32>,
    start: usize,
}

impl Table {
    pub fn new(name: &str, rows: usize, dim: usize, values: &[f32]) -> Table {
        let mut data = vec![0.0; values.len() + LINE - 1];
        let misaligned = data.as_ptr() as usize % (LINE * 4) / 4;
        let start = (LINE - misaligned) % LINE;
        data[start..start + values.len()].copy_from_slice(values);
        Table {
            name: name.to_string(),
            rows,
            dim,
            data,
            start,
        }
    }

    /// The rows as one slice.
    fn values(&self) -> &[f32] {
        &self.data[self.start..self.start + self.rows * self.dim]
    }

    /// Row `i`; an index past the table is an error, as in candle's look-up.
    pub fn row(&self, i: u32) -> Result<&[f32]> {
        let i = i as usize;
        if i >= self.rows {
            return Err(ServeError::invalid(format!(
                "index {i} outside the {} rows of table {}",
                self.rows, self.name
            )));
        }
        Ok(&self.values()[i * self.dim..(i + 1) * self.dim])
    }

    /// Asks the CPU to bring row `i` into cache ahead of its use: a hint, nothing when `i` is
    /// outside the table or the target has no prefetch instruction.
    pub fn prefetch(&self, i: u32) {
        let i = i as usize;
        #[cfg(target_arch = "x86_64")]
        if let Some(row) = self.values().get(i * self.dim..(i + 1) * self.dim) {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            // Every cache line of the row: one address per 64 bytes, and its last.
            let lines = (0..row.len()).step_by(LINE).chain(row.len().checked_sub(1));
            for at in lines {
                // SAFETY: a prefetch never faults, and the address is inside `row`.
                unsafe { _mm_prefetch::<_MM_HINT_T0>(row[at..].as_ptr().cast()) };
            }
        }
    }
}

/// A linear layer: weight `[out, inp]` row-major (as candle stores it), bias `[out]`.
pub struct Dense {
    pub w: Vec<f32>,
    pub b: Vec<f32>,
    pub inp: usize,
    pub out: usize,
}

impl Dense {
    /// Outputs `lo..hi` of the layer.
    pub fn rows(&self, lo: usize, hi: usize) -> Dense {
        Dense {
            w: self.w[lo * self.inp..hi * self.inp].to_vec(),
            b: self.b[lo..hi].to_vec(),
            inp: self.inp,
            out: hi - lo,
        }
    }

    /// The weight as the right-hand side of `x W^T`: `inp x out`.
    pub fn wt(&self) -> View<'_> {
        View::rows(&self.w, self.out, self.inp).t()
    }

    /// `y = x W^T + b` for `rows` rows of `x` (`rows x inp`), into `y` (`rows x out`), then
    /// ReLU when `relu`.
    pub fn forward(&self, y: &mut [f32], x: &[f32], rows: usize, relu: bool) {
        self.apply(y, self.out, View::rows(x, rows, self.inp), false, relu);
    }

    /// `y = x W^T + b` for the rows of the view `x` (a slice of wider rows), into rows of `y`
    /// `y_rs` apart, then ReLU when `relu`.
    pub fn forward_view(&self, y: &mut [f32], y_rs: usize, x: View<'_>, relu: bool) {
        self.apply(y, y_rs, x, false, relu);
    }

    /// `y += x W^T + b` (a residual connection) for `rows` rows.
    pub fn forward_add(&self, y: &mut [f32], x: &[f32], rows: usize) {
        self.apply(y, self.out, View::rows(x, rows, self.inp), true, false);
    }

    fn apply(&self, y: &mut [f32], y_rs: usize, x: View<'_>, accumulate: bool, relu: bool) {
        super::kernels::matmul(y, y_rs, x, self.wt(), accumulate);
        for r in y.chunks_mut(y_rs).take(x.rows) {
            super::kernels::bias_act(&mut r[..self.out], &self.b, relu);
        }
    }

    /// The weight transposed, `[inp, out]` row-major: row `j` holds every output's weight of
    /// input `j`.
    pub fn transposed(&self) -> Vec<f32> {
        (0..self.inp * self.out)
            .map(|i| self.w[(i % self.out) * self.inp + i / self.out])
            .collect()
    }
}

/// Layer norm scale and shift.
pub struct Norm {
    pub gamma: Vec<f32>,
    pub beta: Vec<f32>,
}
