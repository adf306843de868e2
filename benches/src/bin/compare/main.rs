//! Siren side by side with the stores its users would otherwise pick, in one run on one machine:
//! bytes on disk on three workloads (long synthetic histories, many short ones, MovieLens) and
//! against the long histories' lossless floor, durable ingest, appends to a hot user, whole-history
//! reads, hard and soft retrieval, end-to-end scoring against its floor, the ESU forward against
//! PyTorch and ONNX Runtime, and scaling curves. Writes `BENCHMARKS.md`, a JSON file and PNG
//! plots.
//!
//! cargo run --release -p siren-benches --bin compare -- --users 10 --events-per-user 100000

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Parser;
use siren_benches::appends::{self, APPENDED, HOT_PENDING, HOT_USER};
use siren_benches::parquet_events::{self, ParquetEvents};
use siren_benches::rocks_rows::RocksRows;
use siren_benches::timing::{files_under, measure, Sample};
use siren_benches::{scoring_fixture_with, siren_esu_flops, NaiveCatalog};
use siren_engine::{
    AppendOptions, AutoCompact, Db, Durability, Event, Item, Options, ReadRange, SemId, Snapshot,
};
use siren_lab::chart::{self, Panel, Series};
use siren_lab::movielens::{MovieLens, MovieLensPaths};
use siren_lab::report::machine;
use siren_model::synth::{self, HistoryEntropy, Planted, PlantedConfig, SynthConfig};
use siren_serve::{Ranker, Retrieval, ScoreOptions, ScoreTimings};

mod esu;
mod report;
mod training;

type Res<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

#[derive(Parser, Debug)]
#[command(about = "Siren against Parquet, RocksDB one row per event and the memory floors")]
struct Args {
    /// Synthetic users, each with `--events-per-user` events.
    #[arg(long, default_value_t = 10)]
    users: usize,
    #[arg(long, default_value_t = 100_000)]
    events_per_user: usize,
    /// Catalog size and embedding width of the synthetic workload.
    #[arg(long, default_value_t = 100_000)]
    items: usize,
    #[arg(long, default_value_t = 64)]
    dim: usize,
    /// Events per acknowledged durable write (fsynced), for both stores.
    #[arg(long, default_value_t = 1_000)]
    batch: usize,
    /// Users of the short-history workload (the issue's `siren import synthetic --users 200000
    /// --min-events 20 --max-events 200 --impressions-per-user 1`: `PlantedConfig` histories
    /// drawn log-uniform from 20 to 200 events and raised to the generator's minimum of 250,
    /// 50 million events at the default; 6 minutes and 6.5 GB here); 0 skips it.
    #[arg(long, default_value_t = 200_000)]
    short_users: usize,
    /// MovieLens folder (ratings.csv, movies.csv, movies_minilm384.f32); skipped when absent.
    #[arg(long, default_value = "../shared/data/movielens-latest-small")]
    movielens: PathBuf,
    /// Where the Markdown report goes.
    #[arg(long, default_value = "BENCHMARKS.md")]
    markdown: PathBuf,
    /// Folder for the JSON results and PNG plots.
    #[arg(long, default_value = "docs/results/bench")]
    out: PathBuf,
    /// Fewer repetitions and a shorter users curve (a smoke run, not for the report).
    #[arg(long)]
    quick: bool,
    /// Scratch space for the stores (a temporary folder by default).
    #[arg(long)]
    scratch: Option<PathBuf>,
    /// Run one section alone and write its report into `--out` (`<section>.md`,
    /// `<section>.json`) rather than `BENCHMARKS.md`: `esu` is the ESU forward against PyTorch
    /// and ONNX Runtime (a minute or two instead of the whole comparison); `training` is the
    /// trainer with held and streamed samples and a 10-million-row item table (a few minutes;
    /// not part of the whole comparison).
    #[arg(long, value_enum)]
    only: Option<Section>,
    /// Thread counts of the ESU comparison, each in its own process.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    esu_threads: Vec<usize>,
    /// Rounds of the ESU comparison (candle, fused, PyTorch, ONNX Runtime in turn) [default: 10,
    /// 3 with --quick].
    #[arg(long)]
    esu_rounds: Option<usize>,
    /// Calls of each forward per round [default: 30, 5 with --quick].
    #[arg(long)]
    esu_runs: Option<usize>,
    /// The Python with torch and onnxruntime that runs `benches/torch_esu.py` [default:
    /// `$SIREN_BENCH_PYTHON`, else `target/bench-python/bin/python` when
    /// `scripts/bench-python.sh` installed it, else `python3`; without torch or onnxruntime the
    /// comparison says so and goes on].
    #[arg(long)]
    python: Option<PathBuf>,
    /// Internal: measure the ESU at this process's thread count and print it as JSON.
    #[arg(long, hide = true)]
    esu_worker: bool,
}

/// A part of the comparison that can run alone.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Section {
    Esu,
    /// The trainer: held against streamed samples, a 10-million-row item table.
    Training,
}

/// Repetition policy: at least `runs` calls and `secs` seconds per measurement.
#[derive(Clone, Copy)]
struct Reps {
    runs: usize,
    secs: f64,
}

impl Reps {
    fn measure<T>(&self, f: impl FnMut() -> T) -> Sample {
        measure(self.runs, Duration::from_secs_f64(self.secs), f)
    }

    /// Seconds per target: `f` over all of `targets`, divided by their number.
    fn per_target<X, T>(&self, targets: &[X], mut f: impl FnMut(&X) -> T) -> Sample {
        let s = self.measure(|| {
            for t in targets {
                std::hint::black_box(f(t));
            }
        });
        let d = targets.len() as f64;
        Sample {
            runs: s.runs,
            p50: s.p50 / d,
            p99: s.p99 / d,
            mean: s.mean / d,
            min: s.min / d,
        }
    }
}

