//! Building blocks shared by the models.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Module, Result, Tensor, Var, D};
use candle_nn::{LayerNorm, Linear, VarMap};

use super::table::{EmbeddingTable, SparseAdam};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};

/// Creates every trainable tensor from one seeded generator, in code order, and registers it: dense
/// weights in a `VarMap` (for the dense optimiser), embedding tables as [`EmbeddingTable`]s
/// (sparse updates). candle's own initialisers draw from a thread-local generator, which would
/// make training depend on more than the seed.
pub struct Params {
    varmap: VarMap,
    tables: Arc<Mutex<Vec<EmbeddingTable>>>,
    /// Whether look-ups record gradients (set by the trainer around its steps).
    training: Arc<AtomicBool>,
    /// Standard deviation of embedding rows at creation (a normal truncated at 2 std).
    embedding_std: f64,
    rng: Arc<Mutex<StdRng>>,
    dev: Device,
    /// Prepended to every name created through this handle ([`Params::scoped`]).
    scope: String,
}

enum Init {
    Normal(f64),
    TruncatedNormal(f64),
    /// Uniform over `[lo, hi)`.
    Uniform(f64, f64),
    Const(f32),
}

/// Default standard deviation of new embedding rows.
pub const EMBEDDING_STD: f64 = 0.05;

impl Params {
    pub fn new(seed: u64, dev: &Device) -> Params {
        Params::with_embedding_std(seed, dev, EMBEDDING_STD)
    }

    pub fn with_embedding_std(seed: u64, dev: &Device, embedding_std: f64) -> Params {
        Params {
            varmap: VarMap::new(),
            tables: Arc::new(Mutex::new(Vec::new())),
            training: Arc::new(AtomicBool::new(false)),
            embedding_std,
            rng: Arc::new(Mutex::new(StdRng::seed_from_u64(seed))),
            dev: dev.clone(),
            scope: String::new(),
        }
    }

    /// Look-ups record gradients for [`Params::sparse_step`] while this is on.
    pub fn set_training(&self, on: bool) {
        self.training.store(on, Ordering::Relaxed);
        if !on {
            for t in self.tables() {
                t.clear();
            }
        }
    }

    pub fn tables(&self) -> Vec<EmbeddingTable> {
        self.tables.lock().expect("tables lock").clone()
    }

    /// One sparse Adam step on every embedding table, from the gradients of a batch.
    pub fn sparse_step(
        &self,
        grads: &candle_core::backprop::GradStore,
        opt: &SparseAdam,
    ) -> Result<()> {
        for t in self.tables() {
            t.sparse_step(grads, opt)?;
        }
        Ok(())
    }

