//! The SIREN ESU on its own: the network of `siren-hard` without its evidence input (width 32, two pre-norm layers of two
//! heads, the recent branch over the last 50, head 64-32-1) over one batch of N candidates
//! with T retrieved behaviours each, for timing candle's forward against the fused serving
//! forward on the same weights and the same batch, and for handing the same network to the
//! PyTorch / ONNX Runtime script (`benches/torch_esu.py`).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Instant;

use crate::timing::{summarize, Sample};

use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use siren_model::batch::{Batch, SeqBatch, GAP_BUCKETS, SIMTIER_BINS, SIM_BUCKETS};
use siren_model::models::layers::Params;
use siren_model::models::{build, Dims, ModelConfig, Scorer};
use siren_model::{Retrieval, SeqKind};
use siren_serve::forward::weights::Named;
use siren_serve::forward::FusedEsu;

/// One model, its fused form over the same weights, and one batch of one user's candidates.
pub struct EsuFixture {
    pub cfg: ModelConfig,
    pub dims: Dims,
    pub params: Params,
    pub model: Box<dyn Scorer>,
    pub fused: FusedEsu,
    pub batch: Batch,
    pub candidates: usize,
}

/// Catalog sizes of the fixture's tables (those of the scoring fixture's synthetic catalog).
const ITEMS: usize = 20_000;
const CATEGORIES: usize = 200;
const USERS: usize = 1_000;
const PREFIX: [usize; 3] = [256, 4_096, 20_000];
const EMB_DIM: usize = 64;

/// `siren-hard` with `dim`, over a batch of `candidates` candidates with `retrieved` retrieved
/// behaviours each (all real) and one user's 50 recent behaviours; weights from `seed`.
pub fn esu_fixture(candidates: usize, retrieved: usize, dim: usize, seed: u64) -> EsuFixture {
    let cfg = ModelConfig {
        dim,
        retrieved,
        // The network: no evidence input (the PyTorch script builds none).
        evidence: false,
        ..ModelConfig::named("siren-hard").expect("siren-hard")
    };
    let dims = Dims {
        items: ITEMS + 1,
        categories: CATEGORIES + 1,
        users: USERS + 1,
        prefix: PREFIX.iter().map(|p| p + 1).collect(),
        emb_dim: EMB_DIM,
        domains: 1,
    };
    let params = Params::new(seed, &Device::Cpu);
    let model = build(&cfg, &dims, &params).expect("build");
    let weights = Named::new(params.named_tensors().expect("weights"));
    let fused = FusedEsu::load(&cfg, &weights)
        .expect("fused")
        .expect("siren-hard is covered");
    let batch = esu_batch(&cfg, candidates, seed).expect("batch");
    EsuFixture {
        cfg,
        dims,
        params,
        model,
        fused,
        batch,
        candidates,
    }
}

/// Random `[rows, cols]` indexes below `bound` (1-based: row 0 is the unknown row).
fn ids(rng: &mut StdRng, rows: usize, cols: usize, bound: usize) -> Vec<u32> {
    (0..rows * cols)
        .map(|_| rng.random_range(1..bound as u32))
        .collect()
}

/// A sequence of `t` real behaviours per candidate; `shared` gives every candidate the same
/// ones (a user's recent behaviours).
fn seq(
    rng: &mut StdRng,
    kind: SeqKind,
    b: usize,
    t: usize,
    shared: bool,
) -> candle_core::Result<SeqBatch> {
    let n = if shared { 1 } else { b };
    let dev = &Device::Cpu;
    let l = PREFIX.len();
    let mut u = |bound: usize, cols: usize| {
        let one = ids(rng, n, t * cols, bound);
        let all: Vec<u32> = (0..b)
            .flat_map(|i| one[(i % n) * t * cols..][..t * cols].to_vec())
            .collect();
        all
    };
    let (item, category, action) = (u(ITEMS + 1, 1), u(CATEGORIES + 1, 1), u(4, 1));
    let (gap, sim_bucket, depth) = (u(GAP_BUCKETS, 1), u(SIM_BUCKETS, 1), u(l + 1, 1));
    let prefix = u(PREFIX[0] + 1, l);
    let t2 = |v: Vec<u32>| Tensor::from_vec(v, (b, t), dev);
    Ok(SeqBatch {
        kind,
        item: t2(item)?,
        category: t2(category)?,
        action: t2(action)?,
        gap: t2(gap)?,
        sim_bucket: t2(sim_bucket)?,
        depth: t2(depth)?,
        prefix: Tensor::from_vec(prefix, (b, t, l), dev)?,
        sim: Tensor::zeros((b, t), candle_core::DType::F32, dev)?,
        mask: Tensor::ones((b, t), candle_core::DType::F32, dev)?,
        simtier: Tensor::zeros((b, SIMTIER_BINS), candle_core::DType::F32, dev)?,
    })
}