/// Siren's hard and soft retrieval of `k` for `user`, seconds per target.
fn siren_retrieval(
    reps: Reps,
    snap: &Snapshot,
    user: u64,
    targets: &[(SemId, Vec<f32>)],
    k: usize,
) -> (Sample, Sample) {
    (
        reps.per_target(targets, |(s, _)| {
            snap.retrieve_hard(user, s, k, None).expect("hard")
        }),
        reps.per_target(targets, |(_, e)| {
            snap.retrieve_soft(user, e, k, None).expect("soft")
        }),
    )
}

/// The same events in the three stores.
struct Stores {
    db: Db,
    siren_dir: PathBuf,
    parquet: ParquetEvents,
    rocks: RocksRows,
    sizes: Sizes,
}

#[derive(Debug, Clone, Copy, serde::Serialize)]
struct Sizes {
    events: u64,
    siren_bytes: u64,
    siren_segment_bytes: u64,
    siren_rocksdb_bytes: u64,
    parquet_bytes: u64,
    rocks_bytes: u64,
    /// Siren's live segment bytes by part: time, item, action, domain, item dictionaries,
    /// prefix indexes, headers.
    siren_parts: [u64; 7],
}

#[derive(Debug, Clone, Copy, serde::Serialize)]
struct Ingest {
    events: u64,
    batch: usize,
    /// Siren with background compaction every [`BG_PENDING`] pending events: segments and
    /// prefix indexes are built while appends wait on fsync; the clock stops when the last
    /// event is compacted and indexed.
    siren_secs: f64,
    compactions: u64,
    /// The same with the engine's default settings (compaction at 1,000,000 pending events
    /// or after 60 s).
    siren_default_secs: f64,
    siren_default_compactions: u64,
    /// Siren with compaction run after all appends, one after the other.
    siren_sequential_append_secs: f64,
    siren_sequential_compact_secs: f64,
    rocks_secs: f64,
    /// RocksDB's memtable flush and full compaction after the last write (work it defers
    /// while the data fits in its memtable).
    rocks_settle_secs: f64,
    siren_rate: f64,
    siren_default_rate: f64,
    siren_sequential_rate: f64,
    rocks_rate: f64,
}

/// Pending events at which the ingest benchmark's Siren compacts in the background
/// (`[engine] compact_pending_events`): a user's pending events are copied on each append that
/// touches them, so letting them grow to the default million makes appends slower, while
/// compacting more often rewrites entries more often.
const BG_PENDING: u64 = 200_000;

/// Durable ingest of `events` in batches of `batch`, each batch one fsynced write, into fresh
/// stores under `scratch`: Siren with background compaction (at [`BG_PENDING`] and at the
/// default), Siren compacting afterwards, and RocksDB one row per event.
fn measure_ingest(
    scratch: &Path,
    items: &[Item],
    dim: usize,
    events: &[Event],
    batch: usize,
) -> Res<Ingest> {
    let opts = AppendOptions {
        durability: Durability::Sync,
        source: None,
    };
    // Seconds to append everything, seconds for the compaction after it, compactions.
    let siren = |auto: Option<AutoCompact>| -> Res<(f64, f64, u64)> {
        let dir = scratch.join("ingest-siren");
        let db = Db::open(
            &dir,
            Options {
                embedding_dim: dim as u32,
                auto_compact: auto,
                ..Options::default()
            },
        )?;
        for c in items.chunks(10_000) {
            db.upsert_items(c, Durability::Buffered)?;
        }
        db.flush()?;
        let t = Instant::now();
        for c in events.chunks(batch) {
            db.append(c, &opts)?;
        }
        let append = t.elapsed().as_secs_f64();
        let t = Instant::now();
        db.compact()?;
        let compact = t.elapsed().as_secs_f64();
        let compactions = db.counters().compactions;
        drop(db);
        std::fs::remove_dir_all(&dir)?;
        Ok((append, compact, compactions))
    };
    let (a, c, compactions) = siren(Some(AutoCompact {
        pending_events: BG_PENDING,
        interval: Duration::from_secs(60),
    }))?;
    let siren_secs = a + c;
    let (a, c, siren_default_compactions) = siren(Some(AutoCompact::default()))?;
    let siren_default_secs = a + c;
    let (append_secs, compact_secs, _) = siren(None)?;

    let mut rocks = RocksRows::open(&scratch.join("ingest-rocks"))?;
    let t = Instant::now();
    for c in events.chunks(batch) {
        rocks.append(c, true)?;
    }
    let rocks_secs = t.elapsed().as_secs_f64();
    let t = Instant::now();
    rocks.settle()?;
    let rocks_settle_secs = t.elapsed().as_secs_f64();
    drop(rocks);
    std::fs::remove_dir_all(scratch.join("ingest-rocks"))?;
    let n = events.len() as f64;
    Ok(Ingest {
        events: events.len() as u64,
        batch,
        siren_secs,
        compactions,
        siren_default_secs,
        siren_default_compactions,
        siren_sequential_append_secs: append_secs,
        siren_sequential_compact_secs: compact_secs,
        rocks_secs,
        rocks_settle_secs,
        siren_rate: n / siren_secs,
        siren_default_rate: n / siren_default_secs,
        siren_sequential_rate: n / (append_secs + compact_secs),
        rocks_rate: n / rocks_secs,
    })
}

/// Bytes of a store's folder without RocksDB's informational `LOG` files, which hold no data.
fn data_bytes(dir: &Path) -> u64 {
    files_under(dir)
        .into_iter()
        .filter(|(p, _)| {
            !p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("LOG"))
        })
        .map(|(_, len)| len)
        .sum()
}

