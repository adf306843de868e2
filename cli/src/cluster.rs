//! `siren cluster create` (a cluster's streams, buckets and configuration on a JetStream
//! deployment) and `siren cluster up` (a whole cluster on this machine, to try cluster mode).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use serde::Serialize;
use siren_cluster::jetstream::{Connect, JetStream};
use siren_cluster::local::{free_port, LocalJetStream, LocalOptions};
use siren_cluster::{ClusterConfig, DbShape};
use siren_engine::{Db, Options};
use siren_http::api::types::ClusterStatusResponse;

type CliResult<T> = Result<T, Box<dyn std::error::Error>>;

#[derive(Subcommand)]
pub enum ClusterCommand {
    /// Create a cluster (streams, key-value buckets, configuration) on a JetStream deployment;
    /// nodes then join it with `siren serve --cluster-servers ... --node-id ...`.
    Create(CreateArgs),
    /// Start a cluster on this machine to try cluster mode: JetStream servers and Siren nodes
    /// on loopback, until Ctrl-C.
    Up(UpArgs),
}

/// What a cluster is fixed with at creation.
#[derive(Args)]
pub struct ShapeArgs {
    /// The cluster's name (names its streams and buckets).
    #[arg(long, default_value = "siren")]
    name: String,
    /// Virtual partitions, fixed for the cluster's life (default: 256 for `create`, 16 for `up`).
    #[arg(long)]
    partitions: Option<u32>,
    /// Siren replicas of each partition, on different nodes.
    #[arg(long, default_value_t = 2)]
    replicas: u32,
    #[arg(long, default_value_t = 64)]
    embedding_dim: u32,
    #[arg(long, default_value_t = 3)]
    semid_levels: u8,
    #[arg(long, default_value_t = 256)]
    semid_codebook_size: u32,
    /// Events kept per user (the oldest are dropped first).
    #[arg(long)]
    max_events_per_user: Option<u32>,
    /// Take the embedding dimension and SemID shape from this existing database instead (for
    /// example one made by `siren import` or `siren demo`, whose model and codebook fit it).
    #[arg(long)]
    like_db: Option<PathBuf>,
}

impl ShapeArgs {
    fn config(&self, default_partitions: u32, log_replicas: u32) -> CliResult<ClusterConfig> {
        let mut opts = Options {
            embedding_dim: self.embedding_dim,
            semid_levels: self.semid_levels,
            semid_codebook_size: self.semid_codebook_size,
            ..Options::default()
        };
        if let Some(v) = self.max_events_per_user {
            opts.max_events_per_user = v;
        }
        if let Some(db) = &self.like_db {
            opts = Db::created_with(db)?.apply(opts);
        }
        let mut config = ClusterConfig::new(&self.name, DbShape::of(&opts));
        config.partitions = self.partitions.unwrap_or(default_partitions);
        config.replicas = self.replicas;
        config.log_replicas = log_replicas;
        config.validate()?;
        Ok(config)
    }
}

#[derive(Args)]
pub struct CreateArgs {
    /// NATS server URLs, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    servers: Vec<String>,
    /// Copies of each stream JetStream keeps (1, 3 or 5).
    #[arg(long, default_value_t = 3)]
    log_replicas: u32,
    #[command(flatten)]
    shape: ShapeArgs,
}

#[derive(Args)]
pub struct UpArgs {
    /// Where the servers' and nodes' data and logs go (reused by a later `up`).
    #[arg(long, default_value = "siren-cluster")]
    dir: PathBuf,
    /// Siren nodes.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Routers (`siren serve --role router`): hold no partition, forward every read. They
    /// listen on the ports after the nodes'.
    #[arg(long, default_value_t = 1)]
    routers: usize,
    /// JetStream servers: 3 (each stream on all three) or 1.
    #[arg(long, default_value_t = 3)]
    jetstream: usize,
    /// HTTP port of the first node; node i listens on port + i - 1 (0: free ports).
    #[arg(long, default_value_t = 7070)]
    port: u16,
    /// Model checkpoint every node scores with (from `siren train` or `siren demo`).
    #[arg(long)]
    model: Option<PathBuf>,
    /// SemID codebook for items upserted without a SemID.
    #[arg(long)]
    codebook: Option<PathBuf>,
    /// A `siren serve` configuration file every node and router starts from (engine settings,
    /// limits, tokens); the listen address, data directory and cluster flags `up` gives each
    /// member override it.
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long, default_value_t = 1000)]
    heartbeat_ms: u64,
    /// A node is dead (and its partitions re-placed) once silent this long.
    #[arg(long, default_value_t = 10_000)]
    dead_after_ms: u64,
    #[command(flatten)]
    shape: ShapeArgs,
}