fn esu_batch(cfg: &ModelConfig, b: usize, seed: u64) -> candle_core::Result<Batch> {
    let mut rng = StdRng::seed_from_u64(seed);
    let dev = &Device::Cpu;
    let retrieved = seq(
        &mut rng,
        SeqKind::Retrieved(Retrieval::Hard),
        b,
        cfg.retrieved,
        false,
    )?;
    let recent = seq(&mut rng, SeqKind::Recent, b, cfg.recent, true)?;
    let user = rng.random_range(1..=USERS as u32);
    let emb: Vec<f32> = (0..b * EMB_DIM)
        .map(|_| rng.random_range(-1.0f32..1.0) / (EMB_DIM as f32).sqrt())
        .collect();
    let one = |v: Vec<u32>| Tensor::from_vec(v, b, dev);
    Ok(Batch {
        size: b,
        label: Tensor::zeros(b, candle_core::DType::F32, dev)?,
        user: one(vec![user; b])?,
        domain: one(vec![0; b])?,
        item: one(ids(&mut rng, b, 1, ITEMS + 1))?,
        category: one(ids(&mut rng, b, 1, CATEGORIES + 1))?,
        prefix: Tensor::from_vec(
            ids(&mut rng, b, PREFIX.len(), PREFIX[0] + 1),
            (b, PREFIX.len()),
            dev,
        )?,
        emb: Tensor::from_vec(emb, (b, EMB_DIM), dev)?,
        seqs: vec![retrieved, recent],
        evidence: None,
        item_labels: None,
    })
}

impl EsuFixture {
    /// Candle's click probabilities (the model's logits through a sigmoid).
    pub fn candle_probs(&self) -> Vec<f32> {
        candle_nn::ops::sigmoid(&self.model.logits(&self.batch).expect("forward"))
            .and_then(|p| p.to_vec1::<f32>())
            .expect("probabilities")
    }

    pub fn fused_probs(&self) -> Vec<f32> {
        self.fused.probs(&self.batch).expect("fused forward")
    }

    /// Candle's forward and the fused one, `runs` times each, alternating so that both see the
    /// same load on a shared machine: their timings, seconds.
    pub fn time_both(&self, runs: usize) -> (Sample, Sample) {
        let (candle, fused) = self.time_both_runs(runs);
        (summarize(candle), summarize(fused))
    }

    /// The seconds of each run of [`EsuFixture::time_both`] (after one warm-up call each).
    pub fn time_both_runs(&self, runs: usize) -> (Vec<f64>, Vec<f64>) {
        (0..runs + 1)
            .map(|_| {
                (
                    seconds(|| self.candle_probs()),
                    seconds(|| self.fused_probs()),
                )
            })
            .skip(1)
            .unzip()
    }

    /// The seconds of each of `runs` calls of `forward` made back to back, after one warm-up
    /// call: how `benches/torch_esu.py` times PyTorch and ONNX Runtime, so that every forward
    /// of [`time_all`] runs with the caches its own previous call left (alternating with
    /// candle, the fused forward started every call from caches candle had just evicted, and
    /// measured about 1.5x its back-to-back time).
    pub fn time_runs(&self, runs: usize, forward: impl Fn(&Self) -> Vec<f32>) -> Vec<f64> {
        (0..runs + 1)
            .map(|_| seconds(|| forward(self)))
            .skip(1)
            .collect()
    }