/// Bulk-load `events` (time-ordered, users interleaved, as a live stream arrives) into the
/// three stores, each settled (Siren compacted, RocksDB flushed and fully compacted) so that
/// sizes are steady-state.
fn build_stores(
    scratch: &Path,
    name: &str,
    items: &[Item],
    dim: usize,
    events: &[Event],
) -> Res<Stores> {
    let base = scratch.join(name);
    std::fs::create_dir_all(&base)?;
    let siren_dir = base.join("siren");
    let rocks_dir = base.join("rocks");
    let db = Db::open(
        &siren_dir,
        Options {
            embedding_dim: dim as u32,
            auto_compact: None,
            ..Options::default()
        },
    )?;
    for c in items.chunks(10_000) {
        db.upsert_items(c, Durability::Buffered)?;
    }
    let opts = AppendOptions {
        durability: Durability::Buffered,
        source: None,
    };
    for c in events.chunks(50_000) {
        db.append(c, &opts)?;
    }
    db.compact()?;
    db.flush()?;
    let mut rocks = RocksRows::open(&rocks_dir)?;
    for c in events.chunks(50_000) {
        rocks.append(c, false)?;
    }
    rocks.settle()?;

    // Parquet is written sorted by user then time, its best layout for per-user reads.
    let mut sorted = events.to_vec();
    sorted.sort_by_key(|e| (e.user, e.ts));
    let pq_path = base.join("events.parquet");
    let parquet_bytes = parquet_events::write(&pq_path, &sorted, 3)?;
    let parquet = ParquetEvents::open(&pq_path)?;

    let s = db.stats();
    // The catalog (item embeddings and SemIDs) is left out: the baselines store no catalog.
    let siren_bytes = data_bytes(&siren_dir).saturating_sub(s.rocksdb.items);
    let sizes = Sizes {
        events: events.len() as u64,
        siren_bytes,
        siren_segment_bytes: s.segment_file_bytes,
        siren_rocksdb_bytes: siren_bytes.saturating_sub(s.segment_file_bytes),
        parquet_bytes,
        rocks_bytes: data_bytes(&rocks_dir),
        siren_parts: [
            s.live.time,
            s.live.item,
            s.live.action,
            s.live.domain,
            s.live.dict,
            s.live.index,
            s.live.meta,
        ],
    };
    Ok(Stores {
        db,
        siren_dir,
        parquet,
        rocks,
        sizes,
    })
}

/// Order-0 empirical entropy of each column, bytes per event, each user's values counted
/// separately (as per-user storage sees them): time deltas, items, actions, domains. A
/// memoryless coder that knew each user's exact distributions for free could do no better; it
/// is the reference for what the columns could shrink to.
fn column_entropy(events: &[Event]) -> [f64; 4] {
    use std::collections::HashMap;
    fn bits<K: std::hash::Hash + Eq>(values: impl Iterator<Item = K>) -> f64 {
        let mut counts: HashMap<K, u64> = HashMap::new();
        let mut n = 0u64;
        for v in values {
            *counts.entry(v).or_default() += 1;
            n += 1;
        }
        counts
            .values()
            .map(|&c| {
                let p = c as f64 / n as f64;
                -(c as f64) * p.log2()
            })
            .sum()
    }
    let mut by_user: HashMap<u64, Vec<&Event>> = HashMap::new();
    for e in events {
        by_user.entry(e.user).or_default().push(e);
    }
    let mut total = [0f64; 4];
    for evs in by_user.values() {
        total[0] += bits(evs.windows(2).map(|w| w[1].ts - w[0].ts));
        total[1] += bits(evs.iter().map(|e| e.item));
        total[2] += bits(evs.iter().map(|e| e.action));
        total[3] += bits(evs.iter().map(|e| e.domain));
    }
    total.map(|b| b / 8.0 / events.len() as f64)
}

/// Interleave per-user histories by time, as a live stream would deliver them.
fn stream(histories: Vec<Vec<Event>>) -> Vec<Event> {
    let mut all: Vec<Event> = histories.into_iter().flatten().collect();
    // Stable: events of one user keep their order when times tie.
    all.sort_by_key(|e| e.ts);
    all
}

#[derive(Debug, Clone, Copy, serde::Serialize)]
struct ReadCmp {
    events: usize,
    siren: Sample,
    parquet: Sample,
    rocks: Sample,
    memcpy: Sample,
}

/// Read `user`'s whole history from the three stores (checking they agree) and copy it.
fn compare_reads(st: &Stores, user: u64, reps: Reps) -> Res<ReadCmp> {
    let snap = st.db.snapshot();
    let want = snap.read(user, ReadRange::all())?;
    let pq = st.parquet.read_user(user)?;
    let rk = st.rocks.read_user(user)?;
    if pq != want || rk != want {
        return Err(format!(
            "stores disagree on user {user}: siren {} events, parquet {}, rocksdb {}",
            want.len(),
            pq.len(),
            rk.len()
        )
        .into());
    }
    let mut dst = want.clone();
    Ok(ReadCmp {
        events: want.len(),
        siren: reps.measure(|| snap.read(user, ReadRange::all()).expect("read")),
        parquet: reps.measure(|| st.parquet.read_user(user).expect("parquet")),
        rocks: reps.measure(|| st.rocks.read_user(user).expect("rocksdb")),
        memcpy: reps.measure(|| {
            dst.copy_from_slice(std::hint::black_box(&want));
            dst.len()
        }),
    })
}

#[derive(Debug, Clone, serde::Serialize)]
struct RetrievalCmp {
    events: usize,
    targets: usize,
    k: usize,
    /// Seconds per target.
    hard: Sample,
    hard_linear_scan: Sample,
    soft: Sample,
    soft_f32_loop: Sample,
    soft_memory_floor: Sample,
    /// Bytes the soft floor copies: int8 embeddings of the distinct items, and 4 bytes per
    /// event for the item column's dictionary codes.
    soft_floor_bytes: usize,
    distinct_items: usize,
    /// Overlap of Siren's int8 top-k with the exact f32 top-k.
    soft_recall_vs_f32: f64,
    /// The same queries with the decoded cache turned off (`Options::cache_bytes = 0`): every
    /// call reads, checks and decodes the bitmaps and blocks it needs.
    hard_uncached: Option<Sample>,
    soft_uncached: Option<Sample>,
}