pub fn run(cmd: &ClusterCommand) -> CliResult<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cmd {
        ClusterCommand::Create(a) => {
            let config = a.shape.config(256, a.log_replicas)?;
            rt.block_on(create(&a.servers, &config))?;
            println!(
                "cluster {} created: {} partitions, {} Siren replicas, {} log copies",
                config.name, config.partitions, config.replicas, config.log_replicas
            );
            Ok(ExitCode::SUCCESS)
        }
        ClusterCommand::Up(a) => up(a, &rt),
    }
}

async fn create(servers: &[String], config: &ClusterConfig) -> CliResult<()> {
    JetStream::create(&Connect::new(servers.to_vec(), "siren-cli"), config).await?;
    Ok(())
}

/// What `siren cluster up` runs, written to `<dir>/cluster.json`.
#[derive(Serialize)]
struct UpManifest {
    cluster: String,
    jetstream: Vec<Process>,
    nodes: Vec<Process>,
    routers: Vec<Process>,
}

#[derive(Serialize, Clone)]
struct Process {
    name: String,
    url: String,
    pid: u32,
    log: PathBuf,
}

/// A node process, stopped (SIGTERM, by process id) when dropped.
struct NodeProcess {
    info: Process,
    child: Child,
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            // SAFETY: kill(2) on the id of a child this process started and has not reaped.
            unsafe {
                libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
            }
        }
        let _ = self.child.wait();
    }
}

fn up(a: &UpArgs, rt: &tokio::runtime::Runtime) -> CliResult<ExitCode> {
    if a.nodes == 0 || !matches!(a.jetstream, 1 | 3) {
        return Err("--nodes must be at least 1 and --jetstream 1 or 3".into());
    }
    std::fs::create_dir_all(&a.dir)?;
    let options = LocalOptions {
        die_with_parent: true,
        sync_always: true,
    };
    let mut js = LocalJetStream::start(&a.dir.join("jetstream"), a.jetstream, options)?;
    let config = a.shape.config(16, a.jetstream.min(3) as u32)?;
    let urls = js.urls();
    rt.block_on(create(&urls, &config))?;
    let nodes = (1..=a.nodes)
        .map(|i| start_member(a, &config.name, &urls, (format!("node-{i}"), "node"), i))
        .collect::<CliResult<Vec<_>>>()?;
    let routers = (1..=a.routers)
        .map(|i| {
            let id = format!("router-{i}");
            start_member(a, &config.name, &urls, (id, "router"), a.nodes + i)
        })
        .collect::<CliResult<Vec<_>>>()?;
    // Installed before the cluster is announced: a signal right after must not kill us.
    let signal = rt.block_on(async { siren_http::server::shutdown_signal() })?;
    let manifest = UpManifest {
        cluster: config.name.clone(),
        jetstream: js
            .servers
            .iter()
            .map(|s| Process {
                name: s.name.clone(),
                url: s.url(),
                pid: s.pid().unwrap_or(0),
                log: s.dir.join("server.log"),
            })
            .collect(),
        nodes: nodes.iter().map(|n| n.info.clone()).collect(),
        routers: routers.iter().map(|n| n.info.clone()).collect(),
    };
    let manifest_path = a.dir.join("cluster.json");
    std::fs::write(&manifest_path, serde_json::to_vec_pretty(&manifest)?)?;
    rt.block_on(wait_placed(&nodes, &config, Duration::from_secs(120)))?;
    print_up(&manifest, &manifest_path, &config);
    rt.block_on(signal);
    // Whoever read our output may be gone by now.
    let _ = writeln!(
        std::io::stdout(),
        "stopping the routers and nodes, then the JetStream servers"
    );
    drop(routers);
    drop(nodes);
    js.stop()?;
    Ok(ExitCode::SUCCESS)
}

