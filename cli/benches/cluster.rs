//! Cluster mode through the real HTTP API and real processes: ingest and scoring with 1, 2 and
//! 3 `siren serve` nodes behind a router (`siren cluster up --nodes N`: 3 JetStream servers,
//! the nodes, one router), against one plain `siren serve` (the baseline) on the same data, the
//! same model and the same requests, in the same run.
//!
//! ```sh
//! ./scripts/setup.sh && cargo bench -p siren-cli --bench cluster
//! SIREN_BENCH_NODES=1,3 SIREN_BENCH_SCORE_SECS=20 cargo bench -p siren-cli --bench cluster
//! ```
//!
//! `siren demo` makes the data and the model. Each setup starts empty, takes the demo's catalog,
//! then its events ([`COPIES`] times over, under other user ids) through `POST /v1/events`
//! (batches of [`BATCH`], [`INGEST_CLIENTS`] clients, each user's events in order through one
//! client; an Idempotency-Key per batch on the cluster, `source` on the single server, so that
//! every write is retry-safe on both), timed until every write is acknowledged and, on the
//! cluster, until every replica has applied it. Then the stored events are counted (once per
//! replica), every database is compacted (not timed) and [`SCORE_CLIENTS`] clients send score requests
//! ([`CANDIDATES`] candidates, hard retrieval) to the router, or to the single server, for
//! `SIREN_BENCH_SCORE_SECS` seconds. Writes `docs/results/bench/cluster.md` and `.json`.
//!
//! Every process shares this machine's cores, the benchmark's clients too: the ratios say what
//! cluster mode costs per machine, not what more machines would add.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::Serialize;
use serde_json::{json, Value};
use siren_engine::Db;
use siren_lab::report::machine;
use siren_lab::table::Table;

#[path = "../tests/cluster_up/mod.rs"]
mod cluster_up;
use cluster_up::{dataset, merge_read_after, nats_available, siren, Up};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// The demo the benchmark runs on: 40 users with 1,000 to 20,000 events (about 250,000 in all),
/// 5,000 items of 64-d embeddings, one epoch of training.
const DEMO: [&str; 10] = [
    "--users",
    "40",
    "--min-events",
    "1000",
    "--max-events",
    "20000",
    "--items",
    "5000",
    "--epochs",
    "1",
];
const BATCH: usize = 500;
/// Copies of the demo's users ingested (copy `c` of user `u` is user `u + c * COPY_STRIDE`), so
/// that ingest runs long enough to time; scoring asks for the demo's own users.
const COPIES: u64 = 4;
const COPY_STRIDE: u64 = 1 << 32;
const ITEM_BATCH: usize = 1_000;
const INGEST_CLIENTS: usize = 4;
const SCORE_CLIENTS: usize = 4;
const CANDIDATES: usize = 100;
/// Distinct score requests, sent in turn.
const SCORE_BODIES: usize = 512;
/// Score requests before this are not counted (connections, caches, the model's first calls).
const SCORE_WARMUP: Duration = Duration::from_secs(2);
/// A request that keeps failing fails the benchmark after this long (retried with its key).
const RETRY_FOR: Duration = Duration::from_secs(60);