fn compare_retrieval(
    snap: &Snapshot,
    naive: &NaiveCatalog,
    user: u64,
    targets: &[(SemId, Vec<f32>)],
    dim: usize,
    reps: Reps,
) -> Res<RetrievalCmp> {
    let k = 50;
    let history = snap.read(user, ReadRange::all())?;
    let mut recall = 0.0;
    for (semid, emb) in targets {
        let got: Vec<(usize, u8)> = snap
            .retrieve_hard(user, semid, k, None)?
            .iter()
            .map(|h| (h.position as usize, h.depth))
            .collect();
        if got != naive.hard_scan(&history, semid, k) {
            return Err(
                format!("hard retrieval disagrees with the linear scan for {semid:?}").into(),
            );
        }
        let soft: std::collections::HashSet<usize> = snap
            .retrieve_soft(user, emb, k, None)?
            .iter()
            .map(|h| h.position as usize)
            .collect();
        let exact = naive.soft_scan(&history, emb, k);
        recall += exact.iter().filter(|(p, _)| soft.contains(p)).count() as f64
            / exact.len().max(1) as f64;
    }
    let nt = targets.len();
    let distinct: std::collections::HashSet<u64> = history.iter().map(|e| e.item).collect();
    let floor_bytes = distinct.len() * dim + history.len() * 4;
    let src = vec![1u8; floor_bytes];
    let mut dst = vec![0u8; floor_bytes];
    let (hard, soft) = siren_retrieval(reps, snap, user, targets, k);
    Ok(RetrievalCmp {
        events: history.len(),
        targets: nt,
        k,
        hard,
        hard_linear_scan: reps.per_target(targets, |(s, _)| naive.hard_scan(&history, s, k)),
        soft,
        soft_f32_loop: reps.per_target(targets, |(_, e)| naive.soft_scan(&history, e, k)),
        soft_memory_floor: reps.measure(|| {
            dst.copy_from_slice(std::hint::black_box(&src));
            dst[floor_bytes / 2]
        }),
        soft_floor_bytes: floor_bytes,
        distinct_items: distinct.len(),
        soft_recall_vs_f32: recall / nt as f64,
        hard_uncached: None,
        soft_uncached: None,
    })
}

/// A candle matrix product's rate in FLOP/s for `[m, k] x [k, n]`.
fn matmul_rate(m: usize, k: usize, n: usize, reps: Reps) -> Res<f64> {
    use candle_core::{Device, Tensor};
    let a = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu)?;
    let b = Tensor::randn(0f32, 1.0, (k, n), &Device::Cpu)?;
    let s = reps.measure(|| a.matmul(&b).expect("matmul"));
    Ok(2.0 * (m * k * n) as f64 / s.p50)
}

#[derive(Debug, Clone, serde::Serialize)]
struct ScoreCmp {
    gsu: String,
    candidates: usize,
    events: usize,
    p50: f64,
    p99: f64,
    mean: f64,
    read_share: f64,
    retrieve_share: f64,
    features_share: f64,
    esu_share: f64,
    /// The engine's batched retrieval alone for the same candidates, seconds (p50).
    gsu_only: f64,
    /// The ESU forward pass (tensors and model, one batch of all candidates), seconds.
    esu: Sample,
}

fn score_run(
    db: &Db,
    ranker: &Ranker,
    user: u64,
    cands: &[u64],
    gsu: Retrieval,
    runs: usize,
) -> Res<ScoreCmp> {
    let opts = ScoreOptions {
        retrieval: gsu,
        ..ScoreOptions::default()
    };
    // Each call takes its own snapshot, as a server's handler does.
    ranker.score(&db.snapshot(), user, cands, &opts)?;
    let mut t = Vec::with_capacity(runs);
    for _ in 0..runs {
        t.push(ranker.score(&db.snapshot(), user, cands, &opts)?.timings);
    }
    let totals: Vec<f64> = t.iter().map(|x| x.total_us / 1e6).collect();
    let esu = siren_benches::timing::summarize(t.iter().map(|x| x.esu_us / 1e6).collect());
    let s = siren_benches::timing::summarize(totals);
    let sum = |f: &dyn Fn(&ScoreTimings) -> f64| -> f64 { t.iter().map(f).sum::<f64>() };
    let total = sum(&|x| x.total_us);
    let snap = db.snapshot();
    let items: Vec<Item> = cands.iter().filter_map(|&id| snap.item(id)).collect();
    let gsu_only = match gsu {
        Retrieval::Hard => {
            let semids: Vec<SemId> = items.iter().filter_map(|i| i.semid).collect();
            siren_benches::timing::measure(runs, Duration::ZERO, || {
                snap.retrieve_hard_batch(user, &semids, 50, None)
                    .expect("hard")
            })
        }
        _ => {
            let embs: Vec<Vec<f32>> = items.iter().filter_map(|i| i.embedding.clone()).collect();
            siren_benches::timing::measure(runs, Duration::ZERO, || {
                snap.retrieve_soft_batch(user, &embs, 50, None)
                    .expect("soft")
            })
        }
    };
    Ok(ScoreCmp {
        gsu: format!("{gsu:?}").to_lowercase(),
        candidates: cands.len(),
        events: snap.user_len(user, None)?,
        p50: s.p50,
        p99: s.p99,
        mean: s.mean,
        read_share: sum(&|x| x.build.read_us) / total,
        retrieve_share: sum(&|x| x.build.retrieve_us) / total,
        features_share: sum(&|x| x.build.tokens_us) / total,
        esu_share: sum(&|x| x.esu_us) / total,
        gsu_only: gsu_only.p50,
        esu,
    })
}

/// History length, hard and soft retrieval per target, and the score of 100 candidates.
type ScalingRow = (usize, Sample, Sample, ScoreCmp);

/// One line of the targets table.
#[derive(Debug, Clone, serde::Serialize)]
struct Target {
    what: String,
    measured: f64,
    goal: String,
    met: bool,
}

fn at_most(what: &str, measured: f64, goal: f64) -> Target {
    Target {
        what: what.into(),
        measured,
        goal: format!("<= {goal}"),
        met: measured <= goal,
    }
}

fn at_least(what: &str, measured: f64, goal: f64) -> Target {
    Target {
        what: what.into(),
        measured,
        goal: format!(">= {goal}"),
        met: measured >= goal,
    }
}