/// Starts `siren serve` as member `id` with `role`, the `i`-th (from 1) to take a port.
fn start_member(
    a: &UpArgs,
    cluster: &str,
    urls: &[String],
    (id, role): (String, &str),
    i: usize,
) -> CliResult<NodeProcess> {
    let port = match a.port {
        0 => free_port()?,
        p => u16::try_from(i - 1)
            .ok()
            .and_then(|i| p.checked_add(i))
            .ok_or("--port leaves no room for the nodes")?,
    };
    let data = a.dir.join(&id);
    std::fs::create_dir_all(&data)?;
    let log = a.dir.join(format!("{id}.log"));
    let out = File::create(&log)?;
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("serve")
        .arg("--db")
        .arg(&data)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--cluster-servers", &urls.join(",")])
        .args(["--cluster-name", cluster, "--node-id", &id, "--role", role])
        .args(["--heartbeat-ms", &a.heartbeat_ms.to_string()])
        .args(["--dead-after-ms", &a.dead_after_ms.to_string()]);
    let paths = [
        ("--config", &a.config),
        ("--model", &a.model),
        ("--codebook", &a.codebook),
    ];
    for (flag, path) in paths {
        if let Some(p) = path {
            cmd.arg(flag).arg(absolute(p)?);
        }
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()?;
    Ok(NodeProcess {
        info: Process {
            name: id,
            url: format!("http://127.0.0.1:{port}"),
            pid: child.id(),
            log,
        },
        child,
    })
}

fn absolute(p: &Path) -> CliResult<PathBuf> {
    Ok(std::path::absolute(p)?)
}

/// Waits until every partition is served by `replicas` nodes (or by every node, when fewer).
async fn wait_placed(
    nodes: &[NodeProcess],
    config: &ClusterConfig,
    timeout: Duration,
) -> CliResult<()> {
    let want = (config.replicas as usize).min(nodes.len());
    let client = reqwest::Client::new();
    let start = Instant::now();
    loop {
        let url = format!("{}/v1/cluster", nodes[0].info.url);
        if let Ok(resp) = client.get(url).send().await {
            if let Ok(s) = resp.json::<ClusterStatusResponse>().await {
                if s.serving.values().all(|owners| owners.len() >= want) {
                    return Ok(());
                }
            }
        }
        if start.elapsed() > timeout {
            return Err(format!(
                "the nodes did not take every partition within {timeout:?}; see {}",
                nodes[0].info.log.display()
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn print_up(m: &UpManifest, manifest: &Path, config: &ClusterConfig) {
    println!(
        "cluster {}: {} partitions, {} Siren replicas each, {} log copies",
        m.cluster, config.partitions, config.replicas, config.log_replicas
    );
    for p in m.jetstream.iter().chain(&m.nodes).chain(&m.routers) {
        println!(
            "  {:<8} {:<24} pid {:<8} log {}",
            p.name,
            p.url,
            p.pid,
            p.log.display()
        );
    }
    let url = &m.routers.first().unwrap_or(&m.nodes[0]).url;
    println!(
        "every node and router takes reads and writes (reads are forwarded to a node serving \
         the user):\n  \
         curl -s {url}/v1/cluster\n  \
         curl -s -XPOST {url}/v1/events -H 'content-type: application/json' \
         -H 'idempotency-key: try-1' -d '{{\"events\":[{{\"user\":7,\"ts\":1,\"item\":3}}]}}'\n  \
         curl -s {url}/v1/users/7/events"
    );
    println!("what runs where: {}", manifest.display());
    println!("ready; Ctrl-C stops the nodes and the servers");
}