    /// Every parameter by name: the dense weights and the embedding tables (what a checkpoint
    /// holds).
    pub fn named_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out: Vec<(String, Tensor)> = self
            .varmap
            .data()
            .lock()
            .expect("varmap lock")
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
            .collect();
        for t in self.tables() {
            out.push((t.name().to_string(), t.tensor()?));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Write every parameter to a safetensors file.
    pub fn save(&self, path: &std::path::Path) -> Result<()> {
        let map: std::collections::HashMap<String, Tensor> =
            self.named_tensors()?.into_iter().collect();
        candle_core::safetensors::save(&map, path)
    }

    /// Read every parameter from the bytes of a safetensors file; a missing or misshapen one is
    /// an error.
    pub fn load_buffer(&self, bytes: &[u8]) -> Result<()> {
        let mut map = candle_core::safetensors::load_buffer(bytes, &self.dev)?;
        for (name, var) in self.varmap.data().lock().expect("varmap lock").iter() {
            let t = map
                .remove(name)
                .ok_or_else(|| candle_core::Error::Msg(format!("no parameter {name}")))?;
            var.set(&t)?;
        }
        for table in self.tables() {
            let t = map
                .remove(table.name())
                .ok_or_else(|| candle_core::Error::Msg(format!("no parameter {}", table.name())))?;
            table.load(&t)?;
        }
        Ok(())
    }

    /// A handle onto the same parameters and generator whose names start with `prefix.`: a
    /// model built several times (one copy per embedding table) keeps distinct names.
    pub fn scoped(&self, prefix: &str) -> Params {
        Params {
            varmap: self.varmap.clone(),
            rng: self.rng.clone(),
            dev: self.dev.clone(),
            tables: self.tables.clone(),
            training: self.training.clone(),
            embedding_std: self.embedding_std,
            scope: format!("{}{prefix}.", self.scope),
        }
    }

    pub fn varmap(&self) -> &VarMap {
        &self.varmap
    }

    pub fn device(&self) -> &Device {
        &self.dev
    }

    fn draw(&self, n: usize, init: Init) -> Vec<f32> {
        let mut rng = self.rng.lock().expect("parameter generator lock");
        match init {
            Init::Normal(std) => {
                let d = Normal::new(0.0, std).expect("positive std");
                (0..n).map(|_| d.sample(&mut *rng) as f32).collect()
            }
            Init::TruncatedNormal(std) => {
                let d = Normal::new(0.0, std).expect("positive std");
                (0..n)
                    .map(|_| loop {
                        let x = d.sample(&mut *rng);
                        if x.abs() <= 2.0 * std {
                            break x as f32;
                        }
                    })
                    .collect()
            }
            Init::Uniform(lo, hi) => (0..n).map(|_| rng.random_range(lo..hi) as f32).collect(),
            Init::Const(c) => vec![c; n],
        }
    }

    fn var(&self, name: &str, shape: &[usize], init: Init) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let name = format!("{}{name}", self.scope);
        let data = self.draw(n, init);
        let var = Var::from_tensor(&Tensor::from_vec(data, shape, &self.dev)?)?;
        let t = var.as_tensor().clone();
        let mut map = self.varmap.data().lock().expect("varmap lock");
        assert!(
            map.insert(name.clone(), var).is_none(),
            "parameter {name} created twice"
        );
        Ok(t)
    }

    /// An embedding table of `rows x dim`, trained with sparse updates.
    pub fn embedding(&self, name: &str, rows: usize, dim: usize) -> Result<EmbeddingTable> {
        let rows = rows.max(1);
        let name = format!("{}{name}.weight", self.scope);
        let values = self.draw(rows * dim, Init::TruncatedNormal(self.embedding_std));
        let t = EmbeddingTable::new(
            name.clone(),
            rows,
            dim,
            values,
            &self.dev,
            self.training.clone(),
        );
        let mut tables = self.tables.lock().expect("tables lock");
        assert!(
            tables.iter().all(|x| x.name() != name),
            "parameter {name} created twice"
        );
        tables.push(t.clone());
        Ok(t)
    }

    pub fn linear(&self, name: &str, inp: usize, out: usize) -> Result<Linear> {
        let bound = 1.0 / (inp as f64).sqrt();
        let w = self.var(
            &format!("{name}.weight"),
            &[out, inp],
            Init::Uniform(-bound, bound),
        )?;
        let b = self.var(&format!("{name}.bias"), &[out], Init::Const(0.0))?;
        Ok(Linear::new(w, Some(b)))
    }

    pub fn linear_no_bias(&self, name: &str, inp: usize, out: usize) -> Result<Linear> {
        let bound = 1.0 / (inp as f64).sqrt();
        let w = self.var(
            &format!("{name}.weight"),
            &[out, inp],
            Init::Uniform(-bound, bound),
        )?;
        Ok(Linear::new(w, None))
    }

    pub fn layer_norm(&self, name: &str, dim: usize) -> Result<LayerNorm> {
        let w = self.var(&format!("{name}.weight"), &[dim], Init::Const(1.0))?;
        let b = self.var(&format!("{name}.bias"), &[dim], Init::Const(0.0))?;
        Ok(LayerNorm::new(w, b, 1e-5))
    }

    pub fn scalar(&self, name: &str, value: f32) -> Result<Tensor> {
        self.var(name, &[1], Init::Const(value))
    }

    /// A linear layer initialised as MUSE's reference code does (`FCRepeat`): weights normal
    /// with standard deviation `1 / sqrt(inp)`, every bias `bias`.
    pub fn linear_normal(&self, name: &str, inp: usize, out: usize, bias: f32) -> Result<Linear> {
        let std = 1.0 / (inp as f64).sqrt();
        let w = self.var(&format!("{name}.weight"), &[out, inp], Init::Normal(std))?;
        let b = self.var(&format!("{name}.bias"), &[out], Init::Const(bias))?;
        Ok(Linear::new(w, Some(b)))
    }