fn ms(s: f64) -> String {
    if s < 1e-3 {
        format!("{:.1} µs", s * 1e6)
    } else {
        format!("{:.2} ms", s * 1e3)
    }
}

/// Everything one run measures, for the targets, the plots and the reports.
struct Results {
    command: String,
    synthetic: Synthetic,
    movielens: Option<MovieLensRun>,
    short: Option<Sizes>,
    length_curve: Vec<LengthPoint>,
    score: Scoring,
    esu: esu::EsuCmp,
    targets: Vec<Target>,
}

/// The synthetic lifelong workload in the three stores.
struct Synthetic {
    sizes: Sizes,
    entropy: [f64; 4],
    /// The generator's own entropy per event, averaged over the users.
    floor: HistoryEntropy,
    ingest: Ingest,
    reads: ReadCmp,
    retrieval: RetrievalCmp,
    appends: AppendCmp,
}

/// MovieLens in the three stores: sizes, ingest, and the heaviest user's whole-history read.
struct MovieLensRun {
    sizes: Sizes,
    ingest: Ingest,
    reads: ReadCmp,
    user: u64,
}

/// The trained SIREN ESU over the engine.
struct Scoring {
    model_name: String,
    hard: ScoreCmp,
    soft: ScoreCmp,
    /// Hard, every call reading the user's history summary (none kept across calls).
    hard_unkept: ScoreCmp,
    flops: f64,
    rate_esu_shape: f64,
    rate_square: f64,
    esu_floor: f64,
    score_floor: f64,
    scaling: Vec<ScalingRow>,
}

type Log<'a> = &'a dyn Fn(&str);

fn main() -> Res<()> {
    let args = Args::parse();
    let reps = if args.quick {
        Reps { runs: 5, secs: 0.2 }
    } else {
        Reps {
            runs: 30,
            secs: 2.0,
        }
    };
    let esu_plan = esu::Plan {
        threads: args.esu_threads.clone(),
        rounds: args.esu_rounds.unwrap_or(if args.quick { 3 } else { 10 }),
        runs: args.esu_runs.unwrap_or(if args.quick { 5 } else { 30 }),
        python: args
            .python
            .clone()
            .unwrap_or_else(siren_benches::esu::bench_python),
    };
    if args.esu_worker {
        return esu::worker(&esu_plan);
    }
    std::fs::create_dir_all(&args.out)?;
    let started = Instant::now();
    let log = |s: &str| eprintln!("[{:>6.1}s] {s}", started.elapsed().as_secs_f64());
    let command =
        std::iter::once("cargo run --release -p siren-benches --bin compare --".to_string())
            .chain(std::env::args().skip(1))
            .collect::<Vec<_>>()
            .join(" ");
    match args.only {
        Some(Section::Esu) => esu_alone(&args, &esu_plan, &command, &log),
        Some(Section::Training) => training_alone(&args, &command, &log),
        None => everything(&args, reps, &esu_plan, command, &log),
    }
}

/// `--only esu`: the ESU section into `esu.md` and `esu.json` under `--out`.
fn esu_alone(args: &Args, plan: &esu::Plan, command: &str, log: Log<'_>) -> Res<()> {
    let e = esu::measure(plan, log)?;
    let targets = esu::targets(&e);
    write_section(
        args,
        command,
        "esu",
        ("esu_forward", &e),
        &targets,
        log,
        |json, table| esu::report(command, &machine(), json, &e, table),
    )
}

/// `--only training`: the trainer's section into `training.md` and `training.json`.
fn training_alone(args: &Args, command: &str, log: Log<'_>) -> Res<()> {
    let t = training::measure(log)?;
    let targets = training::targets(&t);
    write_section(
        args,
        command,
        "training",
        ("training", &t),
        &targets,
        log,
        |json, table| training::report(command, &machine(), json, &t, table),
    )
}

/// A section run alone: `<name>.json` (the machine, the command, `figures` under its key, the
/// targets) and `<name>.md` (`render` of the JSON path and the targets table) under `--out`.
fn write_section<T: serde::Serialize>(
    args: &Args,
    command: &str,
    name: &str,
    figures: (&str, &T),
    targets: &[Target],
    log: Log<'_>,
    render: impl FnOnce(&Path, &siren_lab::table::Table) -> String,
) -> Res<()> {
    let json = args.out.join(format!("{name}.json"));
    let mut value = serde_json::json!({
        "machine": machine(), "command": command, "targets": targets,
    });
    value[figures.0] = serde_json::to_value(figures.1)?;
    std::fs::write(&json, serde_json::to_string_pretty(&value)? + "\n")?;
    let md = args.out.join(format!("{name}.md"));
    std::fs::write(&md, render(&json, &report::targets_table(targets)))?;
    log(&format!("wrote {}, {}", md.display(), json.display()));
    Ok(())
}

/// The whole comparison into `BENCHMARKS.md`, `compare.json` and the plots.
fn everything(
    args: &Args,
    reps: Reps,
    esu_plan: &esu::Plan,
    command: String,
    log: Log<'_>,
) -> Res<()> {
    let tmp = tempfile::tempdir()?;
    let scratch = args
        .scratch
        .clone()
        .unwrap_or_else(|| tmp.path().to_owned());
    let cfg = SynthConfig {
        items: args.items,
        dim: args.dim,
        ..SynthConfig::default()
    };
    let catalog = synth::catalog(&cfg);
    let synthetic = measure_synthetic(args, &cfg, &catalog, reps, &scratch, log)?;
    let movielens = measure_movielens(args, reps, &scratch, log)?;
    let short = measure_short(args, &scratch, log)?;
    let length_curve = measure_length_curve(args, &cfg, &catalog, &scratch, log)?;
    let score = measure_scoring(args, reps, log)?;
    let esu = esu::measure(esu_plan, log)?;
    let mut targets = targets(&synthetic, short.as_ref(), movielens.as_ref(), &score);
    targets.extend(esu::targets(&esu));
    let results = Results {
        command,
        synthetic,
        movielens,
        short,
        length_curve,
        score,
        esu,
        targets,
    };
    plots(&results, &args.out)?;
    std::fs::write(
        args.out.join("compare.json"),
        serde_json::to_string_pretty(&report::json(args, &results))? + "\n",
    )?;
    std::fs::write(&args.markdown, report::markdown(args, &results))?;
    log(&format!(
        "wrote {}, {}",
        args.markdown.display(),
        args.out.display()
    ));
    drop(tmp);
    Ok(())
}