fn main() -> Res<()> {
    if !nats_available() {
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run())
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn run() -> Res<()> {
    let started = Instant::now();
    let log = |s: &str| eprintln!("[{:>6.1}s] {s}", started.elapsed().as_secs_f64());
    let nodes: Vec<usize> = std::env::var("SIREN_BENCH_NODES")
        .unwrap_or_else(|_| "1,2,3".into())
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let score_secs: f64 = env_or("SIREN_BENCH_SCORE_SECS", 10.0);
    let load_before = load_average();
    let tmp = tempfile::tempdir()?;
    let demo = tmp.path().join("demo");
    log("siren demo: data and model");
    make_demo(&demo)?;
    let work = Workload::new(&demo, &tmp.path().join("serve.toml"))?;
    log(&format!(
        "{} events of {} users, {} items",
        work.events, work.users, work.item_count
    ));
    let http = reqwest::Client::new();
    let mut rows = Vec::new();
    // The baseline first and last: how far the machine drifted during the run shows.
    for (i, setup) in std::iter::once(0).chain(nodes).chain([0]).enumerate() {
        let dir = tmp.path().join(format!("setup-{setup}"));
        let target = Setup::start(&http, setup, &dir, &demo, &work).await?;
        log(&format!("{}: ingest", target.name()));
        let mut row = measure(&http, &target, &work, score_secs).await?;
        if setup == 0 {
            row.setup = format!("baseline, {}", if i == 0 { "first" } else { "last" });
        }
        log(&row.summary());
        rows.push(row);
        target.stop();
    }
    let report = Report {
        command: "cargo bench -p siren-cli --bench cluster".into(),
        machine: machine(),
        load_average: (load_before, load_average()),
        events: work.events,
        users: work.users,
        items: work.item_count,
        score_secs,
        rows,
    };
    report.write(&out_dir())?;
    log("done");
    Ok(())
}

fn make_demo(dir: &Path) -> Res<()> {
    let out = siren()
        .args(["demo", "--no-serve"])
        .args(DEMO)
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .output()?;
    if !out.status.success() {
        return Err(format!(
            "siren demo failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(())
}

/// The repository's root (the report names its files from there).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Where the report goes: `docs/results/bench` (or `$SIREN_BENCH_OUT`).
fn out_dir() -> PathBuf {
    std::env::var_os("SIREN_BENCH_OUT")
        .map_or_else(|| root().join("docs/results/bench"), PathBuf::from)
}

/// The 1-, 5- and 15-minute load averages.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// What every setup is sent: the demo's catalog and events, and the score requests.
struct Workload {
    /// The catalog in batches (JSON arrays).
    items: Vec<String>,
    item_count: usize,
    /// Each ingest client's batches of events (JSON arrays), oldest first; a user's events all
    /// go through one client, so they arrive in order.
    batches: Vec<Vec<String>>,
    events: usize,
    users: usize,
    scores: Arc<Vec<Vec<u8>>>,
    /// The `siren serve` configuration every server of every setup starts from.
    config: PathBuf,
}

impl Workload {
    fn new(demo: &Path, config: &Path) -> Res<Workload> {
        let db = demo.join("data").join("db");
        let (events, items) = dataset(&db);
        let mut users: Vec<u64> = events.iter().filter_map(|e| e["user"].as_u64()).collect();
        users.sort_unstable();
        users.dedup();
        let ids: Vec<u64> = items.iter().filter_map(|i| i["id"].as_u64()).collect();
        write_config(&db, config)?;
        Ok(Workload {
            batches: client_batches(&events)?,
            events: events.len() * COPIES as usize,
            users: users.len() * COPIES as usize,
            scores: Arc::new(score_bodies(&users, &ids)?),
            items: items
                .chunks(ITEM_BATCH)
                .map(serde_json::to_string)
                .collect::<Result<_, _>>()?,
            item_count: items.len(),
            config: config.to_path_buf(),
        })
    }
}

/// Each client's batches: its users' events of every copy, one copy after the other.
fn client_batches(events: &[Value]) -> Res<Vec<Vec<String>>> {
    let mut out = vec![Vec::new(); INGEST_CLIENTS];
    for (client, batches) in out.iter_mut().enumerate() {
        for copy in 0..COPIES {
            let mine: Vec<Value> = events
                .iter()
                .filter(|e| {
                    e["user"].as_u64().unwrap_or(0) % INGEST_CLIENTS as u64 == client as u64
                })
                .map(|e| {
                    let mut e = e.clone();
                    e["user"] = json!(e["user"].as_u64().unwrap_or(0) + copy * COPY_STRIDE);
                    e
                })
                .collect();
            for c in mine.chunks(BATCH) {
                batches.push(serde_json::to_string(c)?);
            }
        }
    }
    Ok(out)
}

/// [`SCORE_BODIES`] requests: the users in turn, [`CANDIDATES`] catalog items drawn for each.
fn score_bodies(users: &[u64], items: &[u64]) -> Res<Vec<Vec<u8>>> {
    let mut rng = StdRng::seed_from_u64(16);
    (0..SCORE_BODIES)
        .map(|i| {
            let picked =
                rand::seq::index::sample(&mut rng, items.len(), CANDIDATES.min(items.len()));
            let candidates: Vec<u64> = picked.iter().map(|j| items[j]).collect();
            let body =
                json!({"user": users[i % users.len()], "candidates": candidates, "gsu": "hard"});
            Ok(serde_json::to_vec(&body)?)
        })
        .collect()
}

/// The servers' shared configuration: the demo database's shape (for the single server; nodes
/// take it from the cluster), no automatic compaction, so that ingest runs under the same
/// conditions everywhere and scoring runs on databases compacted on request, and admin routes
/// open on loopback for that request.
fn write_config(db: &Path, path: &Path) -> Res<()> {
    let shape = Db::created_with(db)?;
    let toml = format!(
        "allow_unauthenticated_admin = true\nembedding_dim = {}\nsemid_levels = {}\n\
         semid_codebook_size = {}\n[engine]\ncompact_pending_events = 0\n\
         compact_interval_ms = 86400000\n",
        shape.embedding_dim, shape.semid_levels, shape.semid_codebook_size
    );
    std::fs::write(path, toml)?;
    Ok(())
}

/// One `siren serve` process, stopped (SIGTERM, by process id) when dropped.
struct Serve {
    child: Child,
}

impl Drop for Serve {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the id of a child this process started and has not reaped.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let _ = self.child.wait();
    }
}

/// What a measurement runs against.
enum Setup {
    /// The baseline: one `siren serve`, writes made retry-safe with `source`.
    Single { url: String, _serve: Serve },
    /// `siren cluster up --nodes n`: writes with an Idempotency-Key; every request goes to the
    /// router.
    Cluster {
        up: Up,
        router: String,
        nodes: Vec<String>,
    },
}

impl Setup {
    /// The baseline for `nodes == 0`, else a cluster of `nodes` nodes, in `dir`.
    async fn start(
        http: &reqwest::Client,
        nodes: usize,
        dir: &Path,
        demo: &Path,
        work: &Workload,
    ) -> Res<Setup> {
        std::fs::create_dir_all(dir)?;
        if nodes == 0 {
            return start_single(http, dir, demo, &work.config).await;
        }
        let n = nodes.to_string();
        let config = work.config.to_string_lossy();
        let args = [
            "--nodes",
            &n,
            "--port",
            "0",
            "--config",
            &config,
            "--heartbeat-ms",
            "300",
            "--dead-after-ms",
            "3000",
        ];
        let up = Up::start(&dir.join("cluster"), demo, &args);
        Ok(Setup::Cluster {
            router: up.member("routers", 0).0,
            nodes: up.urls("nodes"),
            up,
        })
    }

    fn name(&self) -> String {
        match self {
            Setup::Single { .. } => "baseline".into(),
            Setup::Cluster { nodes, .. } if nodes.len() == 1 => "1 node".into(),
            Setup::Cluster { nodes, .. } => format!("{} nodes", nodes.len()),
        }
    }

    fn nodes(&self) -> usize {
        match self {
            Setup::Single { .. } => 0,
            Setup::Cluster { nodes, .. } => nodes.len(),
        }
    }

    /// Copies of every user's data: 2 replicas (`siren cluster up`'s default) where there are
    /// as many nodes.
    fn replicas(&self) -> usize {
        self.nodes().clamp(1, 2)
    }

    /// Where the clients send every request.
    fn entry(&self) -> &str {
        match self {
            Setup::Single { url, .. } => url,
            Setup::Cluster { router, .. } => router,
        }
    }

    /// The servers that hold users' data.
    fn holders(&self) -> Vec<String> {
        match self {
            Setup::Single { url, .. } => vec![url.clone()],
            Setup::Cluster { nodes, .. } => nodes.clone(),
        }
    }

    /// Write number `seq` of client `client`: its Idempotency-Key (cluster) and its body, with
    /// `source` on the single server. `what` is `events` or `items`.
    fn write(&self, what: &str, client: usize, seq: usize, rows: &str) -> Write {
        let (key, source) = match self {
            Setup::Single { .. } if what == "events" => {
                let source = json!({"name": format!("bench-{client}"), "seq": seq + 1});
                (None, format!(",\"source\":{source}"))
            }
            Setup::Single { .. } => (None, String::new()),
            Setup::Cluster { .. } => (Some(format!("{what}-{client}-{seq}")), String::new()),
        };
        Write {
            path: format!("/v1/{what}"),
            key,
            // `rows` is a JSON array, serialized once for every setup.
            body: format!("{{\"{what}\":{rows}{source}}}").into_bytes(),
        }
    }

    /// Waits until every replica has applied `needed` (a cluster's merged `read_after`).
    async fn wait_applied(
        &self,
        http: &reqwest::Client,
        needed: &BTreeMap<String, u64>,
    ) -> Res<()> {
        let Setup::Cluster { nodes, .. } = self else {
            return Ok(()); // a single server has applied what it acknowledged
        };
        let start = Instant::now();
        while !all_applied(http, nodes, needed).await {
            if start.elapsed() > RETRY_FOR {
                return Err(
                    format!("the replicas did not apply {needed:?} in {RETRY_FOR:?}").into(),
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    fn stop(self) {
        if let Setup::Cluster { mut up, .. } = self {
            up.stop();
        }
    }
}

async fn start_single(
    http: &reqwest::Client,
    dir: &Path,
    demo: &Path,
    config: &Path,
) -> Res<Setup> {
    let port = siren_cluster::local::free_port()?;
    let data = demo.join("data");
    let log = std::fs::File::create(dir.join("serve.log"))?;
    let child = siren()
        .arg("serve")
        .arg("--config")
        .arg(config)
        .arg("--db")
        .arg(dir.join("db"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--model")
        .arg(demo.join("model"))
        .arg("--codebook")
        .arg(data.join("codebook.bin"))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    let serve = Serve { child };
    let url = format!("http://127.0.0.1:{port}");
    wait_ready(http, &url).await?;
    Ok(Setup::Single { url, _serve: serve })
}

/// Waits until `url` answers `/readyz` with 200.
async fn wait_ready(http: &reqwest::Client, url: &str) -> Res<()> {
    let start = Instant::now();
    let probe = format!("{url}/readyz");
    while get(http, &probe).await.is_none() {
        if start.elapsed() > RETRY_FOR {
            return Err(format!("{url} was not ready in {RETRY_FOR:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Every node's applied positions: each stream in `needed` applied up to its position by every
/// node that holds it (and held by one at least), the catalog by every node.
async fn all_applied(
    http: &reqwest::Client,
    nodes: &[String],
    needed: &BTreeMap<String, u64>,
) -> bool {
    let mut holders: BTreeMap<&str, usize> = BTreeMap::new();
    for node in nodes {
        let Some(s) = get(http, &format!("{node}/v1/cluster")).await else {
            return false;
        };
        for (stream, &position) in needed {
            let applied = if stream == "catalog" {
                s["catalog_applied"].as_u64()
            } else {
                s["held"][stream.as_str()]["applied"].as_u64()
            };
            match applied {
                Some(a) if a < position => return false,
                Some(_) => *holders.entry(stream).or_default() += 1,
                None if stream == "catalog" => return false,
                None => {}
            }
        }
    }
    needed
        .keys()
        .all(|s| holders.get(s.as_str()).is_some_and(|&n| n > 0))
}

async fn get(http: &reqwest::Client, url: &str) -> Option<Value> {
    let r = http.get(url).send().await.ok()?;
    if r.status() != 200 {
        return None;
    }
    r.json().await.ok()
}

/// A write request, serialized before the clock starts.
struct Write {
    path: String,
    key: Option<String>,
    body: Vec<u8>,
}

/// POSTs `w` to `base` until it answers 200 (the same key and body on every try); the answer
/// and the number of retries.
async fn post(http: &reqwest::Client, base: &str, w: &Write) -> Res<(Value, usize)> {
    let start = Instant::now();
    let mut retries = 0;
    loop {
        let mut req = http
            .post(format!("{base}{}", w.path))
            .header("content-type", "application/json")
            .body(w.body.clone());
        if let Some(k) = &w.key {
            req = req.header("idempotency-key", k);
        }
        let why = match req.send().await {
            Ok(r) if r.status() == 200 => return Ok((r.json().await?, retries)),
            Ok(r) => format!("{}: {}", r.status(), r.text().await.unwrap_or_default()),
            Err(e) => e.to_string(),
        };
        if start.elapsed() > RETRY_FOR {
            return Err(format!("POST {}: {why}", w.path).into());
        }
        retries += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends `writes` one after the other; their merged `read_after` and the retries.
async fn post_all(
    http: reqwest::Client,
    base: String,
    writes: Vec<Write>,
) -> Res<(BTreeMap<String, u64>, usize)> {
    let mut read_after = BTreeMap::new();
    let mut retries = 0;
    for w in &writes {
        let (answer, r) = post(&http, &base, w).await?;
        retries += r;
        if let Some(t) = answer["read_after"].as_str() {
            merge_read_after(&mut read_after, t);
        }
    }
    Ok((read_after, retries))
}

/// One setup's figures.
#[derive(Serialize)]
struct Row {
    setup: String,
    /// 0 for the baseline.
    nodes: usize,
    ingest: Ingest,
    score: Score,
}

#[derive(Serialize)]
struct Ingest {
    events: usize,
    batches: usize,
    acknowledged_secs: f64,
    /// Until every replica had applied every event (the single server: when acknowledged).
    applied_secs: f64,
    acknowledged_per_s: f64,
    applied_per_s: f64,
    retries: usize,
}

#[derive(Serialize)]
struct Score {
    candidates: usize,
    clients: usize,
    /// Requests answered 200 within the measured window.
    requests: usize,
    failed: usize,
    secs: f64,
    per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
}

impl Row {
    fn summary(&self) -> String {
        format!(
            "{}: ingest {:.0} events/s acknowledged, {:.0} applied by every replica; score \
             {:.1} requests/s, p50 {:.1} ms, p99 {:.1} ms ({} failed)",
            self.setup,
            self.ingest.acknowledged_per_s,
            self.ingest.applied_per_s,
            self.score.per_s,
            self.score.p50_ms,
            self.score.p99_ms,
            self.score.failed
        )
    }
}

async fn measure(
    http: &reqwest::Client,
    setup: &Setup,
    work: &Workload,
    score_secs: f64,
) -> Res<Row> {
    load_catalog(http, setup, work).await?;
    let ingest = ingest(http, setup, work).await?;
    compact_and_count(http, setup, work).await?;
    let score = score(http, setup.entry(), &work.scores, score_secs).await;
    Ok(Row {
        setup: setup.name(),
        nodes: setup.nodes(),
        ingest,
        score,
    })
}

/// Compacts every database that holds users (so that every setup scores on the same kind of
/// storage) and checks that together they hold every event once per replica.
async fn compact_and_count(http: &reqwest::Client, setup: &Setup, work: &Workload) -> Res<()> {
    let mut stored = 0;
    for holder in setup.holders() {
        let w = Write {
            path: "/v1/admin/compact".into(),
            key: None,
            body: b"{}".to_vec(),
        };
        post(http, &holder, &w).await?;
        let stats = get(http, &format!("{holder}/v1/stats")).await;
        stored += stats.and_then(|s| s["events"].as_u64()).unwrap_or(0) as usize;
    }
    let want = work.events * setup.replicas();
    if stored != want {
        return Err(format!("{}: {stored} events stored, {want} expected", setup.name()).into());
    }
    Ok(())
}

/// The catalog, before any clock starts; on a cluster, until every node has applied it.
async fn load_catalog(http: &reqwest::Client, setup: &Setup, work: &Workload) -> Res<()> {
    let writes = work
        .items
        .iter()
        .enumerate()
        .map(|(i, rows)| setup.write("items", 0, i, rows))
        .collect();
    let (needed, _) = post_all(http.clone(), setup.entry().to_string(), writes).await?;
    setup.wait_applied(http, &needed).await
}

async fn ingest(http: &reqwest::Client, setup: &Setup, work: &Workload) -> Res<Ingest> {
    let mut plans = Vec::new();
    for (client, batches) in work.batches.iter().enumerate() {
        let writes = batches
            .iter()
            .enumerate()
            .map(|(seq, b)| setup.write("events", client, seq, b))
            .collect::<Vec<_>>();
        plans.push(writes);
    }
    let batches = plans.iter().map(Vec::len).sum();
    // Dirty pages of what ran before (the demo, the last setup) would otherwise be written
    // back during this setup's fsyncs.
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    let start = Instant::now();
    let tasks: Vec<_> = plans
        .into_iter()
        .map(|w| tokio::spawn(post_all(http.clone(), setup.entry().to_string(), w)))
        .collect();
    let (mut needed, mut retries) = (BTreeMap::new(), 0);
    for t in tasks {
        let (read_after, r) = t.await??;
        for (stream, position) in read_after {
            let e = needed.entry(stream).or_insert(0);
            *e = position.max(*e);
        }
        retries += r;
    }
    let acknowledged_secs = start.elapsed().as_secs_f64();
    setup.wait_applied(http, &needed).await?;
    let applied_secs = start.elapsed().as_secs_f64();
    Ok(Ingest {
        events: work.events,
        batches,
        acknowledged_secs,
        applied_secs,
        acknowledged_per_s: work.events as f64 / acknowledged_secs,
        applied_per_s: work.events as f64 / applied_secs,
        retries,
    })
}

/// [`SCORE_CLIENTS`] clients sending the score requests in turn to `url` for `secs` after
/// [`SCORE_WARMUP`].
async fn score(http: &reqwest::Client, url: &str, bodies: &Arc<Vec<Vec<u8>>>, secs: f64) -> Score {
    let start = Instant::now() + SCORE_WARMUP;
    let end = start + Duration::from_secs_f64(secs);
    let tasks: Vec<_> = (0..SCORE_CLIENTS)
        .map(|c| {
            tokio::spawn(score_client(
                http.clone(),
                format!("{url}/v1/score"),
                bodies.clone(),
                c,
                (start, end),
            ))
        })
        .collect();
    let (mut latencies, mut failed) = (Vec::new(), 0);
    for t in tasks {
        let (l, f) = t.await.unwrap_or_default();
        latencies.extend(l);
        failed += f;
    }
    latencies.sort_by(f64::total_cmp);
    let q = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN)
    };
    Score {
        candidates: CANDIDATES,
        clients: SCORE_CLIENTS,
        requests: latencies.len(),
        failed,
        secs,
        per_s: latencies.len() as f64 / secs,
        p50_ms: q(0.5) * 1e3,
        p99_ms: q(0.99) * 1e3,
    }
}

/// One client: requests `c`, `c + clients`, ... until `end`; the latencies (seconds) of those
/// answered 200 in `[start, end)`, and the failures there.
async fn score_client(
    http: reqwest::Client,
    url: String,
    bodies: Arc<Vec<Vec<u8>>>,
    c: usize,
    (start, end): (Instant, Instant),
) -> (Vec<f64>, usize) {
    let (mut latencies, mut failed) = (Vec::new(), 0);
    let mut i = c;
    while Instant::now() < end {
        let sent = Instant::now();
        let r = http
            .post(&url)
            .header("content-type", "application/json")
            .body(bodies[i % bodies.len()].clone())
            .send()
            .await;
        // The body is read whole: a request is answered when its scores have arrived.
        let ok = match r {
            Ok(r) => r.status() == 200 && r.bytes().await.is_ok(),
            Err(_) => false,
        };
        let done = Instant::now();
        if sent >= start && done < end {
            if ok {
                latencies.push((done - sent).as_secs_f64());
            } else {
                failed += 1;
            }
        }
        i += SCORE_CLIENTS;
    }
    (latencies, failed)
}

/// The whole run, for `cluster.json` and `cluster.md`.
#[derive(Serialize)]
struct Report {
    command: String,
    machine: String,
    /// Before and after the run.
    load_average: (String, String),
    events: usize,
    users: usize,
    items: usize,
    score_secs: f64,
    rows: Vec<Row>,
}

impl Report {
    fn write(&self, out: &Path) -> Res<()> {
        std::fs::create_dir_all(out)?;
        let json = out.join("cluster.json");
        std::fs::write(&json, serde_json::to_string_pretty(self)? + "\n")?;
        let md = self.markdown(json.strip_prefix(root()).unwrap_or(&json));
        println!("{md}");
        std::fs::write(out.join("cluster.md"), md)?;
        Ok(())
    }

    fn table(&self) -> Table {
        let mut t = Table::numeric([
            "setup",
            "acknowledged events/s",
            "applied by every replica, events/s",
            "applied x baseline",
            "score requests/s",
            "x baseline",
            "p50 ms",
            "p99 ms",
            "failed",
        ]);
        let base: Vec<&Row> = self.rows.iter().filter(|r| r.nodes == 0).collect();
        let mean = |f: fn(&Row) -> f64| base.iter().map(|r| f(r)).sum::<f64>() / base.len() as f64;
        let ingest_base = mean(|r| r.ingest.applied_per_s);
        let score_base = mean(|r| r.score.per_s);
        for r in &self.rows {
            t.row([
                r.setup.clone(),
                format!("{:.0}", r.ingest.acknowledged_per_s),
                format!("{:.0}", r.ingest.applied_per_s),
                format!("{:.2}", r.ingest.applied_per_s / ingest_base),
                format!("{:.1}", r.score.per_s),
                format!("{:.2}", r.score.per_s / score_base),
                format!("{:.1}", r.score.p50_ms),
                format!("{:.1}", r.score.p99_ms),
                r.score.failed.to_string(),
            ]);
        }
        t
    }

    fn markdown(&self, json: &Path) -> String {
        format!(
            "# Cluster mode through HTTP: ingest and scoring with 1, 2 and 3 nodes\n\n\
             Generated by `{}`. Machine: {}; load average {} before, {} after. Raw figures: \
             `{}`.\n\n\
             One `siren demo` in every setup: its {} items and its model, and its users' events \
             {COPIES} times over under other user ids ({} events of {} users). The \
             baseline is one `siren serve`; a cluster is `siren cluster up --nodes N` (3 \
             JetStream servers with `sync_interval: always`, N nodes, one router; 16 \
             partitions, 2 replicas). Ingest: {INGEST_CLIENTS} clients, batches of {BATCH} \
             events through `POST /v1/events` (an Idempotency-Key each on the cluster, \
             `source` on the baseline; fsynced by JetStream on a quorum, or by the single \
             server), to the router or the single server; \"applied\" stops the clock when every \
             replica has applied every event; sync(2) before each ingest. No compaction during ingest; every database is \
             compacted before scoring. Scoring: {SCORE_CLIENTS} clients, {CANDIDATES} \
             candidates per request, hard retrieval, through the router (which forwards to a \
             node serving the user), {:.0} s after {} s of warm-up. The baseline runs first \
             and last; ratios are to the mean of its two runs.\n\n{}\n\
             Every server, node, router and client shares the machine's cores: the ratios are \
             what cluster mode costs on one machine, not what more machines would add.\n",
            self.command,
            self.machine,
            self.load_average.0,
            self.load_average.1,
            json.display(),
            self.items,
            self.events,
            self.users,
            self.score_secs,
            SCORE_WARMUP.as_secs(),
            self.table()
        )
    }
}