    /// The network for `benches/torch_esu.py`: `esu.json` with the configuration, every
    /// parameter by name (row-major), the batch's inputs and candle's probabilities (which the
    /// script must reproduce before it times anything).
    pub fn export(
        &self,
        dir: &Path,
    ) -> Result<std::path::PathBuf, Box<dyn std::error::Error + Send + Sync>> {
        let flat = |t: &Tensor| -> candle_core::Result<Value> {
            let v: Value = match t.dtype() {
                candle_core::DType::U32 => t.flatten_all()?.to_vec1::<u32>()?.into(),
                _ => t.flatten_all()?.to_vec1::<f32>()?.into(),
            };
            Ok(json!({"shape": t.dims(), "data": v}))
        };
        let mut params = serde_json::Map::new();
        for (name, t) in self.params.named_tensors()? {
            params.insert(name, flat(&t)?);
        }
        let b = &self.batch;
        let mut seqs = serde_json::Map::new();
        for s in &b.seqs {
            let key = if s.kind == SeqKind::Recent {
                "recent"
            } else {
                "retrieved"
            };
            seqs.insert(
                key.into(),
                json!({
                    "item": flat(&s.item)?, "category": flat(&s.category)?,
                    "action": flat(&s.action)?, "gap": flat(&s.gap)?,
                    "sim_bucket": flat(&s.sim_bucket)?, "depth": flat(&s.depth)?,
                    "prefix": flat(&s.prefix)?, "mask": flat(&s.mask)?,
                }),
            );
        }
        let doc = json!({
            "config": {"dim": self.cfg.dim, "heads": self.cfg.heads, "layers": self.cfg.layers,
                       "recent": self.cfg.recent, "retrieved": self.cfg.retrieved,
                       "levels": PREFIX.len()},
            "params": params,
            "inputs": {"user": flat(&b.user)?, "item": flat(&b.item)?,
                       "category": flat(&b.category)?, "prefix": flat(&b.prefix)?,
                       "emb": flat(&b.emb)?, "seqs": seqs},
            "candle_probs": self.candle_probs(),
        });
        let path = dir.join("esu.json");
        std::fs::write(&path, serde_json::to_vec(&doc)?)?;
        Ok(path)
    }
}

/// Threads both forwards use: `RAYON_NUM_THREADS` when set (candle and the rayon pool both
/// read it), else the machine's.
pub fn threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// The Python that runs `benches/torch_esu.py`: `SIREN_BENCH_PYTHON` when set, else the venv
/// `scripts/bench-python.sh` installs (`target/bench-python`) when it exists, else `python3`.
pub fn bench_python() -> PathBuf {
    if let Some(p) = std::env::var_os("SIREN_BENCH_PYTHON").filter(|p| !p.is_empty()) {
        return p.into();
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-python/bin/python");
    if venv.exists() {
        venv
    } else {
        "python3".into()
    }
}

/// The two forwards the Python script times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framework {
    Torch,
    Onnx,
}

/// What the script reported once its two networks gave candle's probabilities.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ready {
    pub threads: usize,
    pub torch_max_diff: f64,
    pub onnx_max_diff: f64,
    pub onnx_exporter: String,
    pub torch_version: String,
    pub onnxruntime_version: String,
}

/// A running `benches/torch_esu.py` that has checked its networks against candle's
/// probabilities and times them on request.
pub struct TorchEsu {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    pub ready: Ready,
}

/// Why there is no running script: the Python lacks torch or onnxruntime (`Skipped`, the
/// comparison still completes), or the script failed (a network that does not give candle's
/// probabilities, a crash).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum NotRun {
    Skipped(String),
    Failed(String),
}

impl TorchEsu {
    /// Start the script with `python` on the network exported to `json`, with `threads`
    /// threads for PyTorch, its OpenMP runtime and ONNX Runtime.
    pub fn start(python: &Path, json: &Path, threads: usize) -> Result<TorchEsu, NotRun> {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/torch_esu.py");
        let mut child = Command::new(python)
            .arg(script)
            .arg("--json")
            .arg(json)
            .args(["--threads", &threads.to_string()])
            .env("OMP_NUM_THREADS", threads.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                NotRun::Skipped(format!(
                    "cannot run {} (scripts/bench-python.sh installs a Python with torch and \
                     onnxruntime): {e}",
                    python.display()
                ))
            })?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(NotRun::Failed("no pipes to torch_esu.py".into()));
        };
        let mut stdout = BufReader::new(stdout);
        let answer = match read_answer(&mut stdout) {
            Ok(v) => v,
            Err(e) => return Err(NotRun::Failed(format!("{e}; {}", stderr_tail(child)))),
        };
        if let Some(why) = answer.get("skipped") {
            let _ = child.wait();
            return Err(NotRun::Skipped(why.as_str().unwrap_or("").to_string()));
        }
        match serde_json::from_value::<Ready>(answer.clone()) {
            Ok(ready) => Ok(TorchEsu {
                child,
                stdin,
                stdout,
                ready,
            }),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(NotRun::Failed(
                    answer["error"].as_str().unwrap_or("no answer").to_string(),
                ))
            }
        }
    }

    /// Seconds of each of `runs` forwards of `which`.
    pub fn time(&mut self, which: Framework, runs: usize) -> Result<Vec<f64>, String> {
        let name = match which {
            Framework::Torch => "torch",
            Framework::Onnx => "onnx",
        };
        writeln!(self.stdin, "{name} {runs}")
            .and_then(|()| self.stdin.flush())
            .map_err(|e| format!("torch_esu.py stopped reading: {e}"))?;
        let answer = read_answer(&mut self.stdout)?;
        serde_json::from_value::<Vec<f64>>(answer["times"].clone())
            .map_err(|_| format!("torch_esu.py answered {answer}"))
    }
}