/// Sizes, ingest, whole-history reads and retrieval of the synthetic lifelong workload.
fn measure_synthetic(
    args: &Args,
    cfg: &SynthConfig,
    catalog: &synth::Catalog,
    reps: Reps,
    scratch: &Path,
    log: Log<'_>,
) -> Res<Synthetic> {
    let users: Vec<u64> = (1..=args.users as u64).collect();
    let histories: Vec<Vec<Event>> = users
        .iter()
        .map(|&u| {
            synth::history(
                catalog,
                cfg.seed,
                u,
                args.events_per_user,
                1_600_000_000_000,
            )
        })
        .collect();
    let events = stream(histories);
    log(&format!(
        "synthetic: {} users x {} events, {} items, dim {}; durable ingest in batches of {}",
        args.users, args.events_per_user, args.items, args.dim, args.batch
    ));
    let syn = build_stores(scratch, "synthetic", &catalog.items, args.dim, &events)?;
    log(&format!("sizes {:?}", syn.sizes));
    let sizes = syn.sizes;
    let entropy = column_entropy(&events);
    log(&format!("order-0 column entropy, bytes/event: {entropy:?}"));
    let floor = mean_entropy(catalog, cfg.seed, &users);
    log(&format!(
        "generator's entropy, bits/event: {floor:?} = {:.3} bytes/event",
        floor.bytes_per_event()
    ));
    let ingest = measure_ingest(scratch, &catalog.items, args.dim, &events, args.batch)?;
    log(&format!("ingest {ingest:?}"));
    drop(events);
    let reads = compare_reads(&syn, users[0], reps)?;
    log(&format!("reads {reads:?}"));
    let naive = NaiveCatalog::new(catalog);
    let targets: Vec<(SemId, Vec<f32>)> = (0..20)
        .map(|i| {
            let it = &catalog.items[(i * 4_999) % catalog.items.len()];
            (
                it.semid.expect("semid"),
                it.embedding.clone().expect("embedding"),
            )
        })
        .collect();
    let snap = syn.db.snapshot();
    let mut retrieval = compare_retrieval(&snap, &naive, users[0], &targets, args.dim, reps)?;
    drop(snap);
    // Reopen without the decoded cache for the cold figures.
    let Stores { db, siren_dir, .. } = syn;
    drop(db);
    let cold = Db::open(
        &siren_dir,
        Options {
            embedding_dim: args.dim as u32,
            auto_compact: None,
            cache_bytes: 0,
            ..Options::default()
        },
    )?;
    let (hard, soft) = siren_retrieval(reps, &cold.snapshot(), users[0], &targets, retrieval.k);
    retrieval.hard_uncached = Some(hard);
    retrieval.soft_uncached = Some(soft);
    log(&format!("retrieval {retrieval:?}"));
    drop(cold);
    let appends = compare_appends(scratch, reps)?;
    log(&format!("appends {appends:?}"));
    Ok(Synthetic {
        sizes,
        entropy,
        floor,
        ingest,
        reads,
        retrieval,
        appends,
    })
}

/// MovieLens: sizes, ingest and the heaviest user's read; `None` without the files.
fn measure_movielens(
    args: &Args,
    reps: Reps,
    scratch: &Path,
    log: Log<'_>,
) -> Res<Option<MovieLensRun>> {
    if !args.movielens.join("ratings.csv").exists() {
        log(&format!(
            "MovieLens skipped: no ratings.csv in {}",
            args.movielens.display()
        ));
        return Ok(None);
    }
    let m = MovieLens::load(&MovieLensPaths::in_dir(&args.movielens))?;
    let evs = m.events();
    let mut per_user: std::collections::HashMap<u64, usize> = Default::default();
    for e in &evs {
        *per_user.entry(e.user).or_default() += 1;
    }
    let (&heavy, _) = per_user
        .iter()
        .max_by_key(|(u, n)| (**n, **u))
        .expect("ratings");
    let mut evs_by_time = evs.clone();
    evs_by_time.sort_by_key(|e| e.ts);
    log(&format!("MovieLens: {} ratings", evs.len()));
    let st = build_stores(scratch, "movielens", &[], 0, &evs_by_time)?;
    let reads = compare_reads(&st, heavy, reps)?;
    let ingest = measure_ingest(scratch, &[], 0, &evs_by_time, args.batch)?;
    log(&format!(
        "MovieLens sizes {:?}; reads {reads:?}; ingest {ingest:?}",
        st.sizes
    ));
    Ok(Some(MovieLensRun {
        sizes: st.sizes,
        ingest,
        reads,
        user: heavy,
    }))
}

/// The generator's entropy per event (`synth::history_entropy`), averaged over `users`.
fn mean_entropy(catalog: &synth::Catalog, seed: u64, users: &[u64]) -> HistoryEntropy {
    let n = users.len().max(1) as f64;
    let mut m = HistoryEntropy {
        time: 0.0,
        item: 0.0,
        action: 0.0,
        domain: 0.0,
    };
    for &u in users {
        let h = synth::history_entropy(catalog, seed, u);
        m.time += h.time / n;
        m.item += h.item / n;
        m.action += h.action / n;
        m.domain += h.domain / n;
    }
    m
}

/// Appending events one by one to a user with many pending events and to users with none.
#[derive(Debug, Clone, Copy, serde::Serialize)]
struct AppendCmp {
    hot_pending: usize,
    appended: usize,
    /// Seconds per `appended` appends.
    to_hot_user: Sample,
    to_fresh_user: Sample,
}