    /// A vector of `n` copies of `value`.
    pub fn constant(&self, name: &str, n: usize, value: f32) -> Result<Tensor> {
        self.var(name, &[n], Init::Const(value))
    }

    /// A vector of `n` values uniform over `[lo, hi)`.
    pub fn uniform(&self, name: &str, n: usize, lo: f64, hi: f64) -> Result<Tensor> {
        self.var(name, &[n], Init::Uniform(lo, hi))
    }

    pub fn vector(&self, name: &str, dim: usize) -> Result<Tensor> {
        self.var(name, &[dim], Init::Normal(0.05))
    }
}

/// Linear layers with ReLU between them; the last has no activation.
pub struct Mlp {
    layers: Vec<Linear>,
    training: Arc<AtomicBool>,
    dropout: f32,
    rng: Mutex<StdRng>,
}

impl Mlp {
    pub fn new(p: &Params, name: &str, sizes: &[usize]) -> Result<Mlp> {
        let layers = sizes
            .windows(2)
            .enumerate()
            .map(|(i, w)| p.linear(&format!("{name}.{i}"), w[0], w[1]))
            .collect::<Result<_>>()?;
        let seed = p
            .rng
            .lock()
            .expect("parameter generator lock")
            .random::<u64>();
        Ok(Mlp {
            layers,
            training: p.training.clone(),
            dropout: 0.0,
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
        })
    }

    /// `x` with each element zeroed with probability `dropout` and the rest scaled up, the mask
    /// drawn from the model's seeded generator (candle's dropout draws from a thread-local one,
    /// which would make training depend on more than the seed).
    fn dropout_mask(&self, x: &Tensor) -> Result<Tensor> {
        let n = x.elem_count();
        let keep = 1.0 - self.dropout;
        let scale = 1.0 / keep;
        let mask: Vec<f32> = {
            let mut rng = self.rng.lock().expect("dropout generator lock");
            (0..n)
                .map(|_| {
                    if rng.random::<f32>() < keep {
                        scale
                    } else {
                        0.0
                    }
                })
                .collect()
        };
        x * Tensor::from_vec(mask, x.shape(), x.device())?
    }

    /// The same MLP with dropout `rate` on its input while training.
    pub fn with_dropout(mut self, rate: f32) -> Mlp {
        self.dropout = rate;
        self
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = if self.dropout > 0.0 && self.training.load(Ordering::Relaxed) {
            self.dropout_mask(x)?
        } else {
            x.clone()
        };
        self.forward_from(self.layers[0].forward(&x)?)
    }

    /// The rest of the network given the first layer's output (before its activation).
    fn forward_from(&self, first: Tensor) -> Result<Tensor> {
        let mut x = first;
        for (i, l) in self.layers.iter().enumerate() {
            if i > 0 {
                x = l.forward(&x)?;
            }
            if i + 1 < self.layers.len() {
                x = x.relu()?;
            }
        }
        Ok(x)
    }
}

/// Softmax over the last dimension of `logits` `[B, T]` restricted to `mask` (1 = valid);
/// rows with no valid position get all-zero weights.
pub fn masked_softmax(logits: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let bias = ((mask - 1.0)? * 1e9)?;
    let w = candle_nn::ops::softmax_last_dim(&(logits + bias)?)?;
    w * mask
}

/// Mean of `x` `[B, T, d]` over valid positions (zeros for rows with none).
pub fn masked_mean(x: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let sum = x.broadcast_mul(&mask.unsqueeze(2)?)?.sum(1)?;
    let count = mask.sum_keepdim(1)?.clamp(1.0, f64::MAX)?;
    sum.broadcast_div(&count)
}

/// MUSE's semantic-aware fusion of an attention's ID score `s` with the scaled cosine
/// `m = cos / a`: the logit `b1·s + b2·m + b3·s·m` (parameters `sata.a`, `sata.b1..3`; Siren's
/// MUSE and the reference network share it).
pub struct SemanticFusion {
    a: Tensor,
    b: [Tensor; 3],
}

impl SemanticFusion {
    pub fn new(p: &Params) -> Result<Self> {
        Ok(SemanticFusion {
            a: p.scalar("sata.a", 0.1)?,
            b: [
                p.scalar("sata.b1", 1.0)?,
                p.scalar("sata.b2", 1.0)?,
                p.scalar("sata.b3", 1.0)?,
            ],
        })
    }