impl Drop for TorchEsu {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let _ = self.stdin.flush();
        let _ = self.child.wait();
    }
}

/// The script's next line of output, as JSON.
fn read_answer(stdout: &mut impl BufRead) -> Result<Value, String> {
    let mut line = String::new();
    loop {
        line.clear();
        match stdout.read_line(&mut line) {
            Ok(0) => return Err("torch_esu.py exited without an answer".into()),
            Ok(_) => {
                // Libraries may print to standard output too; answers are JSON objects.
                if let Ok(v @ Value::Object(_)) = serde_json::from_str(line.trim()) {
                    return Ok(v);
                }
            }
            Err(e) => return Err(format!("reading torch_esu.py: {e}")),
        }
    }
}

/// The last line the script wrote to standard error, once it has exited.
fn stderr_tail(child: Child) -> String {
    match child.wait_with_output() {
        Ok(out) => format!(
            "exit {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
        ),
        Err(e) => e.to_string(),
    }
}

/// The ESU forward of one fixture in candle, fused, PyTorch and ONNX Runtime, with this
/// process's thread count.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EsuTimes {
    pub threads: usize,
    pub rounds: usize,
    pub candle: Sample,
    pub fused: Sample,
    pub python: Result<PythonTimes, NotRun>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PythonTimes {
    pub ready: Ready,
    pub torch: Sample,
    pub onnx: Sample,
    /// Fused / PyTorch and fused / ONNX Runtime p50 of each round, in round order (how much
    /// the ratio moves with the machine's load).
    pub torch_round_ratios: Vec<f64>,
    pub onnx_round_ratios: Vec<f64>,
}

/// Seconds one call of `forward` takes.
fn seconds(forward: impl FnOnce() -> Vec<f32>) -> f64 {
    let t = Instant::now();
    std::hint::black_box(forward());
    t.elapsed().as_secs_f64()
}

/// `rounds` rounds of `runs` forwards each of candle, then fused, then PyTorch, then ONNX
/// Runtime (when `python` runs the script), each forward's calls back to back, so that all
/// four see the same load over the measurement and the same cache conditions; the fixture's
/// network is exported to `dir`.
pub fn time_all(
    f: &EsuFixture,
    python: &Path,
    dir: &Path,
    rounds: usize,
    runs: usize,
) -> Result<EsuTimes, Box<dyn std::error::Error + Send + Sync>> {
    let (threads, runs) = (threads(), runs.max(1));
    let mut script = TorchEsu::start(python, &f.export(dir)?, threads);
    let (mut candle, mut fused, mut torch, mut onnx) = (vec![], vec![], vec![], vec![]);
    let mut ratios = (vec![], vec![]);
    let median = |v: &[f64]| summarize(v.to_vec()).p50;
    for _ in 0..rounds.max(1) {
        let c = f.time_runs(runs, EsuFixture::candle_probs);
        let u = f.time_runs(runs, EsuFixture::fused_probs);
        let fused_p50 = median(&u);
        candle.extend(c);
        fused.extend(u);
        let Ok(s) = &mut script else { continue };
        match (
            s.time(Framework::Torch, runs),
            s.time(Framework::Onnx, runs),
        ) {
            (Ok(t), Ok(o)) => {
                ratios.0.push(fused_p50 / median(&t));
                ratios.1.push(fused_p50 / median(&o));
                torch.extend(t);
                onnx.extend(o);
            }
            (Err(e), _) | (_, Err(e)) => script = Err(NotRun::Failed(e)),
        }
    }
    let python = script.map(|s| PythonTimes {
        ready: s.ready.clone(),
        torch: summarize(torch),
        onnx: summarize(onnx),
        torch_round_ratios: ratios.0,
        onnx_round_ratios: ratios.1,
    });
    Ok(EsuTimes {
        threads,
        rounds: rounds.max(1),
        candle: summarize(candle),
        fused: summarize(fused),
        python,
    })
}