fn compare_appends(scratch: &Path, reps: Reps) -> Res<AppendCmp> {
    let dir = scratch.join("appends");
    let db = appends::hot_user_db(&dir)?;
    let mut t = HOT_PENDING as i64;
    let to_hot_user = reps.measure(|| {
        appends::append_one_by_one(&db, HOT_USER, t);
        t += APPENDED as i64;
    });
    let mut fresh = 1_000_000u64;
    let to_fresh_user = reps.measure(|| {
        fresh += 1;
        appends::append_one_by_one(&db, fresh, 0);
    });
    drop(db);
    std::fs::remove_dir_all(dir)?;
    Ok(AppendCmp {
        hot_pending: HOT_PENDING,
        appended: APPENDED,
        to_hot_user,
        to_fresh_user,
    })
}

/// Sizes of the short-history workload; `None` when `--short-users 0`.
fn measure_short(args: &Args, scratch: &Path, log: Log<'_>) -> Res<Option<Sizes>> {
    if args.short_users == 0 {
        return Ok(None);
    }
    let planted = Planted::new(PlantedConfig {
        users: args.short_users,
        min_events: 20,
        max_events: 200,
        impressions_per_user: 1,
        ..PlantedConfig::default()
    });
    let events = stream(planted.users().map(|u| planted.history(u)).collect());
    log(&format!(
        "short histories: {} users, {} events",
        args.short_users,
        events.len()
    ));
    let st = build_stores(
        scratch,
        "short",
        &planted.catalog.items,
        planted.cfg.dim,
        &events,
    )?;
    log(&format!("short sizes {:?}", st.sizes));
    let sizes = st.sizes;
    drop(st);
    std::fs::remove_dir_all(scratch.join("short"))?;
    Ok(Some(sizes))
}

/// One point of the bytes-per-event curve: users of `events_per_user` events each.
#[derive(Debug, Clone, Copy, serde::Serialize)]
struct LengthPoint {
    events_per_user: usize,
    users: usize,
    sizes: Sizes,
    /// The generator's entropy in bytes per event (`synth::history_entropy`, first ten users).
    floor: f64,
}

/// Disk bytes per event as histories grow, about 300,000 events per point.
fn measure_length_curve(
    args: &Args,
    cfg: &SynthConfig,
    catalog: &synth::Catalog,
    scratch: &Path,
    log: Log<'_>,
) -> Res<Vec<LengthPoint>> {
    let (lengths, budget): (&[usize], usize) = if args.quick {
        (&[100, 1_000, 10_000], 30_000)
    } else {
        (
            &[30, 100, 300, 1_000, 3_000, 10_000, 30_000, 100_000],
            300_000,
        )
    };
    let mut curve = Vec::new();
    for &len in lengths {
        let nu = (budget / len).clamp(3, 10_000);
        let users: Vec<u64> = (1..=nu as u64).collect();
        let hs = users
            .iter()
            .map(|&u| synth::history(catalog, cfg.seed, u, len, 1_600_000_000_000))
            .collect();
        let name = format!("len{len}");
        let st = build_stores(scratch, &name, &catalog.items, args.dim, &stream(hs))?;
        let floor = mean_entropy(catalog, cfg.seed, &users[..nu.min(10)]).bytes_per_event();
        log(&format!("{nu} users x {len}: {:?}", st.sizes));
        curve.push(LengthPoint {
            events_per_user: len,
            users: nu,
            sizes: st.sizes,
            floor,
        });
        drop(st);
        std::fs::remove_dir_all(scratch.join(name))?;
    }
    Ok(curve)
}

/// The trained SIREN ESU over the engine: hard and soft scoring, the floor, and scaling with
/// history length (same database, same model).
fn measure_scoring(args: &Args, reps: Reps, log: Log<'_>) -> Res<Scoring> {
    log("scoring fixture: synthetic dataset, siren-hard trained for one epoch");
    let lengths = [1_000, 3_000, 10_000, 30_000];
    let f = scoring_fixture_with(&lengths);
    let score_runs = if args.quick { 20 } else { 200 };
    let run = |user, gsu, runs| score_run(&f.db, &f.ranker, user, &f.candidates, gsu, runs);
    let hard = run(f.lifelong_user, Retrieval::Hard, score_runs)?;
    let soft = run(f.lifelong_user, Retrieval::Soft, score_runs)?;
    let hard_unkept = ScoreCmp {
        gsu: "hard, summary not kept".into(),
        ..score_run(
            &f.db,
            &f.ranker_without_summaries,
            f.lifelong_user,
            &f.candidates,
            Retrieval::Hard,
            score_runs,
        )?
    };
    log(&format!("score {hard:?} {soft:?} {hard_unkept:?}"));
    let flops = siren_esu_flops(&f.model, f.embedding_dim, f.candidates.len());
    let tokens = f.candidates.len() * (1 + f.model.retrieved);
    let rate_esu_shape = matmul_rate(tokens, f.model.dim, 3 * f.model.dim, reps)?;
    let rate_square = matmul_rate(256, 256, 256, reps)?;
    let esu_floor = flops / rate_esu_shape.max(rate_square);
    let score_floor = esu_floor + hard.gsu_only;
    log(&format!(
        "ESU {flops:.3e} FLOP; matmul {:.1} GFLOP/s (ESU shape) {:.1} GFLOP/s (256^3); floor {}",
        rate_esu_shape / 1e9,
        rate_square / 1e9,
        ms(score_floor)
    ));

    let snap = f.db.snapshot();
    let tgt: Vec<(SemId, Vec<f32>)> = f
        .candidates
        .iter()
        .filter_map(|&id| snap.item(id))
        .take(20)
        .map(|i| {
            (
                i.semid.expect("semid"),
                i.embedding.clone().expect("embedding"),
            )
        })
        .collect();
    let mut scaling = Vec::new();
    let all_users = f
        .scaling_users
        .iter()
        .copied()
        .chain(std::iter::once((100_000, f.lifelong_user)));
    for (n, u) in all_users {
        let (hard_s, soft_s) = siren_retrieval(reps, &snap, u, &tgt, 50);
        let sc = run(u, Retrieval::Hard, if args.quick { 10 } else { 50 })?;
        log(&format!(
            "{n} events: hard {} soft {} score p50 {}",
            ms(hard_s.p50),
            ms(soft_s.p50),
            ms(sc.p50)
        ));
        scaling.push((n, hard_s, soft_s, sc));
    }
    Ok(Scoring {
        model_name: f.model_name.clone(),
        hard,
        soft,
        hard_unkept,
        flops,
        rate_esu_shape,
        rate_square,
        esu_floor,
        score_floor,
        scaling,
    })
}