    /// The fused logits of scores `s` and cosines `cos`, both `[B, T]`.
    pub fn logits(&self, s: &Tensor, cos: &Tensor) -> Result<Tensor> {
        let m = cos.broadcast_div(&self.a)?;
        (s.broadcast_mul(&self.b[0])? + m.broadcast_mul(&self.b[1])?)?
            + (s * &m)?.broadcast_mul(&self.b[2])?
    }
}

/// DIN's target attention: an MLP scores each behaviour from `[q, k, q - k, q * k]`; the pooled
/// interest is the softmax-weighted sum of the behaviours.
pub struct TargetAttention {
    mlp: Mlp,
}

impl TargetAttention {
    pub fn new(p: &Params, name: &str, dim: usize) -> Result<Self> {
        Ok(TargetAttention {
            mlp: Mlp::new(p, name, &[4 * dim, 32, 1])?,
        })
    }

    /// `q` `[B, d]`, `keys` `[B, T, d]`, `mask` `[B, T]` -> `[B, d]`.
    ///
    /// The first layer's product with `[q, k, q - k, q * k]` is computed as
    /// `(W1 + W3) q + (W2 - W3) k + W4 (q * k)` (the `Wi` its weight's column blocks): the same
    /// function with a quarter of the work on the `B x T` rows and no `[B, T, 4d]` tensor, as
    /// the query part is computed once per row of `q`.
    pub fn pool(&self, q: &Tensor, keys: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (b, t, d) = keys.dims3()?;
        let first = &self.mlp.layers[0];
        let w = first.weight();
        let block = |i: usize| w.narrow(1, i * d, d);
        let w_q = (block(0)? + block(2)?)?;
        let w_k = (block(1)? - block(2)?)?;
        let w_qk = block(3)?.contiguous()?;
        let h = w.dim(0)?;
        let rows = keys.reshape((b * t, d))?;
        let qk = keys.broadcast_mul(&q.unsqueeze(1)?)?.reshape((b * t, d))?;
        let per_row = (rows.matmul(&w_k.t()?)? + qk.matmul(&w_qk.t()?)?)?.reshape((b, t, h))?;
        let mut pre = per_row.broadcast_add(&q.matmul(&w_q.t()?)?.unsqueeze(1)?)?;
        if let Some(bias) = first.bias() {
            pre = pre.broadcast_add(bias)?;
        }
        let logits = self.mlp.forward_from(pre)?.squeeze(2)?;
        let w = masked_softmax(&logits, mask)?;
        w.unsqueeze(1)?.matmul(keys)?.squeeze(1)
    }
}

/// A pre-norm transformer layer with multi-head self-attention and a ReLU feed-forward block.
pub struct TransformerLayer {
    ln1: LayerNorm,
    qkv: Linear,
    out: Linear,
    ln2: LayerNorm,
    ff1: Linear,
    ff2: Linear,
    heads: usize,
}

impl TransformerLayer {
    pub fn new(p: &Params, name: &str, dim: usize, heads: usize) -> Result<Self> {
        Ok(TransformerLayer {
            ln1: p.layer_norm(&format!("{name}.ln1"), dim)?,
            qkv: p.linear(&format!("{name}.qkv"), dim, 3 * dim)?,
            out: p.linear(&format!("{name}.out"), dim, dim)?,
            ln2: p.layer_norm(&format!("{name}.ln2"), dim)?,
            ff1: p.linear(&format!("{name}.ff1"), dim, 2 * dim)?,
            ff2: p.linear(&format!("{name}.ff2"), 2 * dim, dim)?,
            heads,
        })
    }