/// Siren's bytes over Parquet's.
fn vs_parquet(s: &Sizes) -> f64 {
    s.siren_bytes as f64 / s.parquet_bytes as f64
}

/// The goals, each a ratio of two figures of this run (the cold hard retrieval's, a time).
fn targets(
    syn: &Synthetic,
    short: Option<&Sizes>,
    movielens: Option<&MovieLensRun>,
    score: &Scoring,
) -> Vec<Target> {
    let (sizes, ingest, reads, retrieval) = (&syn.sizes, &syn.ingest, &syn.reads, &syn.retrieval);
    let hard = &score.hard;
    let mut disk = vec![
        at_most(
            "disk, long synthetic histories: Siren / Parquet bytes",
            vs_parquet(sizes),
            1.0,
        ),
        at_most(
            "disk, long synthetic histories: Siren / the generator's entropy (lossless floor)",
            sizes.siren_bytes as f64 / sizes.events as f64 / syn.floor.bytes_per_event(),
            1.6,
        ),
    ];
    if let Some(s) = short {
        disk.push(at_most(
            "disk, short synthetic histories: Siren / Parquet bytes",
            vs_parquet(s),
            1.0,
        ));
    }
    if let Some(m) = movielens {
        disk.push(at_most(
            "disk, MovieLens: Siren / Parquet bytes",
            vs_parquet(&m.sizes),
            1.0,
        ));
    }
    let a = &syn.appends;
    disk.into_iter().chain([
        at_least(
            "ingest: Siren / RocksDB-row events per second (Siren until every event is compacted and indexed, compaction every 200,000 pending events)",
            ingest.siren_rate / ingest.rocks_rate,
            1.0,
        ),
        at_most(
            "appends: 1,000 one-event appends to a user with 100,000 pending / to users with none",
            a.to_hot_user.p50 / a.to_fresh_user.p50,
            2.0,
        ),
        at_least(
            "whole-history read: RocksDB prefix scan / Siren time",
            reads.rocks.p50 / reads.siren.p50,
            5.0,
        ),
        at_most(
            "whole-history read: Siren / memory-copy floor time",
            reads.siren.p50 / reads.memcpy.p50,
            3.0,
        ),
        at_least(
            "hard retrieval: linear scan / Siren time",
            retrieval.hard_linear_scan.p50 / retrieval.hard.p50,
            50.0,
        ),
        at_most(
            "hard retrieval: Siren hard / Siren soft time",
            retrieval.hard.p50 / retrieval.soft.p50,
            0.02,
        ),
        at_most(
            "hard retrieval, decoded cache off: µs per target",
            retrieval.hard_uncached.map_or(f64::NAN, |s| s.p50 * 1e6),
            50.0,
        ),
        at_most(
            "soft retrieval: Siren / memory floor time",
            retrieval.soft.p50 / retrieval.soft_memory_floor.p50,
            2.0,
        ),
        at_most(
            "score, hard, 100 candidates: p50 / floor (ESU FLOPs at the matmul rate + hard GSU)",
            hard.p50 / score.score_floor,
            2.0,
        ),
        at_most("score, hard, 100 candidates: p99 / p50", hard.p99 / hard.p50, 2.0),
    ]).collect()
}

/// `scaling_latency.png` and `scaling_disk.png` under `out`.
fn plots(r: &Results, out: &Path) -> Res<()> {
    let lx = |n: usize| (n as f64).log10();
    let line = |name: &str, f: &dyn Fn(&ScalingRow) -> f64| Series {
        name: name.into(),
        points: r
            .score
            .scaling
            .iter()
            .map(|row| (lx(row.0), f(row) * 1e3))
            .collect(),
    };
    let lines = |title: String, x_label: &str, y_label: &str, series| Panel::Lines {
        title,
        x_label: x_label.into(),
        y_label: y_label.into(),
        series,
    };
    let history = "log10 events in history";
    chart::render(
        &out.join("scaling_latency.png"),
        &[
            lines(
                "retrieval, one target (k=50)".into(),
                history,
                "ms",
                vec![line("hard", &|r| r.1.p50), line("soft", &|r| r.2.p50)],
            ),
            lines(
                "score 100 candidates (hard GSU)".into(),
                history,
                "ms",
                vec![line("p50", &|r| r.3.p50), line("p99", &|r| r.3.p99)],
            ),
        ],
        520,
        360,
    )?;
    let curve = |name: &str, f: &dyn Fn(&LengthPoint) -> f64| Series {
        name: name.into(),
        points: r
            .length_curve
            .iter()
            .map(|p| (lx(p.events_per_user), f(p)))
            .collect(),
    };
    let per_event = |b: u64, p: &LengthPoint| b as f64 / p.sizes.events as f64;
    chart::render(
        &out.join("scaling_disk.png"),
        &[lines(
            "bytes per event on disk as histories grow".into(),
            "log10 events per user",
            "bytes/event",
            vec![
                curve("siren", &|p| per_event(p.sizes.siren_bytes, p)),
                curve("parquet", &|p| per_event(p.sizes.parquet_bytes, p)),
                curve("rocksdb-row", &|p| per_event(p.sizes.rocks_bytes, p)),
                curve("entropy floor", &|p| p.floor),
            ],
        )],
        620,
        360,
    )?;
    Ok(())
}