    fn split_heads(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, d) = x.dims3()?;
        x.reshape((b, t, self.heads, d / self.heads))?
            .transpose(1, 2)?
            .contiguous()
    }

    fn attend(&self, x: &Tensor, key_bias: &Tensor, only_first: bool) -> Result<Tensor> {
        let (b, t, d) = x.dims3()?;
        let h = self.ln1.forward(x)?;
        let qkv = self.qkv.forward(&h)?;
        let q_all = qkv.narrow(2, 0, d)?;
        let q = if only_first {
            q_all.narrow(1, 0, 1)?
        } else {
            q_all
        };
        let tq = q.dim(1)?;
        let q = self.split_heads(&q)?;
        let k = self.split_heads(&qkv.narrow(2, d, d)?)?;
        let v = self.split_heads(&qkv.narrow(2, 2 * d, d)?)?;
        let scale = 1.0 / ((d / self.heads) as f64).sqrt();
        let scores =
            (q.matmul(&k.transpose(2, 3)?.contiguous()?)? * scale)?.broadcast_add(key_bias)?;
        let att = candle_nn::ops::softmax_last_dim(&scores)?;
        let ctx = att.matmul(&v)?.transpose(1, 2)?.reshape((b, tq, d))?;
        let x_q = if only_first {
            x.narrow(1, 0, 1)?
        } else {
            x.clone()
        };
        let _ = t;
        x_q + self.out.forward(&ctx)?
    }

    fn feed_forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.ln2.forward(x)?;
        x + self.ff2.forward(&self.ff1.forward(&h)?.relu()?)?
    }

    /// `x` `[B, T, d]`, `key_bias` `[B, 1, 1, T]` (0 for valid keys, -1e9 for padding).
    pub fn forward(&self, x: &Tensor, key_bias: &Tensor) -> Result<Tensor> {
        self.feed_forward(&self.attend(x, key_bias, false)?)
    }

    /// Like [`TransformerLayer::forward`] but only for position 0 (the target): `[B, d]`.
    /// The last layer needs nothing else, which saves most of its work.
    pub fn forward_first(&self, x: &Tensor, key_bias: &Tensor) -> Result<Tensor> {
        self.feed_forward(&self.attend(x, key_bias, true)?)?
            .squeeze(1)
    }
}

/// `[B, T]` mask to the additive attention bias `[B, 1, 1, T]`.
pub fn key_bias(mask: &Tensor) -> Result<Tensor> {
    ((mask - 1.0)? * 1e9)?.unsqueeze(1)?.unsqueeze(1)
}

/// Sum over the prefix-level dimension of per-level embeddings: `ids` `[.., L]` -> `[.., d]`.
pub fn sum_levels(tables: &[EmbeddingTable], ids: &Tensor) -> Result<Tensor> {
    let last = ids.rank() - 1;
    let mut acc: Option<Tensor> = None;
    for (l, table) in tables.iter().enumerate() {
        let e = table.forward(&ids.narrow(last, l, 1)?.squeeze(last)?)?;
        acc = Some(match acc {
            Some(a) => (a + e)?,
            None => e,
        });
    }
    acc.ok_or_else(|| candle_core::Error::Msg("no SemID levels".into()))
}

pub fn ones(b: usize, dev: &Device) -> Result<Tensor> {
    Tensor::ones((b, 1), DType::F32, dev)
}

/// Logits `[B, 1]` to `[B]`.
pub fn flat(x: Tensor) -> Result<Tensor> {
    x.squeeze(D::Minus1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The factored first layer of `pool` equals the MLP over the concatenated features.
    #[test]
    fn target_attention_matches_the_concatenated_form() {
        let dev = Device::Cpu;
        let p = Params::new(3, &dev);
        let att = TargetAttention::new(&p, "att", 8).unwrap();
        let q = Tensor::randn(0f32, 1.0, (5, 8), &dev).unwrap();
        let keys = Tensor::randn(0f32, 1.0, (5, 7, 8), &dev).unwrap();
        let mask = Tensor::from_vec(
            (0..35)
                .map(|i| if i % 7 < 5 { 1f32 } else { 0.0 })
                .collect::<Vec<_>>(),
            (5, 7),
            &dev,
        )
        .unwrap();
        let got = att.pool(&q, &keys, &mask).unwrap();
        let qr = q.unsqueeze(1).unwrap().repeat((1, 7, 1)).unwrap();
        let feats = Tensor::cat(
            &[&qr, &keys, &(&qr - &keys).unwrap(), &(&qr * &keys).unwrap()],
            2,
        )
        .unwrap();
        let logits = att.mlp.forward(&feats).unwrap().squeeze(2).unwrap();
        let w = masked_softmax(&logits, &mask).unwrap();
        let want = w
            .unsqueeze(1)
            .unwrap()
            .matmul(&keys)
            .unwrap()
            .squeeze(1)
            .unwrap();
        let diff = (got - want)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-5, "{diff}");
    }
}
